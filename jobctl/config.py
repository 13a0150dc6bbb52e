"""The TOML config file: where it is, which keys exist, and what their values mean.

Precedence everywhere: command-line flag > environment variable > config file > default.
Every key is optional; an unknown key or a bad value is refused with the key's name, both when
`config set` writes it and when the file is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from jobctl.errors import ConfigError, UsageError
from jobctl.model import format_duration, parse_duration, parse_size


def _duration(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise UsageError("expected a duration such as 90s, 5m or 1h30m")
    return float(v) if not isinstance(v, str) else parse_duration(v)


def _positive_duration(v: Any) -> float:
    seconds = _duration(v)
    if seconds <= 0:
        raise UsageError("expected a duration longer than 0s")
    return seconds


def _size(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise UsageError("expected a size such as 512M or 20G")
    return v if isinstance(v, int) else parse_size(v)


def _int(minimum: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UsageError(f"expected a whole number of at least {minimum}")
        return v

    return check


def _bool(v: Any) -> bool:
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise UsageError("expected true or false")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise UsageError("expected a non-empty string")
    return v


def _rate(v: Any) -> tuple[int, float]:
    """"30/m" -> (30, 60.0): at most 30 starts in any 60 seconds."""
    if not isinstance(v, str) or not re.fullmatch(r"0*[1-9]\d*/[smh]", v.strip()):
        raise UsageError("expected a rate such as 30/m (at least 1, per s, m or h)")
    count, unit = v.strip().split("/")
    return int(count), parse_duration(f"1{unit}")


class Key(NamedTuple):
    parse: Callable[[Any], Any]
    default: Any
    # How `config set` stores the text it is given: durations and sizes stay text.
    toml_type: type


KEYS: dict[str, Key] = {
    "store": Key(_str, None, str),
    "output_root": Key(_str, None, str),
    "kill_grace": Key(_duration, 10.0, str),
    "lock_timeout": Key(_duration, 10.0, str),
    "retry_max_delay": Key(_duration, 3600.0, str),
    "max_lost": Key(_int(1), 3, int),
    "max_queued": Key(_int(0), 0, int),
    "cleanup_interval": Key(_duration, None, str),
    "worker_timeout": Key(_positive_duration, 30.0, str),
    "worker_poll": Key(_positive_duration, 2.0, str),
    "defaults.concurrency": Key(_int(1), 2, int),
    "defaults.timeout": Key(_duration, None, str),
    "defaults.retries": Key(_int(0), 0, int),
    "defaults.retry_delay": Key(_duration, 10.0, str),
    "defaults.zip": Key(_bool, False, bool),
    "cleanup.older_than": Key(_duration, 7 * 86400.0, str),
    "cleanup.keep_failed": Key(_bool, False, bool),
    "cleanup.max_total": Key(_size, None, str),
    "hooks.on_finish": Key(_str, None, str),
    "hooks.on_failure": Key(_str, None, str),
    "hooks.timeout": Key(_duration, 30.0, str),
}
QUEUE_KEYS: dict[str, Key] = {
    "concurrency": Key(_int(1), None, int),
    "max_queued": Key(_int(0), 0, int),
    "rate": Key(_rate, None, str),  # kept as its text in the file
}
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def config_path() -> Path:
    env = os.environ.get("JOBCTL_CONFIG")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("jobctl")) / "config.toml"


def lookup_key(dotted: str) -> Key:
    if dotted in KEYS:
        return KEYS[dotted]
    parts = dotted.split(".")
    if len(parts) == 3 and parts[0] == "queues" and _QUEUE_NAME.fullmatch(parts[1]):
        if parts[2] in QUEUE_KEYS:
            return QUEUE_KEYS[parts[2]]
    raise ConfigError(f"unknown config key {dotted!r}")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


class Config:
    """The parsed config file. Reading it validates every key, so a bad file fails early."""

    def __init__(self, raw: dict[str, Any], path: Path) -> None:
        self.path = path
        self.raw = raw
        self.values: dict[str, Any] = {}
        for name, value in _flatten(raw).items():
            try:
                key = lookup_key(name)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            try:
                self.values[name] = key.parse(value)
            except UsageError as e:
                raise ConfigError(f"{path}: {name}: {e}") from None

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls({}, path)
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 (byte {e.start})") from None
        import tomllib  # only when there is a file: its import alone costs ~2 ms

        try:
            return cls(tomllib.loads(text), path)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None

    def get(self, dotted: str) -> Any:
        key = lookup_key(dotted)
        return self.values.get(dotted, key.default)

    def display(self, dotted: str) -> str:
        """The value of `dotted` as `config get` prints it: as the file spells it, or the
        default in the form one would write it (`10s`, not `10.0`); empty when unset."""
        key = lookup_key(dotted)
        value: Any = self.raw
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            value = key.default
            if isinstance(value, float) and key.toml_type is str:  # a duration default, e.g. 10.0
                value = format_duration(value)
        if value is None:
            return ""
        return str(value).lower() if isinstance(value, bool) else str(value)

    def queue_limits(self) -> dict[str, int]:
        """`[queues.NAME] concurrency = N` for every queue that sets it."""
        return self._per_queue("concurrency")

    def _per_queue(self, name: str) -> dict[str, Any]:
        suffix = f".{name}"
        return {k.split(".")[1]: v for k, v in self.values.items() if k.startswith("queues.") and k.endswith(suffix)}

    def max_queued(self, queues: Iterable[str]) -> dict[str, int]:
        """The `max_queued` of each queue: its own `[queues.NAME] max_queued` if set, else the
        global one, which is the default of every queue (0: no limit)."""
        own = self._per_queue("max_queued")
        return {q: own.get(q, self.get("max_queued")) for q in queues}

    def rates(self) -> dict[str, tuple[int, float]]:
        """`[queues.NAME] rate` of every queue that sets one, as (starts, window seconds)."""
        return self._per_queue("rate")

    def with_value(self, dotted: str, text: str) -> dict[str, Any]:
        """The raw TOML table with `dotted` set from command-line text; validates first."""
        key = lookup_key(dotted)
        try:
            parsed = key.parse(text)
        except UsageError as e:
            raise ConfigError(f"{dotted}: {e}") from None
        value: Any = text if key.toml_type is str else parsed
        raw = _deep_copy(self.raw)
        table = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            table = table.setdefault(p, {})
        table[leaf] = value
        return raw


def _deep_copy(table: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in table.items()}
