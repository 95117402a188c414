from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from medfair_audit.config import ClassifierJob, Placement, T2IJob
from medfair_audit.data.datasets import ImageFolderDataset
from medfair_audit.exceptions import ConfigError, DataError, ModelError
from medfair_audit.metrics.functional import expected_calibration_error
from medfair_audit.models._loading import check_no_pickle
from medfair_audit.models.classifier import (
    SubgroupClassifier,
    _fit_temperature,
    evaluate_classifier,
    train_classifier,
)
from medfair_audit.models.clip import CLIP, encode_images
from medfair_audit.models.t2medi import (
    T2IConfig,
    _build_vae,
    _random_crops,
    _train_vae,
    load_pipeline,
    sample_images,
    train_t2i,
)
from medfair_audit.models.tokenizer import train_caption_tokenizer
from medfair_audit.training import Checkpointer, load_images
from tests.conftest import TINY_CLF, TINY_T2I


@pytest.fixture(scope="module")
def clip_dir(tiny_models):
    return tiny_models["clip"]


@pytest.fixture(scope="module")
def t2i_dir(tiny_models):
    return tiny_models["t2medi"]


def test_tokenizer_handles_any_text_and_round_trips(tmp_path, small_phantom):
    captions = pd.read_csv(small_phantom / "metadata.csv").caption.tolist()
    tok = train_caption_tokenizer(captions, tmp_path / "tok", vocab_size=300, max_length=40)
    from transformers import CLIPTokenizer

    again = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again.model_max_length == 40
    for text in (captions[0], "Xyzzy quux: a never-seen word 42!"):
        ids = again(text)["input_ids"]
        assert ids == tok(text)["input_ids"]
        assert ids[0] == again.bos_token_id and ids[-1] == again.eos_token_id
        assert again.unk_token_id not in ids[1:-1]  # every character is in the vocabulary
        decoded = again.decode(ids, skip_special_tokens=True).replace(" ", "")
        assert decoded == text.lower().replace(" ", "")


def test_clip_reloads_with_identical_embeddings(clip_dir, small_phantom):
    info = json.loads((clip_dir / "training.json").read_text())
    assert 0.0 <= info["heldout"]["recall_at_1"] <= 1.0
    meta = pd.read_csv(small_phantom / "metadata.csv")
    held = meta[meta.split == "val"].caption
    assert info["heldout"]["chance"] == pytest.approx(1 / held.nunique())
    model, tok = CLIP.from_pretrained(clip_dir)
    again, _ = CLIP.from_pretrained(clip_dir)
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    assert torch.equal(encode_images(model, x), encode_images(again, x))
    t = tok(["a glioma"], return_tensors="pt", padding="max_length", max_length=40)
    with torch.inference_mode():
        a = model.get_text_features(**t)
        b = again.get_text_features(**t)
    a = a if torch.is_tensor(a) else a.pooler_output
    b = b if torch.is_tensor(b) else b.pooler_output
    assert torch.equal(a, b)


def test_pipeline_is_a_standard_diffusers_folder(t2i_dir, clip_dir, small_phantom):
    from diffusers import DiffusionPipeline

    meta = pd.read_csv(small_phantom / "metadata.csv")
    info = json.loads((t2i_dir / "medfair.json").read_text())
    assert info["n_train"] == int((meta.split == "train").sum())  # the train split only

    index = json.loads((t2i_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"][1] == "DDIMScheduler"
    assert list(t2i_dir.rglob("*.safetensors")) and not list(t2i_dir.rglob("*.bin"))
    pipe = DiffusionPipeline.from_pretrained(str(t2i_dir))
    out = pipe(
        prompt=["Axial FLAIR MRI of the brain.", "Axial T2-weighted MRI."],
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=2,
        guidance_scale=2.0,
    )
    assert len(out.images) == 4 and out.images[0].size == (64, 64)
    # the text encoder is CLIP's text tower, unchanged
    clip, _ = CLIP.from_pretrained(clip_dir)
    ref = clip.text_model.state_dict()
    got = pipe.text_encoder.state_dict()
    assert len(got) == len(ref)
    for name, value in got.items():
        key = name if name in ref else name.removeprefix("text_model.")
        assert torch.equal(value, ref[key]), name


def test_sampling_is_reproducible_and_batch_size_invariant(t2i_dir):
    a = sample_images(
        load_pipeline(t2i_dir), "Axial FLAIR MRI.", n=3, seed=5, steps=2, batch_size=3
    )
    b = sample_images(
        load_pipeline(t2i_dir), "Axial FLAIR MRI.", n=3, seed=5, steps=2, batch_size=2
    )
    assert a.shape == (3, 1, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    c = sample_images(load_pipeline(t2i_dir), "Axial FLAIR MRI.", n=3, seed=6, steps=2)
    assert not torch.allclose(a, c)


def test_resume_gives_the_weights_of_an_uninterrupted_run(small_phantom, clip_dir, tmp_path):
    full = train_t2i(
        T2IJob(data=small_phantom, out=tmp_path / "full", config=TINY_T2I, clip=clip_dir)
    ).path

    class Stop(Exception):
        pass

    def interrupt(event):
        if event.stage == "train unet" and event.completed == 3:
            raise Stop

    with pytest.raises(Stop):
        train_t2i(
            T2IJob(data=small_phantom, out=tmp_path / "cut", config=TINY_T2I, clip=clip_dir),
            progress=interrupt,
        )
    assert not (tmp_path / "cut").exists()  # nothing half-written where the pipeline goes
    assert (tmp_path / "cut.partial" / "unet" / "step-0000002").is_dir()
    cut = train_t2i(
        T2IJob(
            data=small_phantom, out=tmp_path / "cut", config=TINY_T2I, clip=clip_dir, resume=True
        )
    ).path
    from safetensors.torch import load_file

    for part in ("unet", "vae"):
        a = load_file(next((full / part).glob("*.safetensors")))
        b = load_file(next((cut / part).glob("*.safetensors")))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (part, k)


def test_fine_tune_from_init_keeps_the_vae(small_phantom, t2i_dir, tmp_path):
    cfg = T2IConfig(vae_steps=0, unet_steps=2, batch_size=4, checkpoint_every=0)
    out = train_t2i(T2IJob(data=small_phantom, out=tmp_path / "ft", config=cfg, init=t2i_dir)).path
    from safetensors.torch import load_file

    a = load_file(next((t2i_dir / "vae").glob("*.safetensors")))
    b = load_file(next((out / "vae").glob("*.safetensors")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ua = load_file(next((t2i_dir / "unet").glob("*.safetensors")))
    ub = load_file(next((out / "unet").glob("*.safetensors")))
    assert any(not torch.equal(ua[k], ub[k]) for k in ua)


def test_model_folder_errors(tmp_path, t2i_dir):
    with pytest.raises(ModelError, match="not a diffusers pipeline"):
        load_pipeline(tmp_path)
    broken = tmp_path / "nounet"
    shutil.copytree(t2i_dir, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelError, match="no unet"):
        load_pipeline(broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(t2i_dir, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelError, match="pickle"):
        load_pipeline(pickled)
    assert check_no_pickle(pickled, trust_pickle=True) == pickled


def test_classifier_trains_calibrates_and_round_trips(small_phantom, tmp_path):
    r = train_classifier(
        ClassifierJob(data=small_phantom, out=tmp_path / "clf", config=TINY_CLF, attribute="sex")
    )
    ev = json.loads((tmp_path / "clf" / "evaluation.json").read_text())
    meta = pd.read_csv(small_phantom / "metadata.csv")
    n_test = int((meta.split == "test").sum())
    assert ev["n"] == n_test and np.sum(ev["confusion_matrix"]) == n_test
    assert ev["groups"] == ["female", "male"] and ev["split"] == "test"
    assert set(ev["by_group"]) == {"sex", "age_band", "tumour", "sex × age_band"}
    # The intersection table equals per-cell accuracy computed by hand from the held-out outputs.
    test = meta[meta.split == "test"].reset_index(drop=True)
    pred = np.argmax(ev["heldout"]["probs"], 1)
    hit = pred == np.array(ev["heldout"]["labels"])
    for (sex, band), rows in test.groupby(["sex", "age_band"]).groups.items():
        cell = ev["by_group"]["sex × age_band"][f"{sex}/{band}"]
        assert cell["count"] == len(rows)
        assert cell["accuracy"] == pytest.approx(hit[list(rows)].mean())
    assert ev == r.evaluation
    clf = SubgroupClassifier.from_pretrained(tmp_path / "clf")
    from medfair_audit.data import ImageFolderDataset

    x = load_images(ImageFolderDataset(small_phantom, split="test"))
    p = clf.predict_proba(x)
    assert torch.allclose(p.sum(1), torch.ones(len(x)))
    pred = p.argmax(1).numpy()
    y = (meta[meta.split == "test"].sex == "male").to_numpy().astype(int)
    assert ev["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    # three-channel and larger inputs are converted, not rejected
    big = torch.nn.functional.interpolate(x[:2], size=128).repeat(1, 3, 1, 1)
    assert clf.predict_proba(big).shape == (2, 2)
    assert clf.features(x[:2]).shape[0] == 2


def test_evaluation_matches_independent_computations():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    logits = rng.normal(0, 1, (400, 2))
    logits[np.arange(400), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    meta = pd.DataFrame(
        {"sex": np.where(y == 1, "male", "female"), "tumour": rng.integers(0, 2, 400)}
    )
    ev = evaluate_classifier(probs, y, ["female", "male"], meta)
    pred = probs.argmax(1)
    assert ev["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert ev["roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    cm = np.array(ev["confusion_rates"])
    assert np.allclose(cm.sum(1), 1)
    soft = np.array(ev["soft_confusion"])  # E[p | y], what PACC inverts
    assert soft[1] == pytest.approx(probs[y == 1].mean(0)) and np.allclose(soft.sum(1), 1)
    assert ev["heldout"]["labels"] == y.tolist()
    assert np.allclose(ev["heldout"]["probs"], probs, atol=5e-7)
    for t in ("0", "1"):
        sel = meta.tumour.astype(str) == t
        acc = (pred[sel] == y[sel]).mean()
        assert ev["by_group"]["tumour"][t]["accuracy"] == pytest.approx(acc)
        assert ev["by_group"]["tumour"][t]["selection_rate"] == pytest.approx(pred[sel].mean())
    # by sex: the male group's false negative rate is 1 - its accuracy
    male = ev["by_group"]["sex"]["male"]
    assert male["false_negative_rate"] == pytest.approx(1 - male["accuracy"])


def test_ece_by_hand_and_temperature_scaling_lowers_nll():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 1])
    # bins (15 equal): 0.9 -> alone, 0.8 -> alone, 0.7 -> alone, 0.6 -> alone
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.6)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (500,), generator=g)
    logits = torch.randn(500, 2, generator=g)
    logits[torch.arange(500), y] += 1.0
    logits = logits * 4  # overconfident
    t = _fit_temperature(logits, y)
    nll = torch.nn.functional.cross_entropy
    assert t > 1.5 and nll(logits / t, y) < nll(logits, y)


def test_classifier_input_errors(small_phantom, tmp_path):
    with pytest.raises(DataError, match="no column 'ethnicity'"):
        train_classifier(
            ClassifierJob(
                data=small_phantom, out=tmp_path / "c", config=TINY_CLF, attribute="ethnicity"
            )
        )
    with pytest.raises(DataError, match="outside the known groups"):
        train_classifier(
            ClassifierJob(
                data=small_phantom, out=tmp_path / "c", config=TINY_CLF, groups=["female", "other"]
            )
        )
    assert not (tmp_path / "c").exists()


def test_tokenizer_files_are_identical_across_processes(tmp_path, small_phantom):
    import subprocess
    import sys

    code = (
        "import sys, pandas as pd\n"
        "from medfair_audit.models.tokenizer import train_caption_tokenizer\n"
        f"caps = pd.read_csv({str(small_phantom / 'metadata.csv')!r}).caption.tolist()\n"
        "train_caption_tokenizer(caps, sys.argv[1], vocab_size=300)\n"
    )
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    for f in ("vocab.json", "merges.txt"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_splits_keep_each_subject_in_one_split():
    import pandas as pd

    from medfair_audit.models.classifier import _splits

    meta = pd.DataFrame({"subject": [f"s{i // 5}" for i in range(200)]})  # 5 slices a subject
    (train, val, test), unit = _splits(meta, seed=0)
    assert unit == "subject"
    subjects = [set(meta.subject[idx]) for idx in (train, val, test)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(200))
    leaking = meta.assign(split=["train", "val", "test", "train", "train"] * 40)
    with pytest.raises(DataError, match="more than one split"):
        _splits(leaking, seed=0)
    (_, _, _), unit = _splits(pd.DataFrame({"x": range(40)}), seed=0)
    assert unit == "image"


def test_a_small_cohort_whose_test_split_lacks_a_group_says_so_everywhere(
    small_phantom, tmp_path, tiny_models
):
    """A test split without a female image: the classifier warns naming the split and what to
    do, evaluation.json stays valid JSON (null with a reason, no NaN), and an audit with it says
    in one line why its shares cannot be corrected."""
    from medfair_audit import AuditConfig, run_audit
    from medfair_audit.generation import GenerationConfig
    from medfair_audit.target import parse_target

    data = tmp_path / "cohort"
    shutil.copytree(small_phantom, data)
    meta = pd.read_csv(data / "metadata.csv")
    test = meta.split == "test"
    meta.loc[test & (meta.sex == "female"), "split"] = "train"  # the test split: males only
    assert (meta.split == "test").any() and set(meta[meta.split == "test"].sex) == {"male"}
    meta.to_csv(data / "metadata.csv", index=False)
    result = train_classifier(
        ClassifierJob(data=data, out=tmp_path / "clf", config=TINY_CLF, attribute="sex")
    )

    def strict(text):
        def refuse(name):
            raise ValueError(f"{name} is not JSON")

        return json.loads(text, parse_constant=refuse)

    ev = strict((tmp_path / "clf" / "evaluation.json").read_text())
    (warning,) = [w for w in ev["warnings"] if "'test' split" in w]
    assert "no 'female' image" in warning and "'split' column" in warning
    assert any(line.startswith("warning: the 'test' split") for line in result.summary())
    assert ev["balanced_accuracy"] is None or np.isfinite(ev["balanced_accuracy"])
    assert all(v for v in ev.get("null_reasons", {}).values())
    audit = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"], classifier=tmp_path / "clf",
            prompts=["Axial FLAIR MRI of the brain."], target=parse_target("male=0.58,female=0.42"),
            out=tmp_path / "a", generation=GenerationConfig(n_per_prompt=4, steps=2, shard_size=4),
            n_boot=20,
        )
    )  # fmt: skip
    (why,) = [w for w in audit.data["warnings"] if "not identifiable" in w]
    assert "'test' split held no 'female' image" in why and "\n" not in why


def test_fine_tuning_from_init_moves_its_vae_and_text_encoder_to_the_training_device(
    small_phantom, t2i_dir, tmp_path, monkeypatch
):
    """With --init and no VAE training, the VAE (which encodes every training image) and the
    text encoder (which encodes every caption) are moved to the placement's device, not left on
    the CPU where the pipeline was loaded. Spied on the CPU, with the device spelt ``cpu:0``
    so that the moves to it stand apart from loading and saving (plain ``cpu``)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from medfair_audit.config import Placement

    moved = []
    for cls in (AutoencoderKL, CLIPTextModel):
        real = cls.to

        def spy(self, *args, _real=real, _name=cls.__name__, **kw):
            moved.append((_name, args[0] if args else kw.get("device")))
            return _real(self, *args, **kw)

        monkeypatch.setattr(cls, "to", spy)
    where = Placement(device=torch.device("cpu", 0), dtype="float32")
    cfg = T2IConfig(vae_steps=0, unet_steps=1, batch_size=4, checkpoint_every=0)
    train_t2i(
        T2IJob(data=small_phantom, out=tmp_path / "ft", config=cfg, init=t2i_dir, placement=where)
    )
    to_device = {name for name, d in moved if str(d) == "cpu:0"}
    assert to_device == {"AutoencoderKL", "CLIPTextModel"}, moved


def test_vae_trains_on_random_crops_first_then_on_whole_images(small_phantom, tmp_path):
    # each crop is the window of its image at offsets drawn from the generator, edges included
    x = torch.arange(6 * 8 * 8, dtype=torch.float32).reshape(6, 1, 8, 8)
    crops = _random_crops(x, 4, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    top, left = torch.randint(5, (6,), generator=g), torch.randint(5, (6,), generator=g)
    assert crops.shape == (6, 1, 4, 4)
    for i in range(6):
        t, j = int(top[i]), int(left[i])
        assert torch.equal(crops[i], x[i, :, t : t + 4, j : j + 4])
    many = _random_crops(x.repeat(50, 1, 1, 1), 4, torch.Generator().manual_seed(2))
    corners = {(int(c[0, 0, 0]) % 64) for c in many}  # top-left pixel index within its image
    assert {0, 4, 32, 36} <= corners  # every extreme placement occurs

    cfg = T2IConfig.tiny(vae_steps=5, vae_crop=32, vae_crop_share=0.6)
    assert cfg.vae_crop_steps == 3 and T2IConfig().vae_crop_steps == 0
    vae = _build_vae(cfg)
    seen: list[tuple[int, ...]] = []
    vae.encoder.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    images = load_images(ImageFolderDataset(small_phantom, size=64))
    _train_vae(vae, images, cfg, Checkpointer(tmp_path), torch.Generator().manual_seed(0), None,
               Placement(device="cpu", dtype="float32"))  # fmt: skip
    assert seen == [(32, 32)] * 3 + [(64, 64)] * 2
    for bad, param in (
        ({"vae_crop": 30}, "vae_crop"),
        ({"vae_crop": 64}, "vae_crop"),
        ({"vae_crop": 4}, "vae_crop"),
        ({"vae_crop_share": 1.5}, "vae_crop_share"),
    ):
        with pytest.raises(ConfigError) as err:
            T2IConfig(**bad)
        assert err.value.param == param
