"""Start-up of the ``camloc`` command against ``python -c "import torch"`` on the same machine.

Prints the best of ``--repeats`` wall times (each a fresh process, run round-robin) of:
``camloc --help``, ``camloc run --help``, ``camloc --version``, ``import camloc``,
``python -c "import torch"``, and ``camloc run`` on one bundled photo (the command to the
first result; default ``--runtime auto`` and ``--runtime torch``), with the ratios to
importing torch. One untimed ``camloc run`` first fills camloc's cache (``$CAMLOC_CACHE``,
else ``~/.cache/camloc``: the head found, the runtime chosen, the exported graph), as any
earlier run on the machine would have.

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMLOC = str(Path(sys.executable).with_name("camloc"))


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = tempfile.mkdtemp()
    commands = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "camloc --help": [CAMLOC, "--help"],
        "camloc run --help": [CAMLOC, "run", "--help"],
        "camloc --version": [CAMLOC, "--version"],
        "python -c 'import camloc'": [sys.executable, "-c", "import camloc"],
        "camloc run one photo": [CAMLOC, "run", "examples/images/coffee.jpg", "--out", out],
        "  same, --runtime torch": [CAMLOC, "run", "examples/images/coffee.jpg", "--out", out, "--runtime", "torch"],
    }
    for name in ("camloc run one photo", "  same, --runtime torch"):
        wall(commands[name])  # fills the cache (a first run on a machine probes the runtimes)
    best = {name: float("inf") for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            best[name] = min(best[name], wall(command))
    torch_time = best["python -c 'import torch'"]
    print(f"{'command':28s} {'seconds':>8s} {'x import torch':>15s}")
    for name, seconds in best.items():
        print(f"{name:28s} {seconds:8.2f} {seconds / torch_time:15.2f}")


if __name__ == "__main__":
    main()
