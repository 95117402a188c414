"""Time and memory of one remediation step as K (gradient sampling steps) grows (remediation issue).

For each K in 1, 2, 4 of ``--gradient last-k`` and for ``--gradient adjusted`` through all
T = 10 steps, with and without gradient checkpointing, a fresh process
loads the demo's models, runs one warm-up step, then times ``STEPS`` steps of the default
configuration (8 images per prompt, 1 prompt per step, T = 10 DDIM steps, LoRA rank 8, λ = 1).
Memory is the process's peak resident set, its growth over the loaded-models baseline (what a
step costs, allocator effects included), and the bytes autograd keeps for backward during one
batch (deduplicated storages seen by a saved-tensors hook: the quantity checkpointing bounds).

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
from medfair_audit.demo import TRAIN_PROMPTS
from medfair_audit.models.t2medi import _cosine
from medfair_audit.remediation import RemediationConfig
from medfair_audit.remediation.step import batch_losses, sample_pair, train_step
from medfair_audit.remediation.wiring import load_models
from medfair_audit.target import Target
from medfair_audit.device import Placement
torch.set_num_threads(2)
demo, grad, k, ckpt = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
steps = int(sys.argv[5])
cfg = RemediationConfig(gradient=grad, grad_steps=k, gradient_checkpointing=ckpt)
acc = Accelerator()
target = Target.load(demo / "target.json")
m = load_models(demo / "models" / "t2medi", demo / "models" / "classifier", target,
                list(TRAIN_PROMPTS), [(demo / "models" / "clip", 1.0)], cfg,
                Placement(device=acc.device, dtype="float32"), False)
params = list(m.trainable.values())
opt = torch.optim.AdamW(params, lr=cfg.lr)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, cfg.steps, cfg.warmup))
# What autograd keeps for backward (deduplicated storages), independent of the allocator.
kept = {}
def pack(t):
    kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return t
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    batch_losses(m, cfg, *sample_pair(m, cfg, 0, 123))
saved = sum(kept.values())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # models loaded
train_step(m, cfg, 0, opt, sched, acc, None)  # warm-up: allocator and optimiser state
start = time.perf_counter()
for s in range(1, steps + 1):
    train_step(m, cfg, s, opt, sched, acc, None)
seconds = (time.perf_counter() - start) / steps
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"gradient": grad, "k": k, "checkpointing": ckpt, "s_per_step": seconds,
                  "saved_for_backward_mib": saved / 2**20,
                  "baseline_mib": base / 1024, "peak_mib": peak / 1024}))
"""


def main(demo: Path, steps: int) -> None:
    rows = []
    runs = [("last-k", k, c) for c in (True, False) for k in (1, 2, 4)]
    runs += [("adjusted", 10, True), ("adjusted", 10, False)]
    for grad, k, ckpt in runs:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(demo),
                grad,
                str(k),
                "1" if ckpt else "0",
                str(steps),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{grad} K={k} checkpointing={ckpt}: {r['s_per_step']:.2f} s/step, peak RSS "
            f"{r['peak_mib']:.0f} MiB, of which the step {r['peak_mib'] - r['baseline_mib']:.0f} "
            f"MiB (models loaded: {r['baseline_mib']:.0f} MiB); autograd keeps "
            f"{r['saved_for_backward_mib']:.1f} MiB for backward",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/demo"),
        int(sys.argv[2]) if len(sys.argv) > 2 else 5,
    )
