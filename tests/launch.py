"""Run the `medfair` CLI in fresh processes: one, or several under torchrun (a process group)."""

from __future__ import annotations

import os
import subprocess
import sys


def medfair_processes(*args: object, processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m medfair_cli.main ARGS`` in 1 process, or N under ``torchrun --standalone``."""
    launch = [sys.executable]
    if processes > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
    result = subprocess.run(
        [*launch, "-m", "medfair_cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
