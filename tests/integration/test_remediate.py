"""`medfair remediate` on tiny models: outputs, gradient flow, resume equivalence, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medfair_audit.config import Placement
from medfair_audit.exceptions import ConfigError, ModelError
from medfair_audit.models.t2medi import load_pipeline
from medfair_audit.remediation import RemediationConfig, RemediationJob, remediate
from medfair_audit.remediation.step import train_step
from medfair_audit.remediation.wiring import load_models
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run
from tests.launch import medfair_processes

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma.", "Axial T1-weighted MRI of the brain."]
TARGET = parse_target("male=0.58,female=0.42")


def tiny(**kw):
    base = dict(
        steps=4,
        batch_per_prompt=2,
        sampling_steps=3,
        grad_steps=2,
        lora_rank=2,
        audit_images=2,
        audit_steps=2,
        checkpoint_every=2,
        warmup=1,
        lr=1e-2,
    )
    return RemediationConfig(**{**base, **kw})


def _run(models, out, cfg, progress=None, **kw):
    kw.setdefault("image_encoders", [(models["clip"], 1.0)])
    kw.setdefault("target", TARGET)
    job = RemediationJob(
        checkpoint=models["t2medi"],
        classifier=models["classifier"],
        prompts=PROMPTS,
        out=out,
        config=cfg,
        **kw,
    )
    return remediate(job, progress=progress)


def _unet_weights(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def remediated(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("rem") / "fair"
    events = []
    result = _run(tiny_models, out, tiny(audit_every=2), progress=events.append)
    return out, result, events


def test_outputs_are_a_pipeline_adapters_and_a_record(remediated, tiny_models):
    out, result, events = remediated
    data = json.loads((out / "remediation.json").read_text())
    assert data == json.loads(json.dumps(result.data))
    assert data["steps_done"] == 4 and data["config"]["loss"] == "kl"
    assert [a["step"] for a in data["audits"]] == [0, 2, 4]  # before, every 2, final
    for a in data["audits"]:
        assert sum(a["share"].values()) == pytest.approx(1) and a["n"] == 4 and a["kl"] >= 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(r["clip"] is not None and r["clip"] >= -1e-6 for r in log)
    assert [r["prompts"] for r in log] == [[0], [1], [0], [1]]  # prompts cycle
    assert [e.completed for e in events if e.stage == "remediate"] == [1, 2, 3, 4]
    assert not out.with_name(out.name + ".partial").exists()
    # A normal pipeline folder whose UNet changed, and adapters with the LoRA weights.
    pipe = load_pipeline(out)
    assert pipe.unet.config.in_channels == 4
    before, after = _unet_weights(tiny_models["t2medi"]), _unet_weights(out)
    assert before.keys() == after.keys()  # merged: no LoRA names left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out")) for k in changed)
    assert (out / "adapters" / "pytorch_lora_weights.safetensors").is_file()


def assert_merged_equals_base_plus_adapters(out, base_dir, steps=3):
    """The merged pipeline and the original with ``out/adapters`` loaded draw the same images."""
    merged = load_pipeline(out)
    base = load_pipeline(base_dir)
    base.load_lora_weights(str(out / "adapters"))
    kw = dict(prompt=PROMPTS[0], num_inference_steps=steps, guidance_scale=2.0, output_type="pt")
    a = merged(generator=torch.Generator().manual_seed(1), **kw).images
    b = base(generator=torch.Generator().manual_seed(1), **kw).images
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_merged_pipeline_equals_base_plus_adapters(remediated, tiny_models):
    assert_merged_equals_base_plus_adapters(remediated[0], tiny_models["t2medi"])


def test_gradients_reach_only_the_tuned_parameters(tiny_models):
    from accelerate import Accelerator

    for full in (False, True):
        cfg = tiny(full=full)
        acc = Accelerator()
        m = load_models(
            tiny_models["t2medi"],
            tiny_models["classifier"],
            TARGET,
            PROMPTS,
            [(tiny_models["clip"], 1.0)],
            cfg,
            Placement(device=acc.device, dtype="float32"),
            False,
        )
        params = list(m.trainable.values())
        opt = torch.optim.SGD(params, lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        train_step(m, cfg, 0, opt, sched, acc, None)
        tuned = {id(p) for p in params}
        assert tuned and all(p.grad is not None for p in params)
        # (LoRA's B starts at zero, so at step 0 only the B matrices get a non-zero gradient.)
        assert sum(bool(p.grad.abs().sum() > 0) for p in params) >= len(tuned) // 2
        frozen = [
            *m.pipe.vae.parameters(),
            *m.pipe.text_encoder.parameters(),
            *m.classifier.primary.model.parameters(),
            *(p for enc, _ in m.encoders for p in enc.parameters()),
            *(m.original_unet.parameters() if full else []),
            *(p for p in m.unet.parameters() if id(p) not in tuned),
        ]
        assert frozen and all(p.grad is None for p in frozen)
        names = [n for n, p in m.unet.named_parameters() if p.requires_grad]
        if not full:
            assert all("lora_" in n for n in names)
            assert sum(p.numel() for p in params) < 0.1 * sum(
                p.numel() for p in m.unet.parameters()
            )


class _Stop(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny_models, tmp_path):
    cfg = tiny(steps=5, ema_decay=0.5)
    _run(tiny_models, tmp_path / "a", cfg)

    def die_at_4(event):
        if event.completed == 4:
            raise _Stop

    with pytest.raises(_Stop):
        _run(tiny_models, tmp_path / "b", cfg, progress=die_at_4)
    partial = tmp_path / "b.partial"
    assert (partial / "checkpoints" / "step-0000004").is_dir()  # saved before the callback
    assert not (tmp_path / "b" / "model_index.json").exists()
    # The run died after step 4's checkpoint; pretend it died before it, at the step-2 one.
    shutil.rmtree(partial / "checkpoints" / "step-0000004")
    # Resuming with other settings is refused and leaves the checkpoint alone.
    with pytest.raises(ConfigError, match="other settings"):
        _run(tiny_models, tmp_path / "b", tiny(steps=5, ema_decay=0.5, lr=0.5), resume=True)
    # Another --keep too: a run that kept its last weights noted no best ones to go back to.
    with pytest.raises(ConfigError, match="other settings"):
        _run(tiny_models, tmp_path / "b", tiny(steps=5, ema_decay=0.5, keep="best"), resume=True)
    # So is a checkpoint made by another number of processes (they draw other noise).
    state = partial / "checkpoints" / "step-0000002" / "state.json"
    doc = json.loads(state.read_text())
    state.write_text(json.dumps({**doc, "config": {**doc["config"], "processes": 2}}))
    with pytest.raises(ConfigError, match="processes"):
        _run(tiny_models, tmp_path / "b", cfg, resume=True)
    state.write_text(json.dumps(doc))
    _run(tiny_models, tmp_path / "b", cfg, resume=True)
    a, b = _unet_weights(tmp_path / "a"), _unet_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = (tmp_path / "a" / "log.jsonl").read_text()
    lb = (tmp_path / "b" / "log.jsonl").read_text()
    assert la == lb and len(la.splitlines()) == 5


def test_full_tuning_and_ot_loss(tiny_models, tmp_path):
    result = _run(
        tiny_models, tmp_path / "f", tiny(steps=1, full=True, loss="ot", ot_max_uncertainty=1.0)
    )
    assert not (tmp_path / "f" / "adapters").exists()
    before, after = _unet_weights(tiny_models["t2medi"]), _unet_weights(tmp_path / "f")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result.data["config"]["full"] and result.data["config"]["loss"] == "ot"


def test_lambda_zero_needs_no_encoder_and_skips_the_original(tiny_models, tmp_path):
    result = remediate(
        RemediationJob(
            checkpoint=tiny_models["t2medi"],
            classifier=tiny_models["classifier"],
            target=TARGET,
            prompts=PROMPTS,
            out=tmp_path / "z",
            config=tiny(steps=1, lambda_clip=0.0),
        )
    )
    assert result.data["image_encoders"] == [] and result.data["curves"]["clip"] == [None]


def test_cli_remediate_and_bad_input(capsys, tiny_models, tmp_path):
    common = [
        "remediate",
        tiny_models["t2medi"],
        "--classifier",
        tiny_models["classifier"],
        "--prompt",
        PROMPTS[0],
        "--image-encoder",
        tiny_models["clip"],
    ]
    small = [
        "--batch-per-prompt",
        2,
        "--sampling-steps",
        2,
        "--audit-images",
        2,
        "--audit-every",
        0,
    ]
    out = tmp_path / "cli"
    code, stdout, err = run(
        capsys,
        *common,
        "--target",
        "male=0.58,female=0.42",
        "--out",
        out,
        "--steps",
        1,
        "--lora-rank",
        2,
        *small,
    )
    assert code == 0, err
    assert "quick audit before" in stdout and (out / "model_index.json").is_file()
    bad = [
        (["--target", "a=0.5,b=0.5"], "--target", "classifier"),
        (["--target", "male=0.5,female=0.5", "--lr", 0], "--lr", "> 0"),
        (["--target", "male=0.5,female=0.5", "--steps", 0], "--steps", "expected 1 to"),
        (["--target", "male=0.5,female=0.5", "--grad-steps", 3], "--grad-steps", "K ≤ T"),
        (["--target", "male=0.5,female=0.5", "--gradient", "all"], "--gradient", "adjusted"),
        (["--target", "male=0.5,female=0.5", "--lora-on", "vae"], "--lora-on", "text"),
        (
            ["--target", "male=0.5,female=0.5", "--sampling-steps-max", 1],
            "--sampling-steps-max",
            "≥",
        ),
        (["--target", "male=0.5,female=0.5", "--keep", "best"], "--keep", "--audit-every"),
        (["--target", "male=0.5,female=0.5", "--keep", "worst"], "--keep", "'first-within'"),
        (
            ["--target", "male=0.5,female=0.5", "--audit-prompts", tmp_path / "none.txt"],
            "--audit-prompts",
            "does not exist",
        ),
    ]
    for extra, flag, needle in bad:
        code, _, err = run(capsys, *common, *small, "--out", tmp_path / "x", *extra)
        assert_one_line_error(code, err, flag, needle)
    code, _, err = run(
        capsys,
        *common[:-2],
        *small,
        "--target",
        "male=0.5,female=0.5",
        "--out",
        tmp_path / "x",
        "--image-encoder",
        tmp_path / "nope",
    )
    assert_one_line_error(code, err, "--image-encoder")
    (tmp_path / "nounet").mkdir()
    (tmp_path / "nounet" / "model_index.json").write_text('{"vae": ["diffusers", "AutoencoderKL"]}')
    code, _, err = run(
        capsys,
        "remediate",
        tmp_path / "nounet",
        *common[2:],
        *small,
        "--target",
        "male=0.5,female=0.5",
        "--out",
        tmp_path / "x",
    )
    assert_one_line_error(code, err, "unet")
    # Nothing was written for the failures; the earlier output is untouched.
    assert not (tmp_path / "x").exists() and (out / "model_index.json").is_file()


def test_two_processes_equal_one_process_with_both_batches(tiny_models, tmp_path):
    """Under `torchrun` (or `accelerate launch`) gradients are averaged: 2 processes × 1 prompt
    per step give the weights of 1 process × 2 prompts per step (same prompts, same noise)."""
    args = [
        "remediate",
        str(tiny_models["t2medi"]),
        "--classifier",
        str(tiny_models["classifier"]),
        "--target",
        "male=0.58,female=0.42",
        "--image-encoder",
        str(tiny_models["clip"]),
        *("--prompt", PROMPTS[0], "--prompt", PROMPTS[1]),
        *("--steps", "2", "--batch-per-prompt", "2", "--sampling-steps", "2"),
        *("--lora-rank", "2", "--lr", "0.05", "--audit-images", "2", "--audit-every", "0"),
    ]
    medfair_processes(*args, "--prompts-per-step", 2, "--out", tmp_path / "one")
    medfair_processes(*args, "--out", tmp_path / "two", processes=2)
    a, b = _unet_weights(tmp_path / "one"), _unet_weights(tmp_path / "two")
    assert any(not torch.equal(a[k], w) for k, w in _unet_weights(tiny_models["t2medi"]).items())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    logs = [
        [json.loads(x) for x in (tmp_path / n / "log.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    ]
    assert [r["prompts"] for r in logs[0]] == [r["prompts"] for r in logs[1]] == [[0, 1]] * 2
    assert json.loads((tmp_path / "two" / "remediation.json").read_text())["processes"] == 2
    # --until-kl is decided on the main process (the only one that audits) and broadcast: both
    # processes stop after the first audit instead of one waiting for the other forever.
    stop = [a if a != "0" else "1" for a in args]  # --audit-every 1
    medfair_processes(*stop, "--until-kl", 100, "--out", tmp_path / "stop", processes=2)
    doc = json.loads((tmp_path / "stop" / "remediation.json").read_text())
    assert doc["steps_done"] == 1 and doc["stopped_early"]


def test_align_to_corrected_uses_the_soft_confusion_matrix(tiny_models, tmp_path):
    from medfair_audit.metrics.functional import adjusted_count

    clf = tmp_path / "clf"
    shutil.copytree(tiny_models["classifier"], clf)
    ev = json.loads((clf / "evaluation.json").read_text())
    soft = [[0.8, 0.2], [0.3, 0.7]]
    ev["soft_confusion"] = soft
    (clf / "evaluation.json").write_text(json.dumps(ev))
    cfg = tiny(steps=1, align_to="corrected")
    models = {**tiny_models, "classifier": clf}
    result = _run(models, tmp_path / "c", cfg)
    assert result.data["config"]["align_to"] == "corrected"
    final = result.final_audit
    mean = np.array([final["mean_probs"]["female"], final["mean_probs"]["male"]])
    pacc = np.linalg.solve(np.array(soft).T, mean)  # PACC: Sᵀ q = mean probability
    np.testing.assert_allclose(adjusted_count(mean, np.array(soft)), pacc)
    clipped = np.clip(pacc, 0, None) / np.clip(pacc, 0, None).sum()
    assert list(final["share_corrected"].values()) == pytest.approx(clipped.tolist())
    assert final["pacc_clipped"] == bool((pacc < 0).any() or (pacc > 1).any())
    assert final["kl"] == final["kl_corrected"] and "kl_raw" in final
    ev["soft_confusion"] = [[0.5, 0.5], [0.5, 0.5]]  # cannot tell the groups apart
    (clf / "evaluation.json").write_text(json.dumps(ev))
    with pytest.raises(ModelError, match="condition number"):
        _run(models, tmp_path / "d", cfg)
    del ev["soft_confusion"]
    (clf / "evaluation.json").write_text(json.dumps(ev))
    with pytest.raises(ModelError, match="soft confusion"):
        _run(models, tmp_path / "d", cfg)
    with pytest.raises(ConfigError, match="--loss kl"):
        tiny(align_to="corrected", loss="ot")


def test_ema_follows_diffusers_warmup_and_is_what_gets_saved(tiny_models, tmp_path):
    from diffusers.training_utils import EMAModel

    from medfair_audit.remediation.loop import _saved_weights

    cfg = tiny(steps=3, ema_decay=0.9)
    result = _run(tiny_models, tmp_path / "e", cfg)
    ref = EMAModel(
        [torch.nn.Parameter(torch.zeros(1))], decay=0.9, use_ema_warmup=True, power=2 / 3
    )
    assert result.data["curves"]["ema_decay"] == pytest.approx(
        [ref.get_decay(s) for s in (1, 2, 3)]
    )
    # Within _saved_weights the tuned parameters hold the EMA, and get their values back after.
    m = load_models(
        tiny_models["t2medi"], tiny_models["classifier"], TARGET, PROMPTS, [],
        tiny(lambda_clip=0.0), Placement(device="cpu", dtype="float32"), False,
    )  # fmt: skip
    params = list(m.trainable.values())
    ema = EMAModel(params, decay=0.5)
    raw = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    ema.step(params)  # decay at step 1 is 0: the shadow becomes the new values
    shadow = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    now = [p.detach().clone() for p in params]
    with _saved_weights(m, ema):
        assert all(torch.equal(p, s) for p, s in zip(params, shadow, strict=True))
    assert all(torch.equal(p, n) for p, n in zip(params, now, strict=True))
    assert not torch.equal(now[0], raw[0])


def test_adjusted_gradient_with_random_step_counts_runs_and_is_recorded(tiny_models, tmp_path):
    cfg = tiny(
        steps=2, gradient="adjusted", sampling_steps=2, sampling_steps_max=3, grad_steps=None
    )
    result = _run(tiny_models, tmp_path / "adj", cfg)
    assert result.data["config"]["gradient"] == "adjusted"
    before, after = _unet_weights(tiny_models["t2medi"]), _unet_weights(tmp_path / "adj")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert cfg.k == 3 and tiny(gradient="adjusted", grad_steps=1).k == 1
    assert RemediationConfig().k == 2


def _tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    Dinov2Model(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    )
    return folder


def test_text_lora_and_several_image_encoders(tiny_models, tmp_path):
    from medfair_audit.remediation import ImageEncoder, parse_encoder_spec

    dino = _tiny_dinov2(tmp_path / "dino")
    enc = ImageEncoder.from_pretrained(dino)
    x = torch.rand(2, 1, 64, 64, requires_grad=True) * 2 - 1
    x.retain_grad()
    e = enc(x)
    assert enc.kind == "dinov2" and e.shape == (2, 32)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    e.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert parse_encoder_spec(f"{dino}:0.5") == (dino, 0.5)
    assert parse_encoder_spec(str(dino)) == (dino, 1.0)
    with pytest.raises(ModelError, match="WEIGHT"):
        parse_encoder_spec(f"{dino}:-1")
    out = tmp_path / "text"
    cfg = tiny(steps=2, lora_on="text", loss="ot", ot_max_uncertainty=1.0)
    result = _run(tiny_models, out, cfg, image_encoders=[(tiny_models["clip"], 1.0), (dino, 0.5)])
    kinds = [(x["kind"], x["weight"]) for x in result.data["image_encoders"]]
    assert kinds == [("clip", 1.0), ("dinov2", 0.5)]
    assert all(k is not None for k in result.data["curves"]["kept"])
    # Only the text encoder changed; its merged weights equal base + the saved text adapters.
    before, after = _unet_weights(tiny_models["t2medi"]), _unet_weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    text_a = load_file(tiny_models["t2medi"] / "text_encoder" / "model.safetensors")
    text_b = load_file(out / "text_encoder" / "model.safetensors")
    assert text_a.keys() == text_b.keys()
    assert any(not torch.equal(text_a[k], text_b[k]) for k in text_a)
    assert_merged_equals_base_plus_adapters(out, tiny_models["t2medi"], steps=2)
    with pytest.raises(ConfigError, match="--lora-on unet"):
        tiny(full=True, lora_on="text")


def test_until_kl_stops_at_the_first_audit_that_meets_it(tiny_models, tmp_path):
    result = _run(tiny_models, tmp_path / "u", tiny(steps=6, audit_every=2, until_kl=100.0))
    assert result.data["steps_done"] == 2 and result.data["stopped_early"]
    assert [a["step"] for a in result.data["audits"]] == [0, 2]
    with pytest.raises(ConfigError, match="--audit-every"):
        tiny(until_kl=0.1, audit_every=0)


def test_keep_best_saves_the_weights_of_the_audit_with_the_lowest_kl(tiny_models, tmp_path):
    selection = ["Axial FLAIR brain MR image with a glioma."]
    cfg = tiny(steps=6, audit_every=2, audit_images=3)
    best = _run(tiny_models, tmp_path / "b", replace(cfg, keep="best"), audit_prompts=selection)
    last = _run(tiny_models, tmp_path / "l", cfg, audit_prompts=selection)
    audits = best.data["audits"]
    # The quick audits read the selection prompt (3 images of one prompt), not the two training
    # prompts, and the audits of both runs are the same: keeping decides only what is saved.
    assert [a["n"] for a in audits] == [3] * 4 and [a["step"] for a in audits] == [0, 2, 4, 6]
    assert audits == last.data["audits"] and best.data["audit_prompts"] == selection
    kls = [a["kl"] for a in audits]
    kept = audits[kls.index(min(kls))]["step"]  # the first of equal KLs
    assert best.data["kept_step"] == best.kept_step == kept and last.kept_step == 6
    assert best.final_audit["step"] == kept and last.final_audit["step"] == 6
    assert any(f"kept the weights of step {kept}" in line for line in best.summary())
    a, b = _unet_weights(tmp_path / "b"), _unet_weights(tmp_path / "l")
    assert all(torch.equal(a[k], b[k]) for k in a) == (kept == 6)
    if kept == 0:  # the untuned start kept: the base UNet itself
        base = load_pipeline(tiny_models["t2medi"]).unet.state_dict()
        assert all(torch.allclose(a[k], base[k]) for k in a)
    with pytest.raises(ConfigError, match="--audit-every"):
        tiny(keep="best", audit_every=0)
    with pytest.raises(ConfigError, match="'last', 'best' or 'first-within'"):
        tiny(keep="first")


@pytest.mark.parametrize("male", [0.58, 0.0])
def test_keep_first_within_stops_at_the_first_audit_whose_interval_holds_the_target(
    tiny_models, tmp_path, male
):
    # The tiny model draws what its classifier reads as female: 58% male is never within the
    # quick audits' intervals, an all-female target is from the start.
    selection = ["Axial FLAIR brain MR image with a glioma."]
    target = {"male": male, "female": 1 - male}
    kw = {"audit_prompts": selection, "target": parse_target(f"male={male},female={1 - male}")}
    cfg = tiny(steps=6, audit_every=2, audit_images=4)
    last = _run(tiny_models, tmp_path / "l", cfg, **kw)
    first = _run(tiny_models, tmp_path / "f", replace(cfg, keep="first-within"), **kw)
    audits = last.data["audits"]
    for a in audits:  # each audit's interval, and whether it holds the target
        assert a["within"] == all(lo <= target[g] <= hi for g, (lo, hi) in a["ci"].items())
    within = [a["step"] for a in audits if a["within"]]
    assert within == ([0, 2, 4, 6] if male == 0 else [])
    # The same trajectory up to the stop: the audits are the keep="last" run's, cut there.
    stop = within[0] if within else 6
    kls = [a["kl"] for a in audits]
    kept = stop if within else audits[kls.index(min(kls))]["step"]  # none within: as "best"
    assert first.data["steps_done"] == stop and first.kept_step == kept
    assert first.data["audits"] == [a for a in audits if a["step"] <= stop]
    assert first.data["stopped_early"] == (stop < 6)
    assert any(f"kept the weights of step {kept}" in line for line in first.summary())
    if kept == 0:  # the untuned start kept: the base UNet is saved
        base = load_pipeline(tiny_models["t2medi"]).unet.state_dict()
        saved = _unet_weights(tmp_path / "f")
        assert all(torch.allclose(saved[k], base[k]) for k in saved)
    with pytest.raises(ConfigError, match="--audit-every"):
        tiny(keep="first-within", audit_every=0)


def test_first_within_keeps_the_first_audit_within_else_the_lowest_kl():
    from medfair_audit.remediation.loop import _best

    audits = [
        {"step": 0, "kl": 0.9, "within": False},
        {"step": 2, "kl": 0.1, "within": False},
        {"step": 4, "kl": 0.3, "within": True},
        {"step": 6, "kl": 0.05, "within": True},
    ]
    assert _best(audits, "first-within")["step"] == 4
    assert _best(audits)["step"] == 6  # "best" ignores the intervals
    none_within = [{**a, "within": False} for a in audits]
    assert _best(none_within, "first-within")["step"] == 6


def test_restore_best_puts_back_the_noted_weights(tiny_models, tmp_path):
    from medfair_audit.remediation.loop import _note_best, _restore_best

    m = load_models(
        tiny_models["t2medi"], tiny_models["classifier"], TARGET, PROMPTS, [],
        tiny(lambda_clip=0.0, keep="best", audit_every=2),
        Placement(device="cpu", dtype="float32"), False,
    )  # fmt: skip
    params = list(m.trainable.values())

    def shift(by):
        with torch.no_grad():
            for p in params:
                p.add_(by)
        return [p.detach().clone() for p in params]

    audits = []
    for step, kl in ((0, 0.9), (2, 0.3), (4, 0.3), (6, 0.5)):
        snapshot = shift(1.0)
        if step == 2:
            at_2 = snapshot
        audits.append({"step": step, "kl": kl})
        _note_best(m, audits[-1], audits, None, tmp_path)
    # Step 2's weights come back (step 4 only ties it); the run's last weights are dropped.
    assert _restore_best(m, audits, 6, tmp_path) == 2
    assert all(torch.equal(p, w) for p, w in zip(params, at_2, strict=True))
    # When the last audit is the best, the weights in place are kept as they are.
    now = shift(1.0)
    assert _restore_best(m, [*audits, {"step": 8, "kl": 0.1}], 8, tmp_path) == 8
    assert all(torch.equal(p, w) for p, w in zip(params, now, strict=True))


def test_missing_default_image_encoder_is_named(tiny_models, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_models["t2medi"], ckpt)
    (ckpt / "medfair.json").unlink()  # no record of the CLIP it was trained with
    with pytest.raises(ModelError, match="--image-encoder") as info:
        remediate(
            RemediationJob(
                checkpoint=ckpt,
                classifier=tiny_models["classifier"],
                target=TARGET,
                prompts=PROMPTS,
                out=tmp_path / "o",
                config=tiny(steps=1),
            )
        )
    assert info.value.param == "image_encoder"
    assert not (tmp_path / "o").exists()
