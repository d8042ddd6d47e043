"""Instructions each start-up command executes (valgrind's cachegrind): suite_startup's ratios,
checked where wall time cannot be trusted.

The wall-clock medians of suite_startup need a quiet machine; on a busy one (other jobs on the
same two cores) a round's peers are slowed unequally. The count of instructions a process
executes barely moves with load (``PYTHONHASHSEED`` is fixed, bytecode is cached first), and on
a quiet machine its ratios track the wall ratios: before the start-up work of this branch,
``cas path NAME`` executed 1.675x the floor script's instructions and took 1.68x its time.
It leaves out time spent waiting (the catalog's fsyncs at close), which the wall rows include.

    cd benchmarks && python startup_instructions.py [--scratch DIR]

Needs valgrind; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from suite_cli import cas_command, clean_env
from suite_startup import CLICK, FLOOR, FLOOR_SCRIPT, NAME, PASS, PATH, _stores


def instructions(command: list[str], env: dict[str, str]) -> int:
    """The instructions ``command`` executed, as cachegrind counts them ("I refs")."""
    result = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if match is None:
        raise AssertionError(f"no instruction count in: {result.stderr[-2000:]}")
    return int(match[1].replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path,
                        help="a folder for the stores (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="cas-startup-"))
    scratch.mkdir(parents=True, exist_ok=True)
    warm, _, digest = _stores(scratch, 1)
    floor = scratch / "floor.py"
    floor.write_text(FLOOR_SCRIPT, encoding="utf-8")
    python = sys.executable
    cas_cli = cas_command(python)
    env = {key: value for key, value in clean_env().items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"
    commands = {
        PASS: [python, "-c", "pass"],
        CLICK: [python, "-c", "import click"],
        FLOOR: [python, str(floor), "--root", str(warm), NAME],
        "`cas --version`": [*cas_cli, "--version"],
        "`cas --help`": [*cas_cli, "--help"],
        PATH: [*cas_cli, "--root", str(warm), "path", NAME],
    }
    for command in commands.values():  # writes the bytecode; cas path finds the blob
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        if command[-1] == NAME and not output.stdout.strip().endswith(digest):
            raise AssertionError(f"{command} printed {output.stdout!r}")
    counts = {label: instructions(command, env) for label, command in commands.items()}
    peers = {"`cas --version`": CLICK, "`cas --help`": CLICK, PATH: FLOOR}
    print("| command | instructions | peer | peer instructions | ratio |")
    print("| --- | ---: | --- | ---: | ---: |")
    for label, count in counts.items():
        peer = peers.get(label, PASS)
        print(f"| {label} | {count / 1e6:.1f} M | {peer} | {counts[peer] / 1e6:.1f} M"
              f" | {count / counts[peer]:.3f}x |")
    if args.scratch is None:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
