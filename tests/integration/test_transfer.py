"""Guidance that transfers and audits that say when a reading is bent.

Radiomics readers, robust training, expectation over transformations, ensembles of guiding
classifiers, and the audit's readers section (disagreement, out-of-support share).
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit import audit_schema
from medfair_audit.audit.readers import knn_radius, reader_comparison
from medfair_audit.config import ClassifierConfig, ClassifierJob, RemediationConfig
from medfair_audit.exceptions import ConfigError, ModelError
from medfair_audit.generation import GenerationConfig
from medfair_audit.metrics.estimates import HeldOut
from medfair_audit.models.classifier import SubgroupClassifier, train_classifier
from medfair_audit.models.radiomics import fit_logistic, radiomic_features
from medfair_audit.remediation import RemediationJob, remediate
from medfair_audit.remediation.transforms import eot_views, fold_views
from medfair_audit.target import parse_target
from tests.conftest import TINY_CLF

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma."]
TARGET = "male=0.58,female=0.42"


@pytest.fixture(scope="module")
def readers(tiny_models, small_phantom, tmp_path_factory):
    """Another seed and width of the ResNet, and a radiomics reader."""
    root = tmp_path_factory.mktemp("readers")
    train_classifier(
        ClassifierJob(
            data=small_phantom,
            out=root / "resnet-2",
            config=ClassifierConfig.tiny(seed=5, widths=(8, 8, 8, 16)),
        )
    )
    train_classifier(
        ClassifierJob(
            data=small_phantom,
            out=root / "radiomics",
            config=ClassifierConfig(architecture="radiomics"),
        )
    )
    return {"resnet-2": root / "resnet-2", "radiomics": root / "radiomics"}


# -- radiomics ----------------------------------------------------------------------------------


def test_logistic_fit_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x @ [1.0, -2.0, 0.5, 0, 0] + rng.normal(size=300) > 0).astype(int)
    l2 = 0.01
    w, b = fit_logistic(torch.tensor(x), torch.tensor(y), 2, l2=l2)
    # two-class softmax with an L2 penalty on both rows = binary logistic with half the penalty
    ref = LogisticRegression(C=2 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    assert np.allclose((w[1] - w[0]).numpy(), ref.coef_[0], atol=1e-4)
    assert float(b[1] - b[0]) == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_radiomic_features_are_differentiable_and_read_size():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    small = torch.where(xx**2 + yy**2 < 0.3**2, 0.5, -1.0)[None, None]
    large = torch.where(xx**2 + yy**2 < 0.6**2, 0.5, -1.0)[None, None]
    f = radiomic_features(torch.cat([small, large]))
    area, spread_u = f[:, 0], f[:, 1]
    assert area[1] / area[0] == pytest.approx(4, rel=0.1)  # area ∝ r²
    assert spread_u[1] / spread_u[0] == pytest.approx(2, rel=0.1)  # spread ∝ r
    x = small.clone().requires_grad_(True)
    radiomic_features(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_radiomics_classifier_round_trip(readers, small_phantom):
    from medfair_audit.data import ImageFolderDataset
    from medfair_audit.training import load_images

    clf = SubgroupClassifier.from_pretrained(readers["radiomics"])
    assert clf.architecture == "radiomics"
    meta = json.loads((readers["radiomics"] / "classifier.json").read_text())
    assert meta["architecture"] == "radiomics"
    assert [h["l2"] for h in meta["history"]] == [1e-4, 1e-3, 1e-2, 1e-1]
    images = load_images(ImageFolderDataset(small_phantom, size=64))[:8]
    p = clf.predict_proba(images)
    assert p.shape == (8, 2) and torch.allclose(p.sum(1), torch.ones(8))
    assert clf.features(images).shape == (8, clf.model.config.num_features)
    assert 0 <= clf.evaluation["balanced_accuracy"] <= 1


def test_unknown_architecture_is_a_one_line_error(readers, tmp_path):
    import shutil

    folder = tmp_path / "clf"
    shutil.copytree(readers["radiomics"], folder)
    meta = json.loads((folder / "classifier.json").read_text())
    (folder / "classifier.json").write_text(json.dumps({**meta, "architecture": "vit-huge"}))
    with pytest.raises(ModelError, match="architecture 'vit-huge'") as err:
        SubgroupClassifier.from_pretrained(folder)
    assert err.value.param == "classifier"


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"architecture": "vit"}, "architecture"),
        ({"robust": "fgsm"}, "robust"),
        ({"robust": "pgd", "architecture": "radiomics"}, "robust"),
        ({"robust_eps": 0.0}, "robust_eps"),
        ({"robust_steps": 0}, "robust_steps"),
    ],
)
def test_classifier_config_checks_the_new_fields(kw, param):
    with pytest.raises(ConfigError) as err:
        ClassifierConfig(**kw)
    assert err.value.param == param


# -- robust training ----------------------------------------------------------------------------


def test_pgd_finds_a_worse_case_inside_the_ball():
    from medfair_audit.config import Placement
    from medfair_audit.models.classifier import _build, _perturb

    torch.manual_seed(0)
    cfg = ClassifierConfig.tiny(robust="pgd", robust_eps=0.5, robust_steps=4)
    model = _build(cfg, ("female", "male")).eval()
    x = torch.rand(6, 1, 64, 64) * 2 - 1
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    w = torch.ones(2)
    adv = _perturb(model, x, y, cfg, w, torch.Generator().manual_seed(0), Placement())
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all() and norms.max() > 0.1
    assert adv.min() >= -1 and adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(pixel_values=adv).logits, y) > loss(model(pixel_values=x).logits, y)
    plain = ClassifierConfig.tiny()
    same = _perturb(model, x, y, plain, w, torch.Generator().manual_seed(0), Placement())
    assert same is x  # robust="none" leaves the batch (and the random stream) untouched


def test_robust_classifiers_train(small_phantom, tmp_path):
    for robust in ("noise", "pgd"):
        r = train_classifier(
            ClassifierJob(
                data=small_phantom,
                out=tmp_path / robust,
                config=ClassifierConfig.tiny(robust=robust, robust_steps=2, epochs=1),
            )
        )
        meta = json.loads((tmp_path / robust / "classifier.json").read_text())
        assert meta["config"]["robust"] == robust and 0 <= r.evaluation["accuracy"] <= 1


# -- expectation over transformations -----------------------------------------------------------


def test_eot_views_are_seeded_differentiable_and_fold_to_the_mean():
    x = (torch.rand(3, 1, 32, 32) * 2 - 1).requires_grad_(True)
    assert eot_views(x, 0, seed=1) is x
    a, b, c = eot_views(x, 4, seed=1), eot_views(x, 4, seed=1), eot_views(x, 4, seed=2)
    assert a.shape == (12, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    a.sum().backward()
    assert x.grad.abs().sum() > 0
    p = torch.softmax(torch.randn(12, 2), 1)
    folded = fold_views(p, 4)
    assert torch.allclose(folded[1], p[[1, 4, 7, 10]].mean(0))
    # a background-only image stays background through every view (rotations and shifts pad
    # with it)
    bg = -torch.ones(1, 1, 16, 16)
    assert torch.allclose(eot_views(bg, 3, seed=0), -torch.ones(3, 1, 16, 16), atol=0.2)


# -- audit: readers and support ------------------------------------------------------------------


def _audit(models, out, reference, readers=(), classifier=None, steps=2, **kw):
    return run_audit(
        AuditConfig(
            checkpoint=models["t2medi"],
            classifier=classifier or models["classifier"],
            prompts=PROMPTS,
            target=parse_target(TARGET),
            out=out,
            reference=reference,
            readers=readers,
            generation=GenerationConfig(n_per_prompt=8, seed=1, steps=steps, shard_size=3),
            n_boot=60,
            **kw,
        )
    )


def test_audit_readers_section(tiny_models, small_phantom, readers, tmp_path):
    same = tiny_models["classifier"]
    result = _audit(
        tiny_models,
        tmp_path / "a",
        small_phantom,
        readers=[same, readers["resnet-2"], readers["radiomics"]],
    )
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    jsonschema.validate(doc, audit_schema())
    section = doc["readers"]
    # named by their folders (the audit's own classifier's folder is "classifier" here)
    assert [r["name"] for r in section["readers"]] == ["classifier", "resnet-2", "radiomics"]
    assert [r["architecture"] for r in section["readers"]] == ["resnet", "resnet", "radiomics"]
    # the audit's own classifier as a reader: the same reading, no disagreement at all
    self_read = section["readers"][0]
    for g in ("female", "male"):
        assert self_read["disagreement"][g]["value"] == pytest.approx(0, abs=1e-6)
        if not self_read["disagreement"][g].get("censored"):
            lo, hi = self_read["disagreement"][g]["ci"]
            assert lo == pytest.approx(0, abs=0.1) and hi == pytest.approx(0, abs=0.1)
    for r in section["readers"]:
        assert sum(r["counts"].values()) == 8
        assert set(r["disagreement"]) == {"female", "male"}
    assert [s["space"] for s in section["support"]] == [
        "classifier",
        "classifier",
        "resnet-2",
        "radiomics",
    ]
    for s in section["support"]:
        assert s["reference_rate"] == pytest.approx(0.05) and s["reference_n"] == 60
        assert s["overall"]["n"] == 8 and 0 <= s["overall"]["share"] <= 1
        assert sum(e["n"] for e in s["by_group"].values()) == 8
    assert result.data["readers"] == section


def test_audit_support_without_readers_and_none_without_reference(
    tiny_models, small_phantom, tmp_path
):
    with_ref = _audit(tiny_models, tmp_path / "a", small_phantom).data
    assert with_ref["readers"]["readers"] == []
    assert [s["space"] for s in with_ref["readers"]["support"]] == ["classifier"]
    assert "readers" not in _audit(tiny_models, tmp_path / "b", None).data


def test_a_reader_of_another_attribute_is_refused(tiny_models, small_phantom, tmp_path):
    train_classifier(
        ClassifierJob(
            data=small_phantom,
            out=tmp_path / "age",
            config=ClassifierConfig.tiny(),
            attribute="age_band",
        )
    )
    with pytest.raises(ConfigError, match="reads age_band") as err:
        _audit(tiny_models, tmp_path / "a", small_phantom, readers=[tmp_path / "age"])
    assert err.value.param == "reader"


def test_knn_radius_matches_scipy():
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(1)
    ref, pts = rng.normal(size=(200, 7)), rng.normal(size=(50, 7))
    tree = cKDTree(ref)
    assert np.allclose(knn_radius(pts, ref, 5), tree.query(pts, k=5)[0][:, -1])
    own = knn_radius(ref, ref, 5, leave_one_out=True)
    assert np.allclose(own, tree.query(ref, k=6)[0][:, -1])


def _heldout(rng, n, acc):
    """Held-out outputs of a classifier with balanced accuracy about ``acc``."""
    labels = rng.integers(0, 2, n)
    correct = rng.random(n) < acc
    p1 = np.where(labels == 1, 1.0, 0.0)
    p1 = np.where(correct, 0.75 * p1 + 0.2, 0.75 * (1 - p1) + 0.2) + rng.uniform(-0.15, 0.05, n)
    return labels, np.stack([1 - p1, p1], 1)


def test_disagreement_interval_covers_zero_under_label_shift():
    """Two readers of one truth (label shift holds): the paired interval covers 0 at ~95%."""
    rng = np.random.default_rng(7)
    la, pa = _heldout(rng, 400, 0.85)
    lb, pb = _heldout(rng, 400, 0.8)
    held_a = HeldOut(labels=la, probs=pa, predicted=pa.argmax(1))
    held_b = HeldOut(labels=lb, probs=pb, predicted=pb.argmax(1))
    covered, reps = 0, 120
    for rep in range(reps):
        truth = (rng.random(300) < 0.4).astype(int)
        # each generated image is read as a held-out image of its true group would be
        a = np.stack([pa[rng.choice(np.flatnonzero(la == y))] for y in truth])
        b = np.stack([pb[rng.choice(np.flatnonzero(lb == y))] for y in truth])
        (entry,) = reader_comparison(
            a,
            held_a,
            [(b, held_b)],
            groups=["female", "male"],
            target=np.array([0.42, 0.58]),
            n_boot=300,
            confidence=0.95,
            seed=rep,
        )
        lo, hi = entry["disagreement"]["male"]["ci"]
        covered += lo <= 0 <= hi
    assert 0.88 <= covered / reps <= 1.0


# -- remediation: ensemble and EOT -------------------------------------------------------------


def test_remediation_with_an_ensemble_and_eot(tiny_models, readers, tmp_path):
    cfg = RemediationConfig.tiny(augment=2, align_to="corrected", lambda_clip=0.5)
    r = remediate(
        RemediationJob(
            checkpoint=tiny_models["t2medi"],
            classifier=tiny_models["classifier"],
            ensemble=[readers["resnet-2"], readers["radiomics"]],
            target=parse_target(TARGET),
            prompts=PROMPTS,
            out=tmp_path / "fair",
            config=cfg,
            image_encoders=[(tiny_models["clip"], 1.0)],
        )
    )
    data = json.loads((tmp_path / "fair" / "remediation.json").read_text())
    assert data["config"]["augment"] == 2
    assert data["ensemble"] == [str(readers["resnet-2"]), str(readers["radiomics"])]
    assert len(data["ensemble_sha256"]) == 2 and r.data["steps_done"] == 2
    assert all(np.isfinite(v) for v in data["curves"]["align"])
    # an audit with an ensemble member is not independent of the tuning
    audit = run_audit(
        AuditConfig(
            checkpoint=tmp_path / "fair",
            classifier=readers["resnet-2"],
            prompts=["Brain MRI, axial FLAIR slice: glioma."],
            target=parse_target(TARGET),
            out=tmp_path / "audit",
            generation=GenerationConfig(n_per_prompt=2, seed=3, steps=2, shard_size=2),
            n_boot=20,
        )
    )
    assert audit.data["config"]["remediation"]["same_classifier"] is True


def test_quick_audits_of_an_ensemble_read_every_guide(tiny_models, readers, tmp_path):
    """With an ensemble the quick audit's KL (what --keep best and --until-kl use) is the mean
    of each guide's own KL on the same images: each equals that guide's quick audit alone."""

    def run(name, classifier, ensemble):
        return remediate(
            RemediationJob(
                checkpoint=tiny_models["t2medi"],
                classifier=classifier,
                ensemble=ensemble,
                target=parse_target(TARGET),
                prompts=PROMPTS,
                out=tmp_path / name,
                config=RemediationConfig.tiny(
                    steps=1, audit_every=1, audit_images=3, align_to="corrected", lambda_clip=0
                ),
            )
        )

    members = [readers["resnet-2"], readers["radiomics"]]
    result = run("both", tiny_models["classifier"], members)
    # step 0: the untuned model, the same images in every run
    both = result.data["audits"][0]
    alone = [
        run(f"alone-{i}", c, []).data["audits"][0]
        for i, c in enumerate([tiny_models["classifier"], *members])
    ]
    assert both["step"] == 0 and "ensemble" not in alone[0]
    assert both["kl_guide"] == pytest.approx(alone[0]["kl"])
    assert both["share_corrected"] == pytest.approx(alone[0]["share_corrected"])
    for got, want in zip(both["ensemble"], alone[1:], strict=True):
        assert got["kl"] == pytest.approx(want["kl"])
        assert got["share"] == pytest.approx(want["share"])
    assert both["kl"] == pytest.approx(np.mean([a["kl"] for a in alone]))
    assert "(the mean of 3 guides' KLs)" in result.summary()[0]


def test_ensemble_needs_one_attribute_and_the_same_groups(tiny_models, small_phantom, tmp_path):
    train_classifier(
        ClassifierJob(
            data=small_phantom, out=tmp_path / "age", config=TINY_CLF, attribute="age_band"
        )
    )
    with pytest.raises(ConfigError, match="an ensemble reads one attribute") as err:
        remediate(
            RemediationJob(
                checkpoint=tiny_models["t2medi"],
                classifier=tiny_models["classifier"],
                ensemble=[tmp_path / "age"],
                target=parse_target(TARGET),
                prompts=PROMPTS,
                out=tmp_path / "fair",
                config=RemediationConfig.tiny(lambda_clip=0),
            )
        )
    assert err.value.param == "ensemble"


def test_ensemble_alignment_is_the_mean_of_each_classifiers_loss(tiny_models, readers):
    """batch_losses with an ensemble = mean of the members' KLs (EOT views shared)."""
    from medfair_audit.config import Placement
    from medfair_audit.models.attributes import ClassifierSet
    from medfair_audit.remediation.losses import alignment_kl
    from medfair_audit.remediation.step import batch_losses
    from medfair_audit.remediation.wiring import load_models

    cfg = RemediationConfig.tiny(augment=3, lambda_clip=0)
    m = load_models(
        tiny_models["t2medi"],
        tiny_models["classifier"],
        parse_target(TARGET),
        PROMPTS,
        [],
        cfg,
        Placement(device="cpu", dtype="float32"),
        False,
        [readers["resnet-2"]],
    )
    images = torch.rand(4, 1, 64, 64) * 2 - 1
    got = batch_losses(m, cfg, images, None, seed=11)["align"]
    views = eot_views(images, 3, seed=11)
    each = []
    for folder in (tiny_models["classifier"], readers["resnet-2"]):
        cset = ClassifierSet.load(folder)
        p = fold_views(cset.member_probs(views)[0], 3)
        each.append(alignment_kl(p, m.target))
    assert float(got.detach()) == pytest.approx(float(sum(each).detach() / 2), rel=1e-5)


def test_report_shows_readers_and_support(tiny_models, small_phantom, readers, tmp_path):
    from medfair_audit.reporting.compare import write_report

    _audit(tiny_models, tmp_path / "a", small_phantom, readers=[readers["radiomics"]])
    _audit(tiny_models, tmp_path / "b", None)  # no readers section: left out of the tables
    files = [tmp_path / "a" / "audit.json", tmp_path / "b" / "audit.json"]
    md = write_report(files, tmp_path / "r.md", labels=["with", "without"]).read_text()
    assert (
        "**Other readers of the same images.**" in md and "| with | radiomics | radiomics |" in md
    )
    readers_and_support = md.split("Other readers")[1].split("**Quality by group.**")[0]
    assert "| with | classifier | " in md and "| without |" not in readers_and_support
    html = write_report(files, tmp_path / "r.html", labels=["with", "without"]).read_text()
    assert 'id="readers"' in html and 'id="support"' in html
    tex = write_report(files, tmp_path / "r.tex", labels=["with", "without"]).read_text()
    assert "tab:medfair-readers" in tex and "tab:medfair-support" in tex


def test_radiomics_ignores_features_constant_in_training(small_phantom, tmp_path, monkeypatch):
    """Faint noise where every training image is background must not move the reading."""
    from medfair_audit.data import ImageFolderDataset
    from medfair_audit.models import radiomics
    from medfair_audit.training import load_images

    class WithThumbnail(radiomics.RadiomicsConfig):  # pixel-like features, corners included
        def __init__(self, **kw):
            super().__init__(**{**kw, "thumbnail": 8})

    monkeypatch.setattr(radiomics, "RadiomicsConfig", WithThumbnail)
    train_classifier(
        ClassifierJob(
            data=small_phantom,
            out=tmp_path / "r",
            config=ClassifierConfig(architecture="radiomics"),
        )
    )
    clf = SubgroupClassifier.from_pretrained(tmp_path / "r")
    assert clf.model.config.thumbnail == 8
    assert (clf.model.feature_std == 1e6).any()  # the always-background corners are off
    images = load_images(ImageFolderDataset(small_phantom, size=64))[:8]
    corner = torch.zeros_like(images)
    corner[..., :4, :4] = 0.02  # faint noise in a corner that is background everywhere
    assert (images[..., :4, :4] == -1).all()
    assert torch.allclose(clf.predict_proba(images), clf.predict_proba(images + corner), atol=1e-3)


# -- a toy where the true attribute is known ------------------------------------------------------

TOY = 32


def _toy_images(radius, texture):
    """Discs (the attribute: radius) with a fine checkerboard texture of some amplitude."""
    yy, xx = torch.meshgrid(
        torch.arange(TOY) - (TOY - 1) / 2, torch.arange(TOY) - (TOY - 1) / 2, indexing="ij"
    )
    check = ((torch.arange(TOY)[:, None] + torch.arange(TOY)[None]) % 2 * 2 - 1).float()
    disc = torch.sigmoid((radius[:, None, None] - (xx**2 + yy**2).sqrt()) / 0.5)
    return (disc * (1.2 + texture[:, None, None] * check) - 1).clamp(-1, 1)[:, None]


def _toy_classifier(spurious, seed):
    """A linear classifier of 'male' (large discs) trained on real toy images.

    ``spurious``: in its training data male discs also carry the texture and the sizes
    overlap, so it leans on the texture, a direction that is not the attribute; otherwise the
    texture is independent of sex and only size tells.
    """
    g = torch.Generator().manual_seed(seed)
    n = 2000
    y = (torch.rand(n, generator=g) < 0.5).long()
    female, male, width = (7.5, 8.5, 3.0) if spurious else (6.0, 10.0, 2.0)
    r = torch.where(y == 1, male, female) + (torch.rand(n, generator=g) - 0.5) * width
    t = 0.15 * (y.float() if spurious else (torch.rand(n, generator=g) < 0.5).float())
    x = (_toy_images(r, t) + 0.02 * torch.randn(n, 1, TOY, TOY, generator=g)).flatten(1)
    w = torch.zeros(2, TOY * TOY, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda img: torch.softmax(img.flatten(1) @ w.T + b, 1)


def _toy_remediation(guides, steps=300):
    """Tune a toy generator (a size knob and a texture knob) to 58% large discs.

    The generator draws ``radius = 8 + 2·tanh(2(ε + c))``: the true share of large discs is
    P(ε + c > 0), 16% at the start; the texture amplitude ``0.3·σ(τ)`` changes no size. The loss
    is the alignment KL of each guide, averaged (an ensemble, as ``--ensemble`` does).
    """
    from medfair_audit.remediation.losses import alignment_kl

    g = torch.Generator().manual_seed(5)
    c = torch.tensor(-1.0, requires_grad=True)
    tau = torch.tensor(-2.0, requires_grad=True)
    opt = torch.optim.SGD([c, tau], lr=0.5)
    target = torch.tensor([0.42, 0.58])
    for _ in range(steps):
        z = torch.randn(64, generator=g) + c
        x = _toy_images(8 + 2 * torch.tanh(2 * z), 0.3 * torch.sigmoid(tau).expand(64))
        loss = torch.stack([alignment_kl(m(x), target) for m in guides]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    truth = float((torch.randn(4000, generator=g) + c.detach() > 0).float().mean())
    z = torch.randn(512, generator=g) + c.detach()
    x = _toy_images(8 + 2 * torch.tanh(2 * z), 0.3 * torch.sigmoid(tau.detach()).expand(512))
    return truth, [float(m(x)[:, 1].mean()) for m in guides]


def test_toy_a_single_guide_is_fooled_and_an_ensemble_moves_the_attribute():
    leaning = _toy_classifier(spurious=True, seed=0)  # non-robust: leans on the texture
    other = _toy_classifier(spurious=False, seed=1)  # another training set: size only
    truth, (read,) = _toy_remediation([leaning])
    # the single guide reads the target, but the texture did most of it: the true share lags
    assert read == pytest.approx(0.58, abs=0.05)
    assert truth < 0.58 - 0.1
    truth, reads = _toy_remediation([leaning, other])
    assert truth == pytest.approx(0.58, abs=0.05)
    assert all(r == pytest.approx(0.58, abs=0.06) for r in reads)


# -- reading another audit's images ------------------------------------------------------------


def _stored(folder):
    from medfair_audit.generation.engine import ShardStore

    store = ShardStore(folder / "shards")
    try:
        return {n: store.load(n) for n in store.names()}
    finally:
        store.close()


def test_images_from_reads_the_same_images_with_another_classifier(
    tiny_models, small_phantom, readers, tmp_path
):
    other = readers["resnet-2"]
    first = _audit(tiny_models, tmp_path / "a", small_phantom, readers=[other])
    events = []
    second = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"],
            classifier=other,
            prompts=PROMPTS,
            target=parse_target(TARGET),
            out=tmp_path / "b",
            reference=small_phantom,
            generation=GenerationConfig(n_per_prompt=8, seed=1, steps=2, shard_size=3),
            n_boot=60,
            images_from=tmp_path / "a",
        ),
        progress=events.append,
    )
    a, b = _stored(tmp_path / "a"), _stored(tmp_path / "b")
    assert list(a) == list(b) and len(a) == 3
    for name in a:  # the very pixels, and the image stamp carried over
        assert torch.equal(a[name]["images"], b[name]["images"])
        assert a[name]["meta"]["images"] == b[name]["meta"]["images"]
        assert a[name]["meta"]["settings"] != b[name]["meta"]["settings"]  # another classifier
    # the second audit's classifier reads the stored 8-bit images, as the first audit's reader
    # of that classifier did: the same corrected share
    reading = next(r for r in first.data["readers"]["readers"] if r["name"] == "resnet-2")
    for g in ("female", "male"):
        assert second.data["proportions"][reading["reading"]][g]["value"] == pytest.approx(
            reading["proportions"][g]["value"], abs=1e-9
        )
    assert second.data["config"]["images_from"] == str(tmp_path / "a")
    assert second.data["config"]["classifier_sha256"] != first.data["config"]["classifier_sha256"]


def test_images_from_refuses_images_drawn_otherwise(tiny_models, small_phantom, tmp_path):
    _audit(tiny_models, tmp_path / "a", None)
    before = sorted(p.name for p in (tmp_path / "a").rglob("*"))
    with pytest.raises(ConfigError, match="other settings") as info:
        _audit(tiny_models, tmp_path / "b", None, steps=3, images_from=tmp_path / "a")
    assert info.value.param == "images_from"
    assert not (tmp_path / "b" / "audit.json").exists()
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == before  # nothing lost
    # more images per prompt than the other audit drew: other generation settings
    with pytest.raises(ConfigError, match="other settings"):
        run_audit(
            AuditConfig(
                checkpoint=tiny_models["t2medi"], classifier=tiny_models["classifier"],
                prompts=PROMPTS, target=parse_target(TARGET), out=tmp_path / "c",
                generation=GenerationConfig(n_per_prompt=11, seed=1, steps=2, shard_size=3),
                n_boot=60, images_from=tmp_path / "a",
            )
        )  # fmt: skip
    # an unfinished audit: a shard is not there yet
    shutil.copytree(tmp_path / "a", tmp_path / "cut")
    for part in (tmp_path / "cut" / "shards").glob("p0000-i0000003.*"):
        part.unlink()
    with pytest.raises(ConfigError, match="missing"):
        _audit(tiny_models, tmp_path / "c2", None, images_from=tmp_path / "cut")
    # shards of an audit that did not record how its images were drawn
    for meta in (tmp_path / "a" / "shards").glob("*.json"):
        doc = json.loads(meta.read_text())
        doc.pop("images")
        meta.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="does not record"):
        _audit(tiny_models, tmp_path / "d", None, images_from=tmp_path / "a")
    # running that audit again reuses its shards and records how they were drawn
    events = []
    rerun = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"], classifier=tiny_models["classifier"],
            prompts=PROMPTS, target=parse_target(TARGET), out=tmp_path / "a",
            generation=GenerationConfig(n_per_prompt=8, seed=1, steps=2, shard_size=3),
            n_boot=60, overwrite=True,
        ),
        progress=events.append,
    )  # fmt: skip
    assert all(e.info.get("resumed") for e in events if e.stage == "generate" and e.completed)
    read = _audit(tiny_models, tmp_path / "d", None, images_from=tmp_path / "a")
    # the same images, read from 8 bits instead of the generator's floats
    assert read.data["counts"] == rerun.data["counts"]
    p_read, p_gen = (r.data["proportions"]["probabilistic"]["male"]["value"] for r in (read, rerun))
    assert p_read == pytest.approx(p_gen, abs=2e-3)
    with pytest.raises(ConfigError, match="with shards/") as info:
        _audit(tiny_models, tmp_path / "e", None, images_from=tmp_path / "nowhere")
    assert info.value.param == "images_from"
    with pytest.raises(ConfigError, match="not --out itself"):
        _audit(tiny_models, tmp_path / "a", None, images_from=tmp_path / "a", overwrite=True)
