"""One root exception for everything a user can cause, and the exit codes of the SPEC.

The CLI translates a `JobctlError` into `jobctl: error: <message>` on stderr and
`exit_code`, in exactly one place (`jobctl.cli.app.JobctlGroup`).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    TIMED_OUT = 124
    OTHER_FAILURE = 125
    NOT_FOUND = 127


class JobctlError(Exception):
    exit_code: ExitCode = ExitCode.FAILED


class UsageError(JobctlError):
    """Bad input the user typed: a value, a combination of options."""

    exit_code = ExitCode.USAGE


class NotFound(JobctlError):
    pass


class InvalidTransition(JobctlError):
    pass


class Conflict(JobctlError):
    """A guarded update found the job in another state or attempt than expected."""


class StoreLocked(JobctlError):
    pass


class QueueFull(JobctlError):
    """A submit would take a queue past its `max_queued`; nothing was added."""


class StoreDamaged(JobctlError):
    pass


class StoreError(JobctlError):
    """The store cannot be used: not a jobctl store, wrong owner, a write failed."""


class ConfigError(JobctlError):
    exit_code = ExitCode.USAGE
