"""Does a reading on four held-out prompts hold over other wordings of the same request?

The transfer benchmark's bar reads each model on the demo's four held-out prompts
(``demo.HELD_OUT_PROMPTS``). Those are four of the many ways a user could word "an axial brain
MRI with a glioma", and a model's share moves from wording to wording. Here each given model is
also audited on :data:`AUDIT_WORDINGS` (16 wordings from ``demo.prompt_wordings``, none a
tuning, selection or held-out prompt; 32 images each; the evaluator, with the demo's readers
reading the same images), under ``DEMO/transfer/wordings-audit/<name>``. Per model: the
evaluator's pooled share on the held-out prompts and on the 16 wordings, the share over the
wordings (``dispersion.over_prompts``: prompts taken as a sample of wordings, a Student-t
interval) of each set, the sd of the wordings' true shares, and the guide's and the radiomics
reader's pooled shares of the 16. Writes ``benchmarks/wordings.json`` and the table between the
``wordings-table`` markers of ``benchmarks/RESULTS.md``.

The held-out audits are ``bench_transfer.py``'s (``transfer/audit-biased`` for the biased model,
``transfer/<variant>-s<seed>/audit`` for a remediated one, through its ``_audit``); one written
before the audit gave the share over the wordings has its statistics recomputed from its stored
images (no image is drawn again).

Run: .venv/bin/python benchmarks/bench_wordings.py
        --run reports/demo=biased,single-s0,wordings-s0
        --run reports/demo-seed1=biased,single-s1,wordings-s1
     .venv/bin/python benchmarks/bench_wordings.py --render   (the table again from the record)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _markers import paste
from bench_transfer import N_PER_PROMPT, _audit, _config, _male_shares

from medfair_audit.audit.result import AuditResult, format_estimate
from medfair_audit.demo import (
    HELD_OUT_PROMPTS,
    WORDING_SELECTION_PROMPTS,
    WORDING_TRAIN_PROMPTS,
    DemoConfig,
    prompt_wordings,
)

HERE = Path(__file__).resolve().parent
#: The wordings each model is audited on, and images per wording.
AUDIT_WORDINGS = prompt_wordings(
    16, seed=2, exclude=WORDING_TRAIN_PROMPTS + WORDING_SELECTION_PROMPTS
)
N_PER_WORDING = 32


def model_of(demo: Path, name: str) -> tuple[Path, Path]:
    """A model name's checkpoint and its held-out audit (``biased`` or ``<variant>-s<seed>``)."""
    if name == "biased":
        return demo / "models" / "t2medi", demo / "transfer" / "audit-biased"
    return demo / "transfer" / name / "model", demo / "transfer" / name / "audit"


def audit_wordings(demo: Path, cfg: DemoConfig, checkpoint: Path, out: Path) -> AuditResult:
    """The model on :data:`AUDIT_WORDINGS` by the evaluator and the demo's readers (reused)."""
    return _audit(
        demo, checkpoint, out, cfg, quality=False, prompts=AUDIT_WORDINGS,
        n_per_prompt=N_PER_WORDING,
    )  # fmt: skip


def _estimate(e) -> dict:
    return e.to_json() if e is not None else None


def row_of(seed: int, name: str, held: AuditResult, words: AuditResult) -> dict:
    """One model's numbers (estimates as ``audit.json`` stores them)."""

    def over(a: AuditResult) -> dict:
        s = a.dispersion.over_prompts
        return {
            "share": _estimate(s.share("male")),
            "prompts_sd": s.between_prompt_sd.get("male"),
            "prompts": s.prompts,
        }

    shares = _male_shares(words)
    return {
        "models": seed,
        "model": name,
        "held_out": {"pooled": _estimate(held.share("male")), "over": over(held)},
        "wordings": {
            "pooled": _estimate(shares["evaluator"]),
            "over": over(words),
            "guide": _estimate(shares.get("classifier")),
            "reader": _estimate(shares.get("reader")),
        },
    }


def _cell(est: dict | None) -> str:
    return "–" if est is None else format_estimate(est, ".3f")


def _sd(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} pp"


def render(doc: dict) -> str:
    """The record as the RESULTS table."""
    lines = [
        f"Target 58% male. The evaluator's PACC male share with 95% interval: pooled over the "
        f"images of the {len(HELD_OUT_PROMPTS)} held-out prompts ({N_PER_PROMPT} images each) "
        f"and of "
        f"{doc['n_wordings']} other wordings ({doc['n_per_wording']} images each); *over the "
        "wordings*: the same prompts taken as a sample of wordings (Student-t interval); sd: "
        "the estimated sd of the wordings' true male shares. Guide and reader: their pooled "
        "shares of the wordings' images.",
        "",
        "| models | model | held-out: pooled | held-out: over the wordings | sd | "
        f"{doc['n_wordings']} wordings: pooled | {doc['n_wordings']} wordings: over the "
        "wordings | sd | guide | reader |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        h, w = r["held_out"], r["wordings"]
        lines.append(
            f"| seed {r['models']} | {r['model']} | {_cell(h['pooled'])} | "
            f"{_cell(h['over']['share'])} | {_sd(h['over']['prompts_sd'])} | "
            f"{_cell(w['pooled'])} | {_cell(w['over']['share'])} | "
            f"{_sd(w['over']['prompts_sd'])} | {_cell(w['guide'])} | {_cell(w['reader'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="DEMO=MODEL[,MODEL]",
        help="a demo folder and its models: biased, or <variant>-s<seed> of bench_transfer",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="only the table, from wordings.json")
    args = ap.parse_args()
    record = HERE / "wordings.json"
    if not args.render:
        torch.set_num_threads(args.threads)
        doc: dict = {
            "wordings": list(AUDIT_WORDINGS),
            "n_wordings": len(AUDIT_WORDINGS),
            "n_per_wording": N_PER_WORDING,
            "rows": [],
        }
        for spec in args.run:
            folder, _, names = spec.partition("=")
            demo = Path(folder)
            cfg = _config(demo)
            for name in names.split(","):
                checkpoint, held_out = model_of(demo, name)
                held = _audit(demo, checkpoint, held_out, cfg)
                words = audit_wordings(
                    demo, cfg, checkpoint, demo / "transfer" / "wordings-audit" / name
                )
                doc["rows"].append(row_of(cfg.seed, name, held, words))
                print(f"models of seed {cfg.seed}, {name}: audited", flush=True)
        record.write_text(json.dumps(doc, indent=1) + "\n")
    paste(HERE / "RESULTS.md", "wordings-table", render(json.loads(record.read_text())))


if __name__ == "__main__":
    main()
