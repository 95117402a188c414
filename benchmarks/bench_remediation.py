"""Time and memory of one remediation step as K (gradient sampling steps) grows (remediation issue).

For each K in 1, 2, 4 (and K = 4 without gradient checkpointing, for contrast) a fresh process
loads the demo's models, runs one warm-up step, then times ``STEPS`` steps of the default
configuration (8 images per prompt, T = 10 DDIM steps, LoRA rank 8, λ = 1). Memory is the growth
of the process's peak resident set over the loaded-models baseline, which is what a step costs.

Run: .venv/bin/python benchmarks/bench_remediation.py [DEMO_DIR] [STEPS]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from accelerate import Accelerator
from pathlib import Path
from medfair_audit.demo import DEMO_PROMPTS
from medfair_audit.remediation.tuning import (
    RemediationConfig, _load_models, _lr_schedule, _train_step)
from medfair_audit.target import Target
torch.set_num_threads(2)
demo, k, ckpt, steps = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
cfg = RemediationConfig(grad_steps=k, gradient_checkpointing=ckpt)
acc = Accelerator()
target = Target.load(demo / "target.json")
m, _ = _load_models(demo / "models" / "t2medi", demo / "models" / "classifier", target,
                    list(DEMO_PROMPTS), None, cfg, acc.device, False)
opt = torch.optim.AdamW(m.trainable, lr=cfg.lr)
sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_schedule(cfg))
_train_step(m, cfg, 0, opt, sched, acc, None)  # warm-up: allocator and optimiser state
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
for s in range(1, steps + 1):
    _train_step(m, cfg, s, opt, sched, acc, None)
seconds = (time.perf_counter() - start) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"k": k, "checkpointing": ckpt, "s_per_step": seconds,
                  "baseline_mib": base / 1024, "peak_mib": peak / 1024}))
"""


def main(demo: Path, steps: int) -> None:
    rows = []
    for k, ckpt in ((1, True), (2, True), (4, True), (4, False)):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(demo), str(k), "1" if ckpt else "0", str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"K={k} checkpointing={ckpt}: {r['s_per_step']:.2f} s/step, peak RSS "
            f"{r['peak_mib']:.0f} MiB (models loaded {r['baseline_mib']:.0f} MiB)",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/demo"),
        int(sys.argv[2]) if len(sys.argv) > 2 else 5,
    )
