from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.exceptions import ConfigError, DataError
from medfair_audit.generation import GenerationConfig, image_seed, plan_shards
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run
from tests.launch import medfair_processes

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma.", "Axial T1-weighted MRI <b>x</b>."]


def config(models, out, *, n=6, shard=3, reference=None, **kw):
    return AuditConfig(
        checkpoint=models["t2medi"],
        classifier=models["classifier"],
        prompts=kw.pop("prompts", PROMPTS),
        target=parse_target("male=0.58,female=0.42"),
        out=out,
        reference=reference,
        generation=GenerationConfig(
            n_per_prompt=n, seed=1, steps=2, guidance=2.0, shard_size=shard
        ),
        n_boot=50,
        **kw,
    )


@pytest.fixture(scope="module")
def audited(tiny_models, small_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "a"
    result = run_audit(config(tiny_models, out, reference=small_phantom))
    return out, result


def test_audit_outputs_and_invariants(audited, small_phantom):
    import jsonschema

    from medfair_audit.audit import AuditResult, audit_schema

    out, result = audited
    a = json.loads((out / "audit.json").read_text())
    assert a == result.data and a["schema_version"] == 2
    jsonschema.validate(a, audit_schema())
    assert a["n_images"] == 12 and a["groups"] == ["female", "male"]
    assert set(a["proportions"]) == {"raw", "probabilistic", "acc", "pacc", "em"}
    assert a["default_reading"] == "pacc" and set(a["readings"]) == set(a["proportions"])
    for kind, props in a["proportions"].items():
        assert set(props) == {"female", "male"}  # every group, empty ones too
        for v in props.values():
            assert 0 <= v["ci"][0] <= v["ci"][1] <= 1
            if v["value"] is not None:
                assert v["ci"][0] - 1e-12 <= v["value"] <= v["ci"][1] + 1e-12
            else:
                assert v.get("censored") or not a["identifiable"]
        if kind in ("raw", "probabilistic"):
            assert sum(v["value"] for v in props.values()) == pytest.approx(1)
    for kind, d in a["distances"].items():
        assert kind != "probabilistic"
        assert 0 <= d["kl_target_to_generated"]["ci"][0] <= d["kl_target_to_generated"]["ci"][1]
    assert "kl_divergence" not in a and "proportion_gaps" not in a  # no key written twice
    assert a["chi_square"]["null"].startswith("predicted label shares = target · C")
    assert sum(a["counts"].values()) == 12
    assert [p["n"] for p in a["by_prompt"]] == [6, 6]
    assert a["dispersion"]["worst_prompt"]["index"] in (0, 1)
    # the tiny classifier's shares are not identifiable: no share over the wordings either
    assert not a["identifiable"] and a["dispersion"]["over_prompts"] is None
    assert set(a["quality"]["by_group"]) == {"female", "male", "overall"}
    overall = a["quality"]["by_group"]["overall"]
    assert overall["n_reference"] == 60 and overall["n_generated"] == 12
    n_eq = str(a["quality"]["equal_n"])  # the within-audit equal n, beside the ladder's 8
    assert set(overall["at_n"]) == {n_eq, "8"} and overall["at_n"]["8"]["generated_subsampled"]
    assert a["config"]["features"]["name"] == "classifier-penultimate"
    assert len(a["config"]["checkpoint_sha256"]) == 64
    assert a["classifier"]["evaluation"]["split_unit"].startswith("predefined")
    table = pd.read_csv(out / "images.csv")
    assert len(table) == 12 and table.seed.nunique() == 12
    assert table.seed.tolist()[:2] == [image_seed(1, 0, 0), image_seed(1, 0, 1)]
    assert np.allclose(table[["p_female", "p_male"]].sum(axis=1), 1)
    html = (out / "audit.html").read_text()
    assert (
        'id="headline-table"' in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    )
    assert (out / "grid_male.png").is_file() and (out / "grid_female.png").is_file()
    frames = result.to_frame()
    assert set(frames) == {"overall", "by_prompt", "by_group"}
    assert len(frames["overall"]) == 10 and len(frames["by_prompt"]) == 20
    loaded = AuditResult.load(out)
    assert loaded.data == result.data and loaded.images.seed.tolist() == table.seed.tolist()
    assert loaded.share("male").to_json() == a["proportions"]["pacc"]["male"]
    assert loaded.kl("raw").to_json() == a["distances"]["raw"]["kl_target_to_generated"]
    assert any(line.startswith("male:") for line in loaded.summary())


def test_an_empty_group_with_a_reference_gives_a_complete_audit(
    tiny_models, small_phantom, tmp_path
):
    """A classifier that calls every image male: the female group is empty everywhere."""
    from safetensors.torch import load_file, save_file

    from medfair_audit.reporting.compare import write_report

    clf = tmp_path / "all-male"
    shutil.copytree(tiny_models["classifier"], clf)
    f = next(clf.glob("*.safetensors"))
    weights = load_file(f)
    key = next(k for k in weights if k.endswith("classifier.1.bias"))
    weights[key] = torch.tensor([-50.0, 50.0])
    save_file(weights, f)
    out = tmp_path / "audit"
    r = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"],
            classifier=clf,
            prompts=PROMPTS,
            target=parse_target("male=0.58,female=0.42"),
            out=out,
            reference=small_phantom,
            generation=GenerationConfig(n_per_prompt=3, seed=1, steps=1, shard_size=3),
            n_boot=30,
        )
    )
    q = r.data["quality"]["by_group"]["female"]
    assert r.data["counts"]["female"] == 0 and q["fid"] is None and "fewer than 2" in q["reason"]
    for name in ("audit.json", "audit.html", "images.csv", "grid_female.png", "grid_male.png"):
        assert (out / name).is_file(), name
    for suffix in ("html", "md", "tex"):
        report = write_report([out, out], tmp_path / f"r.{suffix}")
        assert report.stat().st_size > 0


def test_results_do_not_depend_on_batch_size(tiny_models, tmp_path, audited):
    out, _ = audited
    other = run_audit(config(tiny_models, tmp_path / "b", shard=4))
    a = pd.read_csv(out / "images.csv")
    b = other.images
    assert a.seed.tolist() == b.seed.tolist()
    assert np.allclose(a.p_male, b.p_male, atol=1e-4)


class Kill(Exception):
    """Raised by :func:`_kill_after`'s callback: the audit stops mid-generation."""


def _kill_after(images: int):
    """A progress callback that stops an audit once ``images`` images are generated."""

    def killer(event):
        if event.stage == "generate" and event.completed >= images:
            raise Kill

    return killer


def test_killed_audit_resumes_to_the_same_result(tiny_models, tmp_path):
    full = run_audit(config(tiny_models, tmp_path / "full", n=4, shard=2))

    killer = _kill_after(4)

    with pytest.raises(Kill):
        run_audit(config(tiny_models, tmp_path / "cut", n=4, shard=2), progress=killer)
    assert len(list((tmp_path / "cut" / "shards").glob("*.safetensors"))) == 2
    events = []
    again = run_audit(config(tiny_models, tmp_path / "cut", n=4, shard=2), progress=events.append)
    assert any(e.info.get("resumed") for e in events)
    assert (tmp_path / "cut" / "audit.json").read_bytes() == (
        tmp_path / "full" / "audit.json"
    ).read_bytes()
    assert again.data == full.data


def test_two_processes_equal_one(tiny_models, tmp_path):
    args = [
        "audit",
        str(tiny_models["t2medi"]),
        "--classifier",
        str(tiny_models["classifier"]),
        "--target",
        "male=0.58,female=0.42",
        "--prompt",
        PROMPTS[0],
        "--prompt",
        PROMPTS[1],
        "--n-per-prompt",
        "4",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--n-boot",
        "30",
    ]
    medfair_processes(*args, "--out", tmp_path / "one")
    two = medfair_processes(*args, "--out", tmp_path / "two", processes=2)
    # Both processes generated: each wrote its own shards (the main one then aggregated).
    assert "(2 processes, cpu, float32)" in two.stdout
    assert (tmp_path / "one" / "audit.json").read_bytes() == (
        tmp_path / "two" / "audit.json"
    ).read_bytes()
    assert (tmp_path / "one" / "images.csv").read_bytes() == (
        tmp_path / "two" / "images.csv"
    ).read_bytes()


def test_conditional_mode(tiny_models, tmp_path):
    prompts = [
        "Axial FLAIR MRI of a male patient's brain.",
        "Axial FLAIR MRI of a female patient's brain.",
    ]
    r = run_audit(
        config(tiny_models, tmp_path / "c", n=4, shard=4, prompts=prompts, mode="conditional")
    )
    cond = [p["conditional"] for p in r.data["by_prompt"]]
    assert [c["named_group"] for c in cond] == ["male", "female"]
    for p, c in zip(r.data["by_prompt"], cond, strict=True):
        assert c["share"] == p["counts"][c["named_group"]] / p["n"]
    with pytest.raises(ConfigError, match="exactly one"):
        config(tiny_models, tmp_path / "d", prompts=["Axial MRI."], mode="conditional")
        run_audit(config(tiny_models, tmp_path / "d", prompts=["Axial MRI."], mode="conditional"))


def test_nan_images_are_reported_with_prompt_and_seed(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["t2medi"], broken)
    f = next((broken / "unet").glob("*.safetensors"))
    weights = load_file(f)
    key = next(k for k in weights if k.endswith("conv_out.bias"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, f)
    cfg = AuditConfig(
        checkpoint=broken,
        classifier=tiny_models["classifier"],
        prompts=PROMPTS[:1],
        target=parse_target("male=0.5,female=0.5"),
        out=tmp_path / "o",
        generation=GenerationConfig(n_per_prompt=2, seed=3, steps=1, shard_size=2),
    )
    with pytest.raises(DataError, match=rf"prompt 0 .* seed {image_seed(3, 0, 0)}"):
        run_audit(cfg)


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--target", "male=0.5,other=0.5"], ["--target", "differ from the classifier"]),
        (["--target", "male=0.5,female=0.5", "--n-per-prompt", "0"], ["--n-per-prompt"]),
        (["--target", "male=0.5,female=0.5", "--prompts", "{empty}"], ["--prompts", "no prompts"]),
        (
            ["--target", "male=0.5,female=0.5", "--reference", "{nolabels}"],
            ["--reference", "no column 'sex'"],
        ),
        (["--target", "male=0.5,female=0.5", "--features", "bogus"], ["--features"]),
        (
            ["--target", "male=0.5,female=0.5", "--features", "dinov2:/no/such/folder"],
            ["--features", "dinov2:FOLDER"],
        ),
        (
            ["--target", "male=0.5,female=0.5", "--features", "dinov2:{nolabels}"],
            ["--features", "not a DINOv2 model folder"],
        ),
        (["--target", "male=0.5,female=0.5", "--mode", "joint"], ["--mode"]),
        (["--target", "male=0.5,female=0.5", "--half-width", "1.5"], ["--half-width", "(0, 1)"]),
        (
            ["--target", "male=0.5,female=0.5", "--images-from", "{nolabels}"],
            ["--images-from", "with shards/"],
        ),
    ],
)
def test_audit_bad_input(capsys, tiny_models, tmp_path, extra, needles):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    nolabels = tmp_path / "nolabels"
    nolabels.mkdir()
    (nolabels / "metadata.csv").write_text("file\n")
    subs = {"{empty}": str(empty), "{nolabels}": str(nolabels)}
    for key, value in subs.items():
        extra = [a.replace(key, value) for a in extra]
    prompt = [] if "--prompts" in extra else ["--prompt", "Axial MRI."]
    code, _, err = run(
        capsys,
        "audit",
        tiny_models["t2medi"],
        "--classifier",
        tiny_models["classifier"],
        "--out",
        tmp_path / "o",
        "--steps",
        1,
        "--n-per-prompt",
        2,
        *prompt,
        *extra,
    )
    assert_one_line_error(code, err, *needles)


def test_shard_plan_is_independent_of_processes():
    plan = plan_shards(3, GenerationConfig(n_per_prompt=10, shard_size=4))
    assert [(s.prompt_index, s.start, s.stop) for s in plan][:3] == [
        (0, 0, 4),
        (0, 4, 8),
        (0, 8, 10),
    ]
    assert sum(s.stop - s.start for s in plan) == 30
    assert sorted(plan[0::2] + plan[1::2], key=plan.index) == plan
    seeds = {image_seed(0, p, i) for p in range(3) for i in range(10)}
    assert len(seeds) == 30


def test_audits_a_three_channel_stable_diffusion_folder(tiny_models, tmp_path):
    """Any diffusers text-to-image folder: RGB output at another size is converted explicitly."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    from medfair_audit.models.clip import CLIP
    from medfair_audit.models.t2medi import _schedulers, _text_encoder

    torch.manual_seed(0)
    clip, tokenizer = CLIP.from_pretrained(tiny_models["clip"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=clip.config.text_config.hidden_size,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=_text_encoder(clip),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_schedulers()[1],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(tmp_path / "sd"))
    cfg = AuditConfig(
        checkpoint=tmp_path / "sd",
        classifier=tiny_models["classifier"],
        prompts=PROMPTS[:1],
        target=parse_target("male=0.5,female=0.5"),
        out=tmp_path / "o",
        generation=GenerationConfig(n_per_prompt=3, seed=0, steps=2, shard_size=3),
        n_boot=10,
    )
    r = run_audit(cfg)
    assert r.data["n_images"] == 3
    from safetensors.torch import load_file

    shard = load_file(next((tmp_path / "o" / "shards").glob("*.safetensors")))
    assert shard["images"].shape == (3, 3, 32, 32)  # stored as generated
    assert np.allclose(shard["probs"].sum(1).numpy(), 1)  # classified after conversion


def test_a_nan_confusion_matrix_is_a_one_line_error(capsys, tiny_models, tmp_path):
    clf = tmp_path / "clf"
    shutil.copytree(tiny_models["classifier"], clf)
    ev = json.loads((clf / "evaluation.json").read_text())
    ev["heldout"]["probs"][0][0] = float("nan")
    (clf / "evaluation.json").write_text(json.dumps(ev))
    code, _, err = run(
        capsys,
        "audit",
        tiny_models["t2medi"],
        "--classifier",
        clf,
        "--out",
        tmp_path / "o",
        "--steps",
        1,
        "--n-per-prompt",
        2,
        "--prompt",
        "Axial MRI.",
        "--target",
        "male=0.5,female=0.5",
    )
    assert_one_line_error(code, err, "--classifier", "finite")
    assert not (tmp_path / "o" / "audit.json").exists()


def test_out_holding_a_finished_audit_or_other_files_needs_overwrite(tiny_models, tmp_path):
    out = tmp_path / "a"
    run_audit(config(tiny_models, out, n=2, shard=2))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(DataError, match="holds a finished audit; pass --overwrite") as err:
        run_audit(config(tiny_models, out, n=2, shard=2))
    assert err.value.param == "out"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    (out / "notes.txt").write_text("mine")
    again = run_audit(config(tiny_models, out, n=2, shard=2, overwrite=True))
    assert again.data["n_images"] == 4 and not (out / "notes.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match=r"other files \(thesis.tex\)"):
        run_audit(config(tiny_models, other, n=2, shard=2))
    assert (other / "thesis.tex").read_text() == "x"


def test_a_failed_save_leaves_no_audit_json_and_a_rerun_resumes(tiny_models, tmp_path, monkeypatch):
    import medfair_audit.audit.result as result_module

    out = tmp_path / "a"
    write_text = result_module.atomic_write_text

    def broken(path, text, **kw):  # the disk fills up while audit.html is written
        if Path(path).name == "audit.html":
            raise OSError("disk full")
        return write_text(path, text, **kw)

    monkeypatch.setattr(result_module, "atomic_write_text", broken)
    with pytest.raises(OSError, match="disk full"):
        run_audit(config(tiny_models, out, n=2, shard=2))
    assert (out / "images.csv").is_file() and not (out / "audit.json").exists()
    monkeypatch.undo()
    result = run_audit(config(tiny_models, out, n=2, shard=2))  # unfinished: resumed, no flag
    assert (out / "audit.json").is_file() and result.data["n_images"] == 4


def test_a_packed_audit_equals_a_loose_one_and_resumes(tiny_models, tmp_path, monkeypatch):
    """Shards gathered into packs (here 8 shards in packs of 4) change no result and no resume;
    the report reads the images back from the packs."""
    from medfair_audit.generation import engine
    from medfair_audit.reporting.html import audit_images

    loose = run_audit(config(tiny_models, tmp_path / "loose", n=4, shard=1))
    monkeypatch.setattr(engine, "MAX_PACKS", 2)

    killer = _kill_after(5)

    with pytest.raises(Kill):
        run_audit(config(tiny_models, tmp_path / "packed", n=4, shard=1), progress=killer)
    shards = sorted(p.name for p in (tmp_path / "packed" / "shards").iterdir())
    assert shards == [  # 4 shards packed, the 5th loose
        "p0001-i0000000.json",
        "p0001-i0000000.safetensors",
        "pack-p0000-i0000000.zip",
    ]
    events = []
    run_audit(config(tiny_models, tmp_path / "packed", n=4, shard=1), progress=events.append)
    assert sum(bool(e.info.get("resumed")) for e in events) == 5
    assert sorted(p.name for p in (tmp_path / "packed" / "shards").iterdir()) == [
        "pack-p0000-i0000000.zip",
        "pack-p0001-i0000000.zip",
    ]
    for name in ("audit.json", "images.csv"):
        assert (tmp_path / "packed" / name).read_bytes() == (tmp_path / "loose" / name).read_bytes()
    for p in (None, 1):
        a, b = audit_images(tmp_path / "packed", p), audit_images(tmp_path / "loose", p)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert len(loose.images) == 8


def test_embedding_features_give_cmmd_and_name_their_encoder(tiny_models, small_phantom, tmp_path):
    """``--features dinov2:PATH`` and ``clip:PATH``: a local encoder's embeddings, with CMMD on the
    same subsample draws as FID, and the encoder named in the audit."""
    import jsonschema
    from transformers import Dinov2Config, Dinov2Model

    from medfair_audit.audit import audit_schema

    torch.manual_seed(0)
    dino = tmp_path / "dinov2"
    Dinov2Model(
        Dinov2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            image_size=28, patch_size=14,
        )
    ).save_pretrained(dino)  # fmt: skip
    for spec in (f"dinov2:{dino}", f"clip:{tiny_models['clip']}"):
        out = tmp_path / f"audit-{spec.split(':')[0]}"
        r = run_audit(config(tiny_models, out, reference=small_phantom, features=spec))
        jsonschema.validate(r.data, audit_schema())
        q = r.data["quality"]
        assert r.data["config"]["features"]["name"] == spec and "CMMD" in q["method"]
        at = q["by_group"]["overall"]["at_n"]
        assert at and all(a["cmmd"] is not None for a in at.values())
        assert all(("prdc" in a) == (int(n) > 5) for n, a in at.items())  # k = 5 neighbours
