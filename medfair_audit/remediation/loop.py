"""Subgroup distribution aligned tuning of a T2MedI pipeline (Han et al. 2024; Shen et al. 2023).

Each optimiser step (:mod:`.step`) samples a batch per prompt with the tuned model, classifies it
with the frozen, calibrated subgroup classifier, and minimises the alignment loss (:mod:`.losses`:
KL of the batch mean to the target, or cross-entropy to expected-OT assignments) plus λ times the
semantics-preservation term against the frozen original's images from the same noise. Gradients
reach LoRA adapters (UNet, text encoder or both) or the whole UNet through the last K sampling
steps or, with ``gradient="adjusted"``, through every step with Shen et al.'s per-step detach and
rescaling (:mod:`.sampling`). An EMA (diffusers' ``EMAModel``) can follow the weights; quick audits
(:mod:`.evaluate`) judge what will be saved. Checkpoints (:mod:`.state`) make an interrupted run
resume to the same weights; :mod:`.output` writes the pipeline folder.

The noise of step ``s`` comes from its own seed (``SeedSequence([seed, s, slot])``), never from a
running generator, so resuming needs no sampler state and held-out audit seeds never collide with
training noise.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes, check_out, locks_out
from ..config import Placement, RemediationConfig, RemediationJob
from ..progress import ProgressCallback, report
from .evaluate import quick_audit
from .output import write_output
from .state import restore_state, save_state
from .step import train_step
from .wiring import Models, load_models

__all__ = ["RemediationResult", "remediate"]


@dataclass
class RemediationResult:
    """Outcome of :func:`remediate`.

    Attributes:
        path: The remediated pipeline folder.
        data: The ``remediation.json`` content (config, curves, quick audits).
        seconds: Wall time of the run (this invocation).
    """

    path: Path
    data: dict[str, Any]
    seconds: float

    @property
    def first_audit(self) -> dict[str, Any]:
        """The quick audit before the first step (share per group and KL to the target)."""
        return self.data["audits"][0]

    @property
    def kept_step(self) -> int:
        """The step whose weights were saved (the last one with ``keep="last"``)."""
        return int(self.data.get("kept_step", self.data["steps_done"]))

    @property
    def final_audit(self) -> dict[str, Any]:
        """The quick audit of the saved weights."""
        audits = self.data["audits"]
        return next((a for a in audits if a["step"] == self.kept_step), audits[-1])

    def summary(self) -> list[str]:
        """Lines for a terminal: the first and last quick audits, steps, time and where."""
        lines = []
        for label, a in (("before", self.first_audit), ("after", self.final_audit)):
            shares = ", ".join(f"{g} {v:.1%}" for g, v in a["share"].items())
            if "share_corrected" in a:
                corrected = ", ".join(f"{g} {v:.1%}" for g, v in a["share_corrected"].items())
                shares += f" raw; {corrected} corrected"
            kl = f"KL {a['kl']:.4f}"
            if a.get("ci"):  # older records have none
                ci = ", ".join(f"{g} [{lo:.1%}, {hi:.1%}]" for g, (lo, hi) in a["ci"].items())
                kl = f"95% interval {ci}; {kl}"
            if "ensemble" in a:
                kl += f" (the mean of {1 + len(a['ensemble'])} guides' KLs)"
            lines.append(f"quick audit {label} (step {a['step']}): {shares}; {kl}")
        run_on, skipped = self.data["placement"], self.data["skipped_steps"]
        note = f", {skipped} skipped (non-finite gradients)" if skipped else ""
        keep = self.data["config"].get("keep")
        if keep == "best" or (keep == "first-within" and not self.final_audit.get("within")):
            lines.append(
                f"kept the weights of step {self.kept_step} "
                f"(the lowest quick-audit KL; --keep {keep}"
                + (": no quick audit's interval held the target)" if keep != "best" else ")")
            )
        elif keep == "first-within":
            lines.append(
                f"kept the weights of step {self.kept_step} (the first quick audit whose interval "
                "holds the target; --keep first-within)"
            )
        lines.append(
            f"{self.data['steps_done']} steps{note} in {self.seconds:.0f} s on "
            f"{run_on['device']} ({run_on['dtype']}); wrote {self.path}"
        )
        return lines


@contextlib.contextmanager
def _saved_weights(m: Models, ema: Any | None) -> Iterator[None]:
    """Within the block the tuned modules hold the weights that would be saved (the EMA's)."""
    if ema is None:
        yield
        return
    params = list(m.trainable.values())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _audit(m: Models, cfg: RemediationConfig, step: int, ema: Any, acc: Any) -> dict | None:
    """A quick audit on the main process (``None`` elsewhere)."""
    if not acc.is_main_process:
        return None
    m.unet.eval()
    with _saved_weights(m, ema), m.placement.autocast():
        out = {"step": step, **quick_audit(m, cfg)}
    m.unet.train()
    return out


_BEST = "best.safetensors"


def _best(audits: list, keep: str = "best") -> dict:
    """The audit whose weights ``keep`` saves: the lowest KL, the first of equals.

    With ``keep="first-within"`` the first audit whose interval holds the target comes first.
    """
    if keep == "first-within":
        within = [a for a in audits if a.get("within")]
        if within:
            return within[0]
    return min(audits, key=lambda a: (a["kl"], a["step"]))


def _note_best(m: Models, audit: dict | None, audits: list, ema: Any, work: Path) -> None:
    """Unless ``keep="last"``: keep the audited weights in ``work`` if they are now the best."""
    if audit is None or m.cfg.keep == "last" or _best(audits, m.cfg.keep) is not audit:
        return
    from safetensors.torch import save

    with _saved_weights(m, ema):
        state = {k: p.detach().to("cpu", copy=True).contiguous() for k, p in m.trainable.items()}
    atomic_write_bytes(work / _BEST, save(state, metadata={"step": str(audit["step"])}))


def _restore_best(m: Models, audits: list, step: int, work: Path) -> int:
    """The step whose weights get saved; unless ``keep="last"`` its weights are put in place."""
    if m.cfg.keep == "last" or not audits:
        return step
    best = _best(audits, m.cfg.keep)
    if best["step"] == step:
        return step
    from safetensors.torch import load_file

    state = load_file(str(work / _BEST))
    with torch.no_grad():
        for key, p in m.trainable.items():
            p.copy_(state[key].to(p.device, p.dtype))
    return int(best["step"])


def _decide_stop(audit: dict | None, cfg: RemediationConfig, acc: Any) -> bool:
    """Whether to stop (``until_kl`` or ``keep="first-within"``).

    Decided on the main process and broadcast, so processes stop together.
    """
    from accelerate.utils import broadcast_object_list

    flag = [
        bool(
            audit
            and (
                (cfg.until_kl is not None and audit["kl"] <= cfg.until_kl)
                or (cfg.keep == "first-within" and audit.get("within"))
            )
        )
    ]
    if acc.num_processes > 1:
        broadcast_object_list(flag, from_process=0)
    return flag[0]


def _append(path: Path, records: list[dict[str, Any]], *, replace: bool = False) -> None:
    with path.open("w" if replace else "a") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def _spec_json(spec: Path | dict[str, Path]) -> str | dict[str, str]:
    return str(spec) if isinstance(spec, Path) else {a: str(p) for a, p in spec.items()}


def _record(m: Models, cfg: RemediationConfig, log: list, audits: list, **extra: Any) -> dict:
    curves = ("loss", "align", "clip", "kept", "grad_norm", "lr", "ema_decay", "skipped")
    return {
        "schema_version": 2,
        "placement": m.placement.describe(),
        "skipped_steps": sum(bool(r.get("skipped")) for r in log),
        "classifier_sha256": m.classifier_sha256,
        **(
            {"ensemble": [str(p) for p in m.ensemble_paths], "ensemble_sha256": m.ensemble_sha256}
            if m.ensemble
            else {}
        ),
        "image_encoders": [{"path": e.source, "kind": e.kind, "weight": w} for e, w in m.encoders],
        "groups": list(m.classifier.groups),
        "attributes": list(m.classifier.attributes),
        "config": asdict(cfg),
        "trainable_parameters": int(sum(p.numel() for p in m.trainable.values())),
        "curves": {key: [r.get(key) for r in log] for key in curves},
        "mean_probs": [r["mean_probs"] for r in log],
        "audits": audits,
        **extra,
    }


@locks_out
def remediate(
    job: RemediationJob, *, progress: ProgressCallback | None = None
) -> RemediationResult:
    """Fine-tune ``job.checkpoint`` so its subgroup distribution matches ``job.target``.

    Args:
        job: What to tune, against which classifier(s) and target, with which settings, and
            where to write (:class:`~medfair_audit.config.RemediationJob`).
        progress: Called once per step with the loss terms.
    """
    from .._dist import accelerator as make_accelerator
    from ..training import RunFolder, warmup_cosine
    from ..training import ema as make_ema

    cfg, started = job.config, time.perf_counter()
    checkpoint, out, resume = job.checkpoint, job.out, job.resume
    check_out(out, overwrite=job.overwrite)
    placement = job.placement or Placement()
    acc = make_accelerator(placement.device)
    torch.manual_seed(cfg.seed)
    m = load_models(
        checkpoint, job.classifier, job.target, job.prompts, job.image_encoders, cfg, placement,
        job.trust_pickle, job.ensemble, job.audit_prompts,
    )  # fmt: skip
    params = list(m.trainable.values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = warmup_cosine(optimizer, total=cfg.steps, warmup=max(1, cfg.warmup), floor=0.1)
    ema = None
    if cfg.ema_decay > 0:
        ema = make_ema(params, decay=cfg.ema_decay, warmup=cfg.ema_warmup, power=2 / 3)
    # float16 needs loss scaling against underflow; bfloat16 has float32's range
    scaler = placement.grad_scaler()
    key = cfg.resume_key(acc.num_processes, placement.describe()["dtype"])
    if m.ensemble:  # resuming with other guides would continue another run
        key["ensemble_sha256"] = m.ensemble_sha256
    run = RunFolder(
        out,
        overwrite=job.overwrite,
        resume=resume,
        keep=job.keep_checkpoints,
        main=acc.is_main_process,
    )
    work, ckpts = run.work, run.checkpointer()
    acc.wait_for_everyone()
    start, log, audits, stopped = 0, [], [], False
    if resume:
        start, log, audits, stopped = restore_state(
            ckpts, m, optimizer, lr_sched, ema, key, scaler=scaler
        )
    if acc.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        _append(work / "log.jsonl", log, replace=True)
    if start == 0 and not audits:
        a = _audit(m, cfg, 0, ema, acc)
        if a:
            audits.append(a)
            _note_best(m, a, audits, ema, work)
        if cfg.keep == "first-within":  # the original may already hold the target
            stopped = _decide_stop(a, cfg, acc)
    step = start
    while step < cfg.steps and not stopped:
        record = train_step(m, cfg, step, optimizer, lr_sched, acc, ema, scaler)
        step += 1
        record["mean_probs"] = dict(zip(m.classifier.groups, record["mean_probs"], strict=True))
        if cfg.audit_every and step % cfg.audit_every == 0 and step < cfg.steps:
            audit = _audit(m, cfg, step, ema, acc)
            if audit:
                audits.append(audit)
                record["audit"] = {"share": audit["share"], "kl": audit["kl"]}
                _note_best(m, audit, audits, ema, work)
            stopped = _decide_stop(audit, cfg, acc)
        log.append(record)
        if acc.is_main_process:
            _append(work / "log.jsonl", [record])
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopped:
                save_state(
                    ckpts,
                    step,
                    m,
                    optimizer,
                    lr_sched,
                    ema,
                    key,
                    log,
                    audits,
                    stopped,
                    scaler,
                )
        info = {k: record[k] for k in ("loss", "align", "clip", "kept") if record[k] is not None}
        if record["skipped"]:
            info["skipped"] = "non-finite gradients"
        info.update({f"p_{g}": v for g, v in record["mean_probs"].items()})
        report(progress, "remediate", step, cfg.steps, **info)
    if acc.is_main_process and step > start:
        save_state(ckpts, step, m, optimizer, lr_sched, ema, key, log, audits, stopped, scaler)
    if ema is not None:
        ema.copy_to(params)
    if (not audits or audits[-1]["step"] != step) and (a := _audit(m, cfg, step, None, acc)):
        audits.append(a)
    kept = _restore_best(m, audits, step, work) if acc.is_main_process else step
    seconds = time.perf_counter() - started
    data = _record(
        m, cfg, log, audits, checkpoint=str(checkpoint), classifier=_spec_json(job.classifier),
        target=job.target.to_json(), prompts=list(job.prompts), steps_done=step,
        stopped_early=bool(stopped and step < cfg.steps), processes=acc.num_processes,
        seconds=seconds, kept_step=kept, audit_prompts=list(job.audit_prompts) or None,
    )  # fmt: skip
    if acc.is_main_process:
        write_output(run, checkpoint, m, data, log, trust_pickle=job.trust_pickle)
    acc.wait_for_everyone()
    return RemediationResult(path=out, data=data, seconds=seconds)
