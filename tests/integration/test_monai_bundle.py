"""Auditing MONAI latent diffusion bundles: 3-D volumes, conditioning on a vector, safety."""

from __future__ import annotations

import json
import pickle

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch

from medfair_audit.audit import audit_schema
from medfair_audit.config import ClassifierConfig, ClassifierJob, PhantomConfig, Placement
from medfair_audit.data import build_phantom_volumes
from medfair_audit.exceptions import ModelError
from medfair_audit.metrics.functional import adjusted_count
from medfair_audit.models.classifier import train_classifier
from medfair_audit.models.monai_ldm import MonaiLatentDiffusion, save_bundle
from medfair_audit.models.pipelines import describe, generate, load_pipeline, pipeline_info
from tests.cli.test_cli import assert_one_line_error, run

AE = {
    "_target_": "monai.networks.nets.AutoencoderKL", "spatial_dims": 3, "in_channels": 1,
    "out_channels": 1, "channels": [8, 8], "latent_channels": 2, "num_res_blocks": 1,
    "norm_num_groups": 4, "attention_levels": [False, False],
    "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False,
}  # fmt: skip
UNET = {
    "_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 3, "in_channels": 4,
    "out_channels": 2, "channels": [8, 8], "attention_levels": [False, True],
    "num_res_blocks": 1, "num_head_channels": 8, "norm_num_groups": 4,
    "with_conditioning": True, "cross_attention_dim": 2,
}  # fmt: skip
# MONAI Generative Models' spelling, as Pinaya et al.'s brain LDM bundle writes it
SCHEDULER = {
    "_target_": "generative.networks.schedulers.DDIMScheduler", "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195,
    "clip_sample": False,
}  # fmt: skip
DECLARED = {
    "latent_shape": [2, 8, 8, 8],
    "conditioning": {
        "mode": "both",
        "vector": ["sex", "age"],
        "default": [0.5, 0.5],
        "groups": {"sex": {"female": {"sex": 0.0}, "male": {"sex": 1.0}}},
        "distribution": {"sex": {"female": 0.3, "male": 0.7}},
    },
}


def _networks(seed: int = 0, unet_def=UNET):
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    torch.manual_seed(seed)
    kw = lambda d: {k: v for k, v in d.items() if k != "_target_"}  # noqa: E731
    ae, unet = AutoencoderKL(**kw(AE)), DiffusionModelUNet(**kw(unet_def))
    with torch.no_grad():  # MONAI zero-initialises the UNet's output: give it a response
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return ae, unet


def _bundle(folder, fmt="pt", declared=DECLARED, seed=0, unet_def=UNET):
    ae, unet = _networks(seed, unet_def)
    return save_bundle(
        folder, autoencoder_def=AE, network_def=unet_def, scheduler_def=SCHEDULER,
        autoencoder=ae, diffusion=unet, medfair=declared, weights_format=fmt,
    )  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("bundle") / "ldm")


@pytest.fixture(scope="module")
def classifier3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf3d")
    cfg = PhantomConfig(n=16, seed=3, size=32, workers=1, splits="train=0.5,val=0.25,test=0.25")
    build_phantom_volumes(root / "v", cfg)
    job = ClassifierJob(
        data=root / "v", out=root / "clf", sequence="t1",
        config=ClassifierConfig.volumes(image_size=16, widths=(4, 4, 8, 8), epochs=2,
                                        batch_size=4),
    )  # fmt: skip
    train_classifier(job)
    return root / "clf"


@pytest.fixture(scope="module")
def heads(classifier3d):
    return classifier3d.parent / "v"


def test_bundle_loads_and_draws_seeded_conditioned_volumes(bundle, tmp_path):
    pipe = load_pipeline(bundle)
    assert isinstance(pipe, MonaiLatentDiffusion)
    info = pipeline_info(pipe)
    assert info["family"] == "monai-ldm" and info["resolution"] == [16, 16, 16]
    assert "conditioned on sex, age" in describe(info)
    x = generate(pipe, "sex=female", [5, 6, 7], steps=4, guidance=1.0)
    assert x.shape == (3, 1, 16, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and not x.requires_grad
    # a volume depends on its seed alone, not on the batch it was drawn in
    one = generate(pipe, "sex=female", [6], steps=4, guidance=1.0)
    assert torch.allclose(x[1:2], one, atol=1e-5)
    # the request reaches the network: another group, another volume from the same noise
    other = generate(pipe, "sex=male", [6], steps=4, guidance=1.0)
    assert (other - one).abs().max() > 1e-3
    assert torch.equal(pipe.condition("sex=male"), torch.tensor([1.0, 0.5]))
    # safetensors weights give the same model as the .pt state dicts
    same = load_pipeline(_bundle(tmp_path / "st", fmt="safetensors"))
    assert torch.allclose(generate(same, "sex=female", [6], steps=4, guidance=1.0), one)
    with pytest.raises(Exception, match="asks for 'sex=other'") as info:
        pipe.condition("sex=other")
    assert info.value.param == "prompts"


def test_audit_a_conditioned_bundle_end_to_end(bundle, classifier3d, tmp_path, capsys):
    out = tmp_path / "audit"
    code, text, _ = run(capsys, "audit", bundle, "--classifier", classifier3d, "--target",
                        "female=0.5,male=0.5", "--condition", "sex", "--n-per-prompt", 6,
                        "--batch-size", 3, "--steps", 3, "--n-boot", 200, "--out", out)  # fmt: skip
    assert code == 0 and "MONAI latent diffusion" in text
    doc = json.loads((out / "audit.json").read_text())
    jsonschema.validate(doc, audit_schema())
    assert doc["mode"] == "conditional" and doc["config"]["prompts"] == ["sex=female", "sex=male"]
    cond = doc["conditioning"]
    assert cond["distribution"] == {"female": 0.3, "male": 0.7}
    assert cond["distribution_source"].startswith("declared")
    assert [p["conditional"]["named_group"] for p in doc["by_prompt"]] == ["female", "male"]
    # the marginal PACC share, recomputed from images.csv and the classifier's held-out outputs
    table = pd.read_csv(out / "images.csv")
    ev = json.loads((classifier3d / "evaluation.json").read_text())
    labels, probs = np.array(ev["heldout"]["labels"]), np.array(ev["heldout"]["probs"])
    soft = np.stack([probs[labels == k].mean(0) for k in range(2)])
    means = [table[table.prompt_index == i][["p_female", "p_male"]].to_numpy().mean(0)
             for i in range(2)]  # fmt: skip
    mixed = 0.3 * means[0] + 0.7 * means[1]
    expected = adjusted_count(mixed, soft)
    pacc = cond["marginal"]["pacc"]
    for j, g in enumerate(("female", "male")):
        if pacc[g]["value"] is not None:
            assert pacc[g]["value"] == pytest.approx(expected[j], abs=1e-6)
        hits = int((table[table.prompt_index == j].predicted == g).sum())
        assert cond["fidelity"][g]["labels"]["value"] == pytest.approx(hits / 6)
        # one request per group: the fidelity table and the prompt table print one interval
        assert cond["fidelity"][g]["corrected"] == doc["by_prompt"][j]["conditional"]["corrected"]
    html = (out / "audit.html").read_text()
    assert "Conditioning fidelity" in html and (out / "grid_female.png").is_file()
    # the same audit again resumes from its shards: nothing is drawn twice
    code, _, _ = run(capsys, "audit", bundle, "--classifier", classifier3d, "--target",
                     "female=0.5,male=0.5", "--condition", "sex", "--n-per-prompt", 6,
                     "--batch-size", 3, "--steps", 3, "--n-boot", 200, "--out", out,
                     "--overwrite", "--condition-distribution", "female=0.5,male=0.5")  # fmt: skip
    again = json.loads((out / "audit.json").read_text())
    assert code == 0 and again["by_prompt"][0]["counts"] == doc["by_prompt"][0]["counts"]
    assert again["conditioning"]["distribution_source"].startswith("given")


def test_condition_option_errors(bundle, classifier3d, tmp_path, capsys):
    base = ["audit", bundle, "--classifier", classifier3d, "--target", "female=0.5,male=0.5",
            "--out", tmp_path / "a"]  # fmt: skip
    code, _, err = run(capsys, *base, "--condition", "age")
    assert_one_line_error(code, err, "--condition", "sex")
    code, _, err = run(capsys, *base, "--condition", "sex", "--prompt", "x")
    assert_one_line_error(code, err, "--condition", "prompt")
    code, _, err = run(capsys, *base, "--condition", "sex", "--condition-distribution",
                       "female=0.5,male=0.6")  # fmt: skip
    assert_one_line_error(code, err, "--condition-distribution", "summing to 1")
    assert not (tmp_path / "a").exists()


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_bundle_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    folder = _bundle(tmp_path / "evil")
    marker = tmp_path / "ran"
    with open(folder / "models" / "diffusion_model.pt", "wb") as f:
        pickle.dump({"weight": _RunsCode(marker)}, f)
    with pytest.raises(ModelError, match="weights_only") as info:
        load_pipeline(folder)
    assert info.value.param == "checkpoint" and not marker.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c["network_def"].update(_target_="os.system"), "builds only"),
        (lambda c: c["autoencoder_def"].update(channels="$[8, 8]"), "expression"),
        (lambda c: c["scheduler"].update(num_train_timesteps="@steps"), "not set"),
        (lambda c: c.pop("autoencoder_def"), "autoencoder_def"),
    ],
)
def test_bundle_configs_medfair_does_not_build(tmp_path, change, match):
    folder = _bundle(tmp_path / "b")
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=match) as info:
        load_pipeline(folder, placement=Placement(device="cpu", dtype="float32"))
    assert info.value.param == "checkpoint"


def test_references_and_missing_declarations(tmp_path):
    folder = _bundle(tmp_path / "b", declared={})
    with pytest.raises(ModelError, match="latent_shape"):
        load_pipeline(folder)
    # a UNet that takes the conditioning as channels, and no conditioning declared
    (folder / "configs" / "medfair.json").write_text(json.dumps({"latent_shape": [2, 8, 8, 8]}))
    with pytest.raises(ModelError, match="takes 4 input channels; the latent has 2"):
        load_pipeline(folder)
    bad = {**DECLARED, "conditioning": {**DECLARED["conditioning"], "default": [0.5]}}
    (folder / "configs" / "medfair.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="2 conditioning entries, 1 defaults"):
        load_pipeline(folder)
    # an unconditional model; its latent shape in inference.json, a reference to a literal
    plain = {**UNET, "in_channels": 2, "with_conditioning": False, "cross_attention_dim": None,
             "attention_levels": [False, False]}  # fmt: skip
    folder = _bundle(tmp_path / "u", declared={}, unet_def=plain)
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["latent_shape"] = [2, 8, 8, 8]
    config["steps"] = 1000
    config["scheduler"]["num_train_timesteps"] = "@steps"
    path.write_text(json.dumps(config))
    pipe = load_pipeline(folder)
    assert pipe.conditioning is None and pipe.scheduler.num_train_timesteps == 1000
    x = generate(pipe, "anything: an unconditional model ignores it", [1], steps=2, guidance=1)
    assert x.shape == (1, 1, 16, 16, 16)


def test_volume_reference_gives_3d_quality_and_volumes_are_saved(
    bundle, classifier3d, heads, tmp_path, capsys
):
    out = tmp_path / "q"
    code, _, _ = run(capsys, "audit", bundle, "--classifier", classifier3d, "--target",
                     "female=0.5,male=0.5", "--condition", "sex", "--n-per-prompt", 4,
                     "--steps", 2, "--n-boot", 50, "--reference", heads, "--save-images",
                     "--out", out)  # fmt: skip
    assert code == 0
    doc = json.loads((out / "audit.json").read_text())
    quality = doc["quality"]["by_group"]
    assert doc["config"]["features"]["name"] == "classifier-penultimate"
    # the reference is the t1 volumes the classifier was trained on, all 16 subjects
    assert sum(quality[g]["n_reference"] for g in ("female", "male")) == 16
    assert quality["overall"]["at_n"]["8"]["fid"]["mean"] >= 0
    table = pd.read_csv(out / "images.csv")
    import nibabel as nib

    first = nib.load(out / table.file[0])
    assert table.file[0].endswith(".nii.gz") and first.shape == (16, 16, 16)
    code, _, err = run(capsys, "audit", bundle, "--classifier", classifier3d, "--target",
                       "female=0.5,male=0.5", "--condition", "sex", "--reference", heads,
                       "--frd", "--out", tmp_path / "f")  # fmt: skip
    assert code == 2 and "--frd" in err


def test_demo_volumes_fast_runs_the_3d_path_and_reuses_its_stages(tmp_path, capsys):
    code, text, _ = run(capsys, "demo", "--volumes", "--fast", "--out", tmp_path / "d")
    assert code == 0 and "audit report" in text
    root = tmp_path / "d" / "volumes"
    record = json.loads((root / "demo.json").read_text())
    assert set(record["stages"]) == {"volumes", "classifier3d", "ldm", "audit3d"}
    training = json.loads((root / "models" / "brain-ldm" / "configs" / "training.json").read_text())
    assert training["finite"] and training["steps"] == {"autoencoder": 2, "diffusion": 2}
    # the bundle it wrote is one the audit reads: conditioned on sex, declared 50/50
    doc = json.loads((root / "audit" / "audit.json").read_text())
    assert doc["conditioning"]["distribution"] == {"female": 0.5, "male": 0.5}
    assert doc["quality"]["by_group"]["overall"]["n_reference"] > 0
    # the target is the held-out test subjects' sex mix
    meta = pd.read_csv(root / "data" / "metadata.csv")
    test = meta[(meta.split == "test") & (meta.sequence == "t1")]
    assert doc["target"]["male"] == pytest.approx((test.sex == "male").mean())
    code, text, _ = run(capsys, "demo", "--volumes", "--fast", "--out", tmp_path / "d")
    assert code == 0 and text.count("(reused)") == 4
