"""How long `nasplat --help` and `nasplat search --help` take: wall time of a fresh process, median of N runs.

    python bench/cli_startup.py [--runs 5]

Runs the ``nasplat`` script installed beside this Python (else ``python -m pipelines.cli``) and prints each
command's median, minimum and maximum in seconds. The goal is under 1.5 s on an idle 2-core machine; the
figure depends on the disk cache and the machine's load, so the first (cold) run is reported apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["search", "--help"])


def program() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "nasplat"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "pipelines.cli"]


def wall_time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default: 5)")
    runs = parser.parse_args().runs
    base = program()
    print(f"program: {' '.join(base)}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for command in COMMANDS:
        cold = wall_time([*base, *command])
        times = [wall_time([*base, *command]) for _ in range(runs)]
        print(f"nasplat {' '.join(command):<14} median {statistics.median(times):.2f} s over {runs} runs "
              f"(min {min(times):.2f}, max {max(times):.2f}; first run {cold:.2f})")


if __name__ == "__main__":
    main()
