"""Startup cost: `jobctl submit -- true` as a whole process vs `python -c "import typer"`.

SPEC "Performance": `jobctl submit` whole process at most 1.3x `python -c "import typer"`,
measured side by side in one run on the same interpreter. Runs are interleaved (the order
rotates every round) so drift on a noisy machine hits every command alike.

Run by hand with the venv's python (never as a timed test):

    .venv/bin/python bench/bench_startup.py [--quick] [--rounds N]

Uses a fresh temporary store (JOBCTL_STORE/JOBCTL_CONFIG in a temp dir), removed at the end.
Starts no worker. Exit status 0 if the target is met, 1 if not.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import JOBCTL, PYTHON, Sandbox, arguments, load, median, ms, p90, preamble, table, verdict  # noqa: E402

TARGET = 1.3
WARMUP = 3


def main() -> int:
    ap = arguments(__doc__.splitlines()[0], "10 rounds instead of 30")
    ap.add_argument("--rounds", type=int, help="rounds of interleaved runs (default 30, 10 with --quick)")
    args = ap.parse_args()
    rounds = args.rounds or (10 if args.quick else 30)

    with Sandbox("jobctl-bench-startup-", inherit_python_env=args.inherit_python_env) as box:
        env = box.env(box.dir / "store")
        commands = {
            "jobctl submit -- true": [str(JOBCTL), "submit", "--", "true"],
            'python -c "import typer"': [str(PYTHON), "-c", "import typer"],
            "jobctl --version": [str(JOBCTL), "--version"],
            'python -c "pass"': [str(PYTHON), "-c", "pass"],
            'python -c "import jobctl.cli"': [str(PYTHON), "-c", "import jobctl.cli"],
        }
        names = list(commands)
        preamble(box)
        print(f"store:   {box.dir / 'store'} (temporary; JOBCTL_CONFIG={box.config}, absent)")
        print(
            f"runs:    {WARMUP} warm-up + {rounds} interleaved rounds of each command "
            "(order rotates every round); wall time from spawn to exit"
        )
        for _ in range(WARMUP):  # .pyc files, page cache, the store's first creation
            for name in names:
                box.run(commands[name], env)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                times[name].append(box.run(commands[name], env))

    print(f"after:   {load()}")
    ref = median(times['python -c "import typer"'])
    rows = []
    for name in names:
        xs = times[name]
        rows.append([name, ms(median(xs)), ms(p90(xs)), ms(min(xs)), f"{median(xs) / ref:.2f}x"])
    print()
    print(table(["command", "median", "p90", "min", "vs import typer (medians)"], rows))
    ratio = median(times["jobctl submit -- true"]) / ref
    ok = ratio <= TARGET
    print()
    print(f"jobctl submit / import typer (ratio of medians): {ratio:.2f}  target <= {TARGET}  {verdict(ok)}")
    print("For information only: `jobctl --version` starts the CLI but opens no store (the floor of any")
    print("jobctl command); `python -c pass` is the interpreter's own floor; `import jobctl.cli` imports")
    print("the CLI modules (typer included) without running a command.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
