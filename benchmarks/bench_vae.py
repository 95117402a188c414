"""How the T2MedI autoencoder bends every classifier's reading, before any diffusion.

Real held-out slices (the demo's ``reader_set``, subjects no CNN classifier trained or was
evaluated on) are encoded and decoded by the demo's VAE, and by VAEs retrained on the demo's
corpus with more steps. Each classifier reads the real slices and their reconstructions: the
change in its male share and its mean |Δp| say how far decoding alone moves the reading, and the
out-of-support share (the audit's k-NN test in that classifier's feature space, against other
real slices) says how far the reconstructions lie from real images. A guide and an evaluator that
shift by different amounts disagree on any generated image by that difference, whatever the
remediation does: it is a floor under the transfer gap of ``bench_transfer.py``.

Writes ``benchmarks/vae.json`` and, with ``--render``, the table between the ``vae-table``
markers of ``benchmarks/RESULTS.md``::

    .venv/bin/python benchmarks/bench_vae.py reports/demo --steps 250,1000

A step count ``N:C`` trains the first ``T2IConfig.vae_crop_share`` of the N steps on random
C² crops (``T2IConfig.vae_crop``); ``--append`` adds the retrained rows to the record instead of
replacing it (the same demo folder's real slices and classifiers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _markers import splice

from medfair_audit.audit.readers import SUPPORT_K, SUPPORT_QUANTILE, knn_radius
from medfair_audit.config import Placement, T2IConfig
from medfair_audit.data.datasets import ImageFolderDataset
from medfair_audit.models.classifier import SubgroupClassifier
from medfair_audit.models.t2medi import _build_vae, _train_vae
from medfair_audit.training import Checkpointer, load_images, seed_everything

HERE = Path(__file__).resolve().parent
#: Classifiers of the demo read here: the evaluator, then the guides.
CLASSIFIERS = ("evaluator", "classifier", "classifier-b", "classifier-robust")
#: Real slices: half the support test's reference, half the slices read and reconstructed.
N_REAL = 1200


def _real(demo: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    data = ImageFolderDataset(demo / "data" / "reader_set", size=64)
    pick = np.random.default_rng(0).permutation(len(data))[:N_REAL]
    data.metadata = data.metadata.iloc[pick].reset_index(drop=True)
    images = load_images(data)
    male = np.array(data.labels("sex")) == "male"
    half = N_REAL // 2
    return images[:half], images[half:], male[half:]


def _male(clf: SubgroupClassifier, x: torch.Tensor) -> np.ndarray:
    return clf.predict_proba(x).numpy()[:, list(clf.groups).index("male")]


@torch.no_grad()
def _reconstruct(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = [
        vae.decode(vae.encode(x[i : i + 100]).latent_dist.mean).sample.clamp(-1, 1)
        for i in range(0, len(x), 100)
    ]
    return torch.cat(out)


def measure_vae(vae: torch.nn.Module, real: tuple, clfs: dict, refs: dict) -> dict:
    """One VAE: reconstruction error and each classifier's reading of real vs reconstructed."""
    _, test, male = real
    rec = _reconstruct(vae, test)
    row: dict = {"mse": float(((rec - test) ** 2).mean()), "readers": {}}
    for name, clf in clfs.items():
        p_real, p_rec = _male(clf, test), _male(clf, rec)
        feats, threshold = refs[name]
        radius = knn_radius(clf.features(rec).numpy(), feats, SUPPORT_K)
        row["readers"][name] = {
            "male_real": float((p_real > 0.5).mean()),
            "male_reconstructed": float((p_rec > 0.5).mean()),
            "mean_abs_dp": float(np.abs(p_rec - p_real).mean()),
            "accuracy_real": float(((p_real > 0.5) == male).mean()),
            "accuracy_reconstructed": float(((p_rec > 0.5) == male).mean()),
            "outside_support": float((radius > threshold).mean()),
        }
    return row


def _vae_label(steps: int, crop: int) -> str:
    cfg = T2IConfig(vae_steps=steps, vae_crop=crop)
    crops = f" (first {cfg.vae_crop_steps} on {crop}² crops)" if crop else ""
    return f"retrained, {steps} steps{crops}"


def measure(demo: Path, steps: list[tuple[int, int]], threads: int, *, append: bool) -> dict:
    from diffusers import AutoencoderKL

    torch.set_num_threads(threads)
    real = _real(demo)
    clfs = {n: SubgroupClassifier.from_pretrained(demo / "models" / n) for n in CLASSIFIERS}
    refs = {}
    for name, clf in clfs.items():
        feats = clf.features(real[0]).numpy()
        own = knn_radius(feats, feats, SUPPORT_K, leave_one_out=True)
        refs[name] = (feats, float(np.quantile(own, SUPPORT_QUANTILE)))
    rows = (
        []
        if append
        else [
            {
                "vae": f"{demo.name}'s T2MedI (models/t2medi/vae)",
                "steps": json.loads((demo / "models" / "t2medi" / "medfair.json").read_text())[
                    "config"
                ]["vae_steps"],
                "seconds": None,
                **measure_vae(
                    AutoencoderKL.from_pretrained(demo / "models" / "t2medi" / "vae").eval(),
                    real,
                    clfs,
                    refs,
                ),
            }
        ]
    )
    corpus = ImageFolderDataset(demo / "data" / "corpus", size=64)
    meta = corpus.metadata
    if "split" in meta.columns:
        corpus.metadata = meta[meta.split == "train"].reset_index(drop=True)
    images = load_images(corpus)
    for n, crop in steps:
        cfg = T2IConfig(vae_steps=n, vae_crop=crop, checkpoint_every=0)
        vae = _build_vae(cfg).float()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            _train_vae(vae, images, cfg, Checkpointer(tmp), seed_everything(cfg.seed), None,
                       Placement(device="cpu", dtype="float32"))  # fmt: skip
        seconds = time.perf_counter() - start
        rows.append(
            {
                "vae": _vae_label(n, crop),
                "steps": n,
                "vae_crop": crop,
                "seconds": seconds,
                "threads": threads,
                **measure_vae(vae.eval(), real, clfs, refs),
            }
        )
        print(f"{_vae_label(n, crop)}: done in {seconds:.0f} s", flush=True)
    return {"n_real": N_REAL // 2, "threads": threads, "classifiers": CLASSIFIERS, "rows": rows}


def table(doc: dict) -> str:
    """The RESULTS.md table: one row per VAE, per classifier the shift in its male share."""
    names = doc["classifiers"]
    head = ["VAE", "recon. MSE", *(f"{n}: male real → recon." for n in names)]
    head += ["outside support (evaluator / robust)", "train s"]
    lines = [
        f"{doc['n_real']} real held-out slices (`reader_set`), read before and after an "
        "encode–decode round trip; male share by each classifier's labels, mean |Δp| in brackets; "
        "VAE training time in seconds, on the CPU threads in brackets.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for r in doc["rows"]:
        cells = [r["vae"], f"{r['mse']:.4f}"]
        for n in names:
            m = r["readers"][n]
            shift = 100 * (m["male_reconstructed"] - m["male_real"])
            cells.append(
                f"{m['male_real']:.1%} → {m['male_reconstructed']:.1%} ({shift:+.1f} pp; "
                f"{m['mean_abs_dp']:.3f})".replace("-", "−")
            )
        ev, rb = r["readers"]["evaluator"], r["readers"]["classifier-robust"]
        cells.append(f"{ev['outside_support']:.0%} / {rb['outside_support']:.0%}")
        threads = r.get("threads", doc["threads"])  # rows before per-row threads: the record's
        cells.append("–" if r["seconds"] is None else f"{r['seconds']:.0f} ({threads} thr.)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spec(text: str) -> tuple[int, int]:
    """``N`` or ``N:C`` → (steps, crop side; 0 for whole images)."""
    steps, _, crop = text.strip().partition(":")
    return int(steps), int(crop or 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", nargs="?", type=Path, default=HERE.parent / "reports" / "demo")
    ap.add_argument(
        "--steps",
        default="250,1000",
        help="VAE training steps to retrain with; N:C trains the first "
        f"{T2IConfig().vae_crop_share:.0%}% on C² crops",
    )
    ap.add_argument("--append", action="store_true", help="add rows to benchmarks/vae.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="the table again from the JSON")
    args = ap.parse_args()
    if not args.render:
        if not (args.demo / "models" / "t2medi" / "vae").is_dir():
            raise SystemExit(f"error: {args.demo} holds no trained T2MedI; run 'make demo' first")
        steps = [_spec(s) for s in args.steps.split(",") if s.strip()]
        doc = measure(args.demo, steps, args.threads, append=args.append)
        if args.append:
            old = json.loads((HERE / "vae.json").read_text())
            if old["n_real"] != doc["n_real"] or old["classifiers"] != list(doc["classifiers"]):
                raise SystemExit("error: --append needs the record's slices and classifiers")
            doc = {**old, "rows": old["rows"] + doc["rows"]}
        (HERE / "vae.json").write_text(json.dumps(doc, indent=1) + "\n")
    doc = json.loads((HERE / "vae.json").read_text())
    text = table(doc)
    print(text)
    splice(HERE / "RESULTS.md", "vae-table", text)


if __name__ == "__main__":
    main()
