"""Time and memory of one remediation step as K (gradient sampling steps) grows (remediation issue).

For each K in 1, 2, 4 of ``--gradient last-k`` and for ``--gradient adjusted`` through all
T = 10 steps, with and without gradient checkpointing, a fresh process
loads the demo's models, runs one warm-up step, then times ``STEPS`` steps of the default
configuration (8 images per prompt, 1 prompt per step, T = 10 DDIM steps, LoRA rank 8, λ = 1).
Memory is the process's peak resident set, its growth over the loaded-models baseline (what a
step costs, allocator effects included), and the bytes autograd keeps for backward during one
batch (deduplicated storages seen by a saved-tensors hook: the quantity checkpointing bounds).

With ``--decode``: one step at K = 2 for 4, 8 and 16 images per prompt, the VAE decode of the
tuned images checkpointed image by image or not (``remediation-decode.json`` and a RESULTS.md
table; ``--render-decode`` rewrites the table from the JSON).

Run: .venv/bin/python benchmarks/bench_remediation.py [DEMO_DIR] [STEPS] [--decode]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time, torch
from accelerate import Accelerator
from pathlib import Path
from medfair_audit.demo import TRAIN_PROMPTS
from medfair_audit.training import warmup_cosine
from medfair_audit.remediation import RemediationConfig
from medfair_audit.remediation.step import batch_losses, sample_pair, train_step
from medfair_audit.remediation.wiring import load_models
from medfair_audit.target import Target
from medfair_audit.config import Placement
torch.set_num_threads(2)
demo, grad, k, ckpt = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
steps = int(sys.argv[5])
batch = int(sys.argv[6]) if len(sys.argv) > 6 else 8
decode = sys.argv[7] == "1" if len(sys.argv) > 7 else None
cfg = RemediationConfig(gradient=grad, grad_steps=k, gradient_checkpointing=ckpt,
                        batch_per_prompt=batch, decode_checkpointing=decode)
acc = Accelerator()
target = Target.load(demo / "target.json")
m = load_models(demo / "models" / "t2medi", demo / "models" / "classifier", target,
                list(TRAIN_PROMPTS), [(demo / "models" / "clip", 1.0)], cfg,
                Placement(device=acc.device, dtype="float32"), False)
params = list(m.trainable.values())
opt = torch.optim.AdamW(params, lr=cfg.lr)
sched = warmup_cosine(opt, total=cfg.steps, warmup=cfg.warmup)
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
                  "batch_per_prompt": batch, "decode_checkpointing": m.decode_checkpointing,
                  "saved_for_backward_mib": saved / 2**20,
                  "baseline_mib": base / 1024, "peak_mib": peak / 1024}))
"""


def _child(demo: Path, grad: str, k: int, ckpt: bool, steps: int, *extra: str) -> dict:
    args = [str(demo), grad, str(k), "1" if ckpt else "0", str(steps), *extra]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(demo: Path, steps: int) -> None:
    rows = []
    runs = [("last-k", k, c) for c in (True, False) for k in (1, 2, 4)]
    runs += [("adjusted", 10, True), ("adjusted", 10, False)]
    for grad, k, ckpt in runs:
        rows.append(_child(demo, grad, k, ckpt, steps))
        r = rows[-1]
        print(
            f"{grad} K={k} checkpointing={ckpt}: {r['s_per_step']:.2f} s/step, peak RSS "
            f"{r['peak_mib']:.0f} MiB, of which the step {r['peak_mib'] - r['baseline_mib']:.0f} "
            f"MiB (models loaded: {r['baseline_mib']:.0f} MiB); autograd keeps "
            f"{r['saved_for_backward_mib']:.1f} MiB for backward",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


#: Images per prompt for the decode rows (the default is 8).
DECODE_BATCHES = (4, 8, 16)


def decode_rows(demo: Path, steps: int) -> dict:
    """Memory of one step at K = 2 as the batch grows, the VAE decode checkpointed or not.

    Writes ``benchmarks/remediation-decode.json`` after every row and the table between the
    ``remediation-decode`` markers of ``benchmarks/RESULTS.md``.
    """
    path = HERE / "remediation-decode.json"
    doc = {"demo": str(demo), "steps": steps, "k": 2, "rows": []}
    for batch in DECODE_BATCHES:
        for decode in (False, True):
            r = _child(demo, "last-k", 2, True, steps, str(batch), "1" if decode else "0")
            doc["rows"].append(r)
            print(
                f"batch {batch}, decode checkpointing {decode}: autograd keeps "
                f"{r['saved_for_backward_mib']:.1f} MiB, step adds "
                f"{r['peak_mib'] - r['baseline_mib']:.0f} MiB RSS, {r['s_per_step']:.2f} s/step",
                flush=True,
            )
            path.write_text(json.dumps(doc, indent=2) + "\n")
    render_decode(doc)
    return doc


def render_decode(doc: dict) -> None:
    lines = [
        f"One step of the demo's remediation (K = {doc['k']}, UNet steps checkpointed, float32, "
        "CPU), the VAE decode of the tuned images checkpointed image by image "
        "(`--decode-checkpointing`) or not. *Kept for backward*: the bytes autograd saves during "
        "one batch (the quantity checkpointing bounds); *step RSS*: the growth of the process's "
        "peak resident memory over the loaded models.",
        "",
        "| images per prompt | decode checkpointed | kept for backward (MiB) | step RSS (MiB) |",
        "|---:|---|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['batch_per_prompt']} | {'yes' if r['decode_checkpointing'] else 'no'} | "
            f"{r['saved_for_backward_mib']:.1f} | {r['peak_mib'] - r['baseline_mib']:.0f} |"
        )
    text = "\n".join(lines)
    results = HERE / "RESULTS.md"
    start, end = "<!-- remediation-decode:start -->", "<!-- remediation-decode:end -->"
    body = results.read_text()
    if start not in body:
        body += f"\n## Remediation memory: the VAE decode\n\n{start}\n{end}\n"
    pattern = re.escape(start) + ".*?" + re.escape(end)
    results.write_text(re.sub(pattern, lambda _: f"{start}\n{text}\n{end}", body, flags=re.S))
    print(text)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    demo_dir = Path(args[0]) if args else Path("reports/demo")
    n_steps = int(args[1]) if len(args) > 1 else 5
    if "--render-decode" in sys.argv:
        render_decode(json.loads((HERE / "remediation-decode.json").read_text()))
    elif "--decode" in sys.argv:
        decode_rows(demo_dir, n_steps)
    else:
        main(demo_dir, n_steps)
