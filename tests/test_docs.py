"""The generated docs match the CLI: man page and completions are current, every command is documented
(help text, man page, README), completion really works in the shells, and the man page renders cleanly."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import JOBCTL

ROOT = Path(__file__).resolve().parent.parent
MAN_PAGE = ROOT / "man" / "jobctl.1"
BIN_DIR = str(Path(JOBCTL).parent)


def _load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()
ROOT_COMMAND = gen_docs.cli()
ROOT_CTX = gen_docs.context(ROOT_COMMAND, "jobctl")
COMMANDS = {ctx.command_path: (cmd, ctx) for cmd, ctx in gen_docs.walk(ROOT_COMMAND, ROOT_CTX)}
TOP_LEVEL = sorted(ROOT_COMMAND.list_commands(ROOT_CTX))
GENERATED = ["man/jobctl.1", "completions/jobctl.bash", "completions/_jobctl", "completions/jobctl.fish"]


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return gen_docs.generate()  # type: ignore[no-any-return]


def _shell_env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN_DIR + os.pathsep + os.environ.get("PATH", "")}


# --- drift ------------------------------------------------------------------------------------


def test_generator_writes_exactly_these_files(generated: dict[str, str]) -> None:
    assert sorted(generated) == sorted(GENERATED)


@pytest.mark.parametrize("name", GENERATED)
def test_committed_file_is_what_the_cli_generates(generated: dict[str, str], name: str) -> None:
    path = ROOT / name
    assert path.exists(), f"{name} is missing: run python scripts/gen_docs.py"
    assert path.read_text(encoding="utf-8") == generated[name], f"{name} is stale: run python scripts/gen_docs.py"


def test_check_mode_names_stale_and_missing_files(generated: dict[str, str], tmp_path: Path) -> None:
    for name, content in generated.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content, encoding="utf-8")
    assert gen_docs.stale(generated, base=tmp_path) == []
    (tmp_path / "man/jobctl.1").write_text(generated["man/jobctl.1"].replace("SIGKILL", "SIGTERM"), encoding="utf-8")
    (tmp_path / "completions/_jobctl").unlink()
    assert gen_docs.stale(generated, base=tmp_path) == ["man/jobctl.1", "completions/_jobctl"]


def test_check_mode_passes_on_the_committed_tree() -> None:
    proc = subprocess.run([sys.executable, "scripts/gen_docs.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


# --- every command documented -----------------------------------------------------------------


def test_the_cli_has_the_commands_the_docs_cover() -> None:
    assert {"submit", "status", "cancel", "wait", "logs", "worker", "cleanup", "package", "config"} <= set(TOP_LEVEL)
    assert [p for p in COMMANDS if p.startswith("jobctl config ")] == [
        "jobctl config show", "jobctl config get", "jobctl config set", "jobctl config path",
    ]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_command_and_its_parameters_have_help(path: str) -> None:
    cmd, ctx = COMMANDS[path]
    assert gen_docs.help_text(cmd), f"{path} has no help text"
    undocumented = [p.name for p in cmd.get_params(ctx) if not (getattr(p, "help", None) or "").strip()]
    assert undocumented == [], f"{path}: parameters without help: {undocumented}"


def _man_sections(source: str) -> dict[str, str]:
    """The man source of each `.SS "jobctl …"` command section, keyed by command path."""
    found = {}
    for m in re.finditer(r'^\.SS "([^"]+)"\n(.*?)(?=^\.S[SH] )', source, re.S | re.M):
        found[m.group(1)] = m.group(2)
    return found


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_command_is_in_the_man_page_with_every_option(path: str) -> None:
    sections = _man_sections(MAN_PAGE.read_text(encoding="utf-8"))
    assert path in sections, f"man/jobctl.1 has no section for {path}"
    cmd, ctx = COMMANDS[path]
    section = sections[path]
    help_option = cmd.get_help_option(ctx)
    for param in cmd.get_params(ctx):
        if param is help_option:
            continue
        for name in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" else ():
            assert f"\\fB{gen_docs.esc(name)}\\fR" in section, f"{path}: {name} missing from the man page"
        assert gen_docs.inline(" ".join((param.help or "").split())) in section, f"{path}: help of {param.name} missing"


def test_man_page_sections_and_escaping() -> None:
    source = MAN_PAGE.read_text(encoding="utf-8")
    assert re.findall(r"^\.SH (.+)$", source, re.M) == [
        "NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES",
        "EXAMPLES", "SEE ALSO",
    ]
    text_lines = [ln for ln in source.splitlines() if not ln.startswith('.\\"')]
    assert [ln for ln in text_lines if re.search(r"(?<!\\)-", ln)] == [], "unescaped hyphens"
    assert [ln for ln in text_lines if "'" in ln or ln.startswith((" ", "'"))] == []
    for code in ("124", "125", "127", "128+N"):
        assert f"\n\\fB{code}\\fR\n" in source
    for var in ("JOBCTL_STORE", "JOBCTL_CONFIG", "JOBCTL_DEBUG", "NO_COLOR", "JOBCTL_JOB_ID", "JOBCTL_ATTEMPT",
                "JOBCTL_OUTPUT_DIR"):
        assert f"\n\\fB{var}\\fR\n" in source


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_readme_mentions_command(name: str) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"jobctl {name}" in readme, f"README.md never shows `jobctl {name}`"


# --- completion in real shells ----------------------------------------------------------------

BASH_COMPLETE = r"""
source completions/jobctl.bash || exit 3
spec=$(complete -p jobctl) || exit 4
fn=${spec##* -F }; fn=${fn%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE=$LINE; COMP_POINT=${#COMP_LINE}
"$fn" jobctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""

CASES = [
    ("jobctl su", ["submit"]),
    ("jobctl status --st", ["--state"]),
    ("jobctl config s", ["show", "set"]),
]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize(("line", "expected"), CASES)
def test_bash_completion(line: str, expected: list[str]) -> None:
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", BASH_COMPLETE, "bash", *line.split()],
        cwd=ROOT, env={**_shell_env(), "LINE": line}, capture_output=True, text=True, timeout=30,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == expected


def test_zsh_completion_is_autoloadable() -> None:
    assert (ROOT / "completions/_jobctl").read_text(encoding="utf-8").splitlines()[0] == "#compdef jobctl"


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize(("line", "expected"), CASES)
def test_zsh_completion(line: str, expected: list[str]) -> None:
    # compsys needs a terminal; stub the two compsys functions the script uses and see what it offers.
    script = (
        'compdef() { :; }; _arguments() { print -r -- "$@"; }; source completions/_jobctl || exit 3; '
        'words=("$@"); CURRENT=$#; _jobctl_completion'
    )
    proc = subprocess.run(["zsh", "-f", "-c", script, "zsh", *line.split()], cwd=ROOT, env=_shell_env(),
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    spec = proc.stdout.strip()
    assert spec.startswith("*: :((") and spec.endswith("))"), spec
    offered = [a or b for a, b in re.findall(r'"([^"]*)":"[^"]*"|"([^"]*)"', spec[len("*: :(("):-2])]
    assert offered == expected


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
@pytest.mark.parametrize(("line", "expected"), CASES)
def test_fish_completion(line: str, expected: list[str]) -> None:
    script = f'source completions/jobctl.fish; or exit 3; complete -C"{line}"'
    proc = subprocess.run(["fish", "--no-config", "-c", script], cwd=ROOT, env=_shell_env(),
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sorted(ln.split("\t")[0] for ln in proc.stdout.splitlines()) == sorted(expected)


# --- the man page renders ---------------------------------------------------------------------


def _render_command(tool: str) -> list[str]:
    if tool == "man":
        return ["man", "--warnings", "-l", str(MAN_PAGE)]
    return ["groff", "-man", "-Tutf8", "-ww", str(MAN_PAGE)]


@pytest.mark.parametrize("tool", ["man", "groff"])
def test_man_page_renders_without_warnings(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install man-db groff-base)")
    proc = subprocess.run(_render_command(tool), env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
                          capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    text = re.sub(r".\x08", "", proc.stdout)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert f"\n{heading}\n" in text
    assert "jobctl - queue shell commands durably" in text
    cmd, ctx = COMMANDS["jobctl config set"]
    assert f"jobctl config set {' '.join(cmd.collect_usage_pieces(ctx))}\n" in text


def test_the_wheel_installs_the_man_page_and_completions(tmp_path: Path) -> None:
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("jobctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(n.split("/data/")[0] for n in names if "/data/" in n) + "/data/"
    assert {data + p for p in ("share/man/man1/jobctl.1", "share/bash-completion/completions/jobctl.bash",
                               "share/zsh/site-functions/_jobctl", "share/fish/vendor_completions.d/jobctl.fish")} <= names
    assert zipfile.ZipFile(wheel).read(data + "share/man/man1/jobctl.1") == (ROOT / "man" / "jobctl.1").read_bytes()


def test_the_lazy_command_table_names_every_command_and_its_module() -> None:
    """jobctl.cli.app.COMMANDS drives lazy loading and the order of --help: every command a
    module of jobctl/cli registers must be in it, under that very module."""
    import importlib
    import pkgutil

    import jobctl.cli
    from jobctl.cli.app import COMMANDS, app

    for info in pkgutil.iter_modules(jobctl.cli.__path__):
        importlib.import_module(f"jobctl.cli.{info.name}")
    found = {(c.name or c.callback.__name__): c.callback.__module__ for c in app.registered_commands}  # type: ignore[union-attr]
    found.update({g.name: g.typer_instance.registered_commands[0].callback.__module__  # type: ignore[misc,union-attr]
                  for g in app.registered_groups})
    assert sorted(found) == sorted(COMMANDS)
    assert found == {name: f"jobctl.cli.{module}" for name, module in COMMANDS.items()}
