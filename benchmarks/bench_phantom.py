"""Phantom generation speed: images per second, serial vs. two worker processes.

Run: .venv/bin/python benchmarks/bench_phantom.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from medfair_audit.data import PhantomConfig, build_phantom


def main(n: int = 2000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for workers in (1, 2):
            start = time.perf_counter()
            build_phantom(Path(tmp) / f"w{workers}", PhantomConfig(n=n, seed=0, workers=workers))
            times[workers] = time.perf_counter() - start
            print(
                f"workers={workers}: {n} images in {times[workers]:.1f} s "
                f"({n / times[workers]:.0f} images/s)"
            )
        print(f"speed-up of 2 workers over 1: {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
