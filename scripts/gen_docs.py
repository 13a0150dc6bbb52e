"""Generate the committed docs artifacts from the CLI itself: man/jobctl.1 and completions/.

    python scripts/gen_docs.py            write the files
    python scripts/gen_docs.py --check    write nothing; exit 1 naming the files that are stale

Commands, usage lines, help texts and options come from `typer.main.get_command(app)`, the same
objects `--help` prints, so the man page cannot drift from the CLI without `--check` (and
tests/test_docs.py) noticing. Only what the CLI cannot describe about itself (exit status,
environment, files, examples) is written here; every example is checked against the command
tree, so an example naming a removed command or option fails generation.

The completion scripts are typer's own (click's shell-completion protocol): they hold no list of
commands, they call back into `jobctl` with `_JOBCTL_COMPLETE=complete_<shell>`, so completion
always matches the installed CLI. The output is deterministic: no dates, only `jobctl.__version__`.
"""

from __future__ import annotations

import inspect
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import typer.main
from typer import _click
from typer.core import TyperGroup

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jobctl import __version__  # noqa: E402
from jobctl.cli import app  # noqa: E402

PROG = "jobctl"
COMPLETE_VAR = f"_{PROG}_COMPLETE".replace("-", "_").upper()

MAN_PAGE = "man/jobctl.1"
BASH = "completions/jobctl.bash"
ZSH = "completions/_jobctl"
FISH = "completions/jobctl.fish"


def cli() -> _click.Command:
    return typer.main.get_command(app)


def context(cmd: _click.Command, name: str, parent: _click.Context | None = None) -> _click.Context:
    """A context like the one `make_context` builds, without parsing arguments."""
    return _click.Context(cmd, info_name=name, parent=parent, **dict(cmd.context_settings))


def walk(cmd: _click.Command, ctx: _click.Context) -> Iterator[tuple[_click.Command, _click.Context]]:
    """Every visible command below `cmd` (not `cmd` itself), depth first, groups before their children.

    Top-level commands are sorted by name (their registration order is an accident of imports);
    a group's subcommands keep the order the group declares (`config show|get|set|path`).
    """
    if not isinstance(cmd, TyperGroup):
        return
    names = cmd.list_commands(ctx)
    if ctx.parent is None:
        names = sorted(names)
    for name in names:
        sub = cmd.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = context(sub, name, ctx)
        yield sub, sub_ctx
        yield from walk(sub, sub_ctx)


def help_text(cmd: _click.Command) -> str:
    """The text `--help` shows: the docstring, cleaned, cut at a form feed."""
    return inspect.cleandoc(cmd.help or "").partition("\f")[0].strip()


# --- roff -------------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Escape plain text for roff: backslashes, hyphens (as \\-, so options copy-paste), quotes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\(rs")
        elif ch == "-":
            out.append("\\-")
        elif ch == "'":
            out.append("\\(aq")
        elif ch == "`":
            out.append("\\(ga")
        elif ch == '"':
            out.append("\\(dq")
        elif ord(ch) > 126:
            out.append(f"\\[u{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


def inline(text: str) -> str:
    """Escape help text; `code` spans (commands, keys, file names) become bold."""
    parts = re.split(r"`([^`]+)`", text)
    return "".join(f"\\fB{esc(p)}\\fR" if i % 2 else esc(p) for i, p in enumerate(parts))


def line(text: str) -> str:
    """One roff text line: never starting with a control character or a space."""
    text = text.strip()
    return f"\\&{text}" if text.startswith((".", "'")) else text


def paragraphs(text: str) -> list[str]:
    """Help text as roff lines: one filled paragraph per blank-line-separated block."""
    lines: list[str] = []
    for n, block in enumerate(re.split(r"\n\s*\n", text)):
        if n:
            lines.append(".PP")
        if block.startswith("\b"):  # click's "do not rewrap" marker
            lines += [".nf", *(line(inline(x)) for x in block[1:].strip("\n").splitlines()), ".fi"]
        else:
            lines.append(line(inline(" ".join(block.split()))))
    return lines


OPTION_NAME = re.compile(r"(?<![\w<\[|])(--?[A-Za-z0-9][\w-]*)")


def term(record: str) -> str:
    """An option's or argument's help-record name: option names bold, metavars italic."""
    out = []
    for n, part in enumerate(OPTION_NAME.split(record)):
        if n % 2:
            out.append(f"\\fB{esc(part)}\\fR")
            continue
        m = re.fullmatch(r"(, | / |; | )?(.*)", part, re.S)
        assert m is not None
        sep, rest = m.groups()
        out.append(esc(sep or ""))
        if rest:
            out.append(f"\\fI{esc(rest)}\\fR")
    return line("".join(out))


def param_items(cmd: _click.Command, ctx: _click.Context, with_help_option: bool) -> list[str]:
    help_option = cmd.get_help_option(ctx)
    lines: list[str] = []
    for param in cmd.get_params(ctx):
        if param is help_option and not with_help_option:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        name, help_ = record
        lines += [".TP", term(name), line(inline(" ".join(help_.split()))) if help_.strip() else "\\&"]
    return lines


EXIT_STATUS = [
    ("0", "Success."),
    ("1", "The operation failed: unknown job, job already finished, store locked too long, store damaged."),
    ("2", "Usage error: a bad option, value or combination of them."),
]
JOB_EXIT_STATUS = [
    ("N", "The job's own exit code (0 if every job completed; else the first non-zero one)."),
    ("124", "The job timed out."),
    ("125", "The job was cancelled, its worker was lost, or it failed for another reason."),
    ("127", "The job's command was not found."),
    ("128+N", "The job was killed by signal N."),
]
ENVIRONMENT = [
    ("JOBCTL_STORE", "The store to use when `--store` is not given."),
    ("JOBCTL_CONFIG", "The config file to use instead of `~/.config/jobctl/config.toml`."),
    ("JOBCTL_DEBUG", "When set and not empty, errors show their Python traceback (like `--debug`)."),
    ("NO_COLOR", "When set, output has no colours (like `status --no-color`)."),
]
JOB_ENVIRONMENT = [
    ("JOBCTL_JOB_ID", "The job's id."),
    ("JOBCTL_ATTEMPT", "The attempt number, 1 for the first run, growing with each retry."),
    ("JOBCTL_OUTPUT_DIR", "The job's output directory, `<store>/jobs/<id>/out/`: what `package` zips."),
    ("JOBCTL_STORE", "The store the job belongs to."),
]
STORE_FILES = [
    ("store.json", "Marks the directory as a jobctl store and records its format version."),
    ("lock", "Locked by every process that changes the store; never replaced or deleted."),
    ("state.json", "The next id and every unfinished job (and a few recently finished ones)."),
    ("done/", "Finished jobs, append-only, in shards of 10000 ids."),
    ("env/", "The environments captured at submit (they may hold secrets)."),
    ("history.jsonl", "The audit trail: submits, attempts, cancels, what cleanup removed."),
    ("wake/", "FIFOs through which idle workers are woken when a job is submitted."),
    ("jobs/<id>/stdout.log, jobs/<id>/stderr.log", "The job's output (of its latest attempt)."),
    ("jobs/<id>/out/", "The job's output directory (`$JOBCTL_OUTPUT_DIR`)."),
    ("jobs/<id>/output.zip", "`out/` packaged with a `manifest.json`, by `submit --zip` or `package`."),
]
EXAMPLES = [
    ("Queue a command; its id is printed alone on stdout:", "jobctl submit -- python train.py --epochs 10"),
    ("Queue with a name, a priority and a time limit:",
     "jobctl submit --name nightly --priority high --timeout 2h -- ./backup.sh"),
    ("Queue one job per line of a file:", "jobctl submit --from commands.txt"),
    ("Run the queue with four slots until Ctrl-C:", "jobctl worker --concurrency 4"),
    ("See what failed, as JSON:", "jobctl status --state failed --json"),
    ("Follow a job's output, then wait for it in a script:", "jobctl logs -f 42"),
    (None, "jobctl wait 42 && echo done"),
    ("Stop everything in one queue:", "jobctl cancel --all --queue gpu"),
    ("Zip a job's results with its logs:", "jobctl package 42 --logs -o results.zip"),
    ("Keep finished jobs for three days, and clean up from cron:", "jobctl config set cleanup.older_than 3d"),
    (None, "17 3 * * * jobctl cleanup --quiet"),
]


def check_example(root: _click.Command, example: str) -> None:
    """Fail generation when an example names a command or an option the CLI does not have."""
    words = shlex.split(example.split("&&")[0])
    words = words[words.index(PROG) + 1:]
    cmd, ctx = root, context(root, PROG)
    while isinstance(cmd, TyperGroup) and words and not words[0].startswith("-"):
        sub = cmd.get_command(ctx, words[0])
        if sub is None:
            raise SystemExit(f"gen_docs: example {example!r}: no command {words[0]!r}")
        cmd, ctx, words = sub, context(sub, words[0], ctx), words[1:]
    known = {o for p in cmd.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and word.split("=")[0] not in known:
            raise SystemExit(f"gen_docs: example {example!r}: {cmd.name} has no option {word}")


def man_page(root: _click.Command) -> str:
    ctx = context(root, PROG)
    summary = help_text(root).split("\n\n")[0].rstrip(".")
    out = [
        f'.\\" Generated by scripts/gen_docs.py from the {PROG} CLI; do not edit.',
        f'.TH JOBCTL 1 "" "{PROG} {esc(__version__)}" "User Commands"',
        ".ad l",  # left-aligned, unhyphenated: options and paths stay whole for copy and search
        ".nh",
        ".SH NAME",
        f"{PROG} \\- {esc(summary[:1].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        f".B {PROG}",
        esc(" ".join(root.collect_usage_pieces(ctx))),
        ".br",
        f".B {PROG}",
        "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        *paragraphs(help_text(root)),
        ".PP",
        line(inline(f"The store is chosen by `--store`, else `$JOBCTL_STORE`, else the config key `store`, "
                    f"else `~/.local/share/{PROG}`. Commands that print data take `--json`. Bad input gets "
                    f"one line on stderr, `{PROG}: error: MESSAGE`, and changes nothing.")),
        ".SH OPTIONS",
        *param_items(root, ctx, with_help_option=True),
        ".PP",
        "Every command also takes \\fB\\-h\\fR, \\fB\\-\\-help\\fR.",
        ".SH COMMANDS",
    ]
    for cmd, cmd_ctx in walk(root, ctx):
        text = help_text(cmd)
        if not text:
            raise SystemExit(f"gen_docs: {cmd_ctx.command_path} has no help text")
        out += [
            f'.SS "{esc(cmd_ctx.command_path)}"',
            f"\\fB{esc(cmd_ctx.command_path)}\\fR {esc(' '.join(cmd.collect_usage_pieces(cmd_ctx)))}",
            ".PP",
            *paragraphs(text),
        ]
        items = param_items(cmd, cmd_ctx, with_help_option=False)
        out += items
    out += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        out += [".TP", f"\\fB{esc(code)}\\fR", line(inline(text))]
    out += [".PP", line(inline("`wait` and `submit --wait` exit with the job's outcome instead:"))]
    for code, text in JOB_EXIT_STATUS:
        out += [".TP", f"\\fB{esc(code)}\\fR", line(inline(text))]
    out += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        out += [".TP", f"\\fB{esc(name)}\\fR", line(inline(text))]
    out += [".PP", line(inline("A job runs in its own process group, with the environment captured at submit "
                               "(plus `--env`), stdin from `/dev/null`, and:"))]
    for name, text in JOB_ENVIRONMENT:
        out += [".TP", f"\\fB{esc(name)}\\fR", line(inline(text))]
    out += [
        ".SH FILES",
        ".TP",
        f"\\fI~/.local/share/{PROG}/\\fR",
        line(inline(f"The default store (`$XDG_DATA_HOME/{PROG}` when that is set), created mode 0700 "
                    "with its files 0600. Inside it:")),
        ".RS",
    ]
    for name, text in STORE_FILES:
        out += [".TP", f"\\fI{esc(name)}\\fR", line(inline(text))]
    out += [
        ".RE",
        ".TP",
        f"\\fI~/.config/{PROG}/config.toml\\fR",
        line(inline(f"The config file (`$XDG_CONFIG_HOME/{PROG}/config.toml` when that is set, "
                    "`$JOBCTL_CONFIG` when that is): TOML, every key optional; see `jobctl config`.")),
        ".SH EXAMPLES",
    ]
    for text, example in EXAMPLES:
        check_example(root, example)
        if text is not None:
            out += [".PP", line(inline(text))]
        out += [".RS 4", ".nf", line(f"\\fB{esc(example)}\\fR"), ".fi", ".RE"]
    out += [".SH SEE ALSO", "\\fBcrontab\\fR(5), \\fBsystemd.service\\fR(5)"]
    return "\n".join(out) + "\n"


# --- completions ------------------------------------------------------------------------------


def completion_source(root: _click.Command, shell: str) -> str:
    """typer's completion script for `shell`, exactly what `_JOBCTL_COMPLETE=source_<shell> jobctl` prints."""
    from typer._completion_classes import completion_init

    completion_init()
    comp_cls = _click.shell_completion.get_completion_class(shell)
    assert comp_cls is not None, shell
    comp = comp_cls(root, {}, PROG, COMPLETE_VAR)
    # ShellComplete.source() without BashComplete's bash-version probe (a subprocess per call).
    return (comp.source_template % comp.source_vars()).strip("\n")


def header(shell: str, install: str) -> str:
    return (
        f"# {shell} completion for {PROG}. Generated by scripts/gen_docs.py; do not edit.\n"
        f"# It asks {PROG} itself ({COMPLETE_VAR}=complete_{shell}), so it always matches the installed CLI;\n"
        f"# {PROG} must be on PATH. Install: {install}\n"
    )


def completions(root: _click.Command) -> dict[str, str]:
    # typer's template writes IFS=$'<a real newline>'; the same value, spelled legibly.
    bash = completion_source(root, "bash").replace("$'\n'", "$'\\n'")
    fish = completion_source(root, "fish")
    zsh = completion_source(root, "zsh").splitlines()
    func = f"_{PROG}_completion"
    if zsh[0] != f"#compdef {PROG}" or zsh[-1] != f"compdef {func} {PROG}":
        raise SystemExit("gen_docs: typer's zsh completion template changed; review completions()")
    # `#compdef` must be the file's first line for compinit to find `_jobctl` on $fpath. Loaded
    # from $fpath, the file is the body of `_jobctl` and must complete at once; sourced, it
    # registers the function (the form click's own zsh template uses).
    zsh_body = "\n".join(zsh[1:-1]).strip("\n")
    zsh_script = (
        f"#compdef {PROG}\n"
        + header("zsh", f"put this file, named _{PROG}, in a directory on $fpath before compinit runs.")
        + f"\n{zsh_body}\n\n"
        + "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
        + f'  {func} "$@"\n'
        + "else\n"
        + f"  compdef {func} {PROG}\n"
        + "fi\n"
    )
    return {
        BASH: header("bash", f"source it from ~/.bashrc, or copy it to "
                             f"~/.local/share/bash-completion/completions/{PROG}.") + f"\n{bash}\n",
        ZSH: zsh_script,
        FISH: header("fish", f"copy it to ~/.config/fish/completions/{PROG}.fish.") + f"\n{fish}\n",
    }


# --- main -------------------------------------------------------------------------------------


def generate() -> dict[str, str]:
    """Every generated file: path relative to the repository root -> its content."""
    root = cli()
    return {MAN_PAGE: man_page(root), **completions(root)}


def stale(files: dict[str, str], base: Path = ROOT) -> list[str]:
    def current(path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    return [name for name, content in files.items() if current(base / name) != content]


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print("usage: python scripts/gen_docs.py [--check]", file=sys.stderr)
        return 2
    files = generate()
    changed = stale(files)
    if argv == ["--check"]:
        for name in changed:
            print(f"stale: {name} (run python scripts/gen_docs.py)", file=sys.stderr)
        return 1 if changed else 0
    for name in changed:
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name], encoding="utf-8")
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
