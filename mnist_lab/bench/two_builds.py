"""Two smoke builds on one machine at once, against one alone: does the CPU slot make them share?

    python -m mnist_lab.bench.two_builds               # about 5 minutes on 2 cores
    python -m mnist_lab.bench.two_builds --no-slot     # the same pair with no slot: the usual way

Each build is `mnist-lab run --profile smoke` into an empty artifacts folder of its own, so it
trains every run. Alone, one build; then two started together. Without the slot (one CPU
training at a time, `mnist_lab.machine`) two torch processes spinning on the same cores ran
10-150 times slower each; with it they take turns, and the pair should finish within about
twice the time of one (the part that does not train, kernels starting and figures drawn,
overlaps). Prints the times and the ratio; the results go to docs/performance.md by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..machine import HELD


def _start(folder: Path, slot: bool) -> subprocess.Popen:
    env = {**os.environ, "MNIST_LAB_ARTIFACTS": str(folder)}
    env.pop(HELD, None)
    if not slot:
        env[HELD] = "none"  # each build takes itself for the slot's holder: no turns taken
    return subprocess.Popen([sys.executable, "-m", "mnist_lab", "run", "--profile", "smoke", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _builds(count: int, root: Path, slot: bool = True) -> float:
    """Seconds until `count` builds started together have all finished."""
    start = time.perf_counter()
    processes = [_start(root / f"build{count}-{slot}-{index}", slot) for index in range(count)]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode:
            raise SystemExit(f"a build failed: {stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    slot = "--no-slot" not in sys.argv[1:]
    with tempfile.TemporaryDirectory() as folder:
        alone = _builds(1, Path(folder))
        print(f"one smoke build alone: {alone:.0f} s", flush=True)
        pair = _builds(2, Path(folder), slot)
        print(f"two started together{'' if slot else ' without the slot'}: {pair:.0f} s, "
              f"{pair / alone:.2f}x one alone (target: 2.2x at most)")


if __name__ == "__main__":
    main()
