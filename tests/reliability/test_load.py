"""Load: a 20,000-image audit runs in flat memory and begins with the 2,000-image audit's images;
a 10,000-prompt plan leaves a bounded number of files.

Each audit runs in its own process (the tiny SD-1.5-shaped fixture, 1 denoising step), which
reports its peak resident memory and its current resident memory as generation passes 2,000 and
20,000 images: the first shows the audit as a whole costs no more at 10× the images, the second
that nothing accumulates per image while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from medfair_audit.models.sd_like import save_sd_like

CHILD = r"""
import json, os, resource, sys, torch
from pathlib import Path
from medfair_audit import AuditConfig, run_audit
from medfair_audit.generation import GenerationConfig
from medfair_audit.target import parse_target
torch.set_num_threads(1)
ckpt, clf, out, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
page = os.sysconf("SC_PAGE_SIZE") / 2**20
seen = {}
def progress(event):
    if event.stage == "generate" and event.completed in (2000, n):
        with open("/proc/self/statm") as f:
            seen[event.completed] = int(f.read().split()[1]) * page
cfg = AuditConfig(checkpoint=ckpt, classifier=clf, prompts=["Axial FLAIR MRI of the brain."],
    target=parse_target("male=0.58,female=0.42"), out=out, n_boot=200,
    generation=GenerationConfig(n_per_prompt=n, steps=1, guidance=1.0, shard_size=250))
run_audit(cfg, progress=progress)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mib": peak, "rss_mib": {str(k): v for k, v in seen.items()}}))
"""


def _audit(ckpt, classifier, out, n):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ckpt), str(classifier), str(out), str(n)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_twenty_thousand_images_in_flat_memory_starting_with_the_small_audit(tiny_models, tmp_path):
    ckpt = save_sd_like(tmp_path / "sd15", "sd15", "tiny")
    small = _audit(ckpt, tiny_models["classifier"], tmp_path / "small", 2000)
    large = _audit(ckpt, tiny_models["classifier"], tmp_path / "large", 20000)
    print(f"peak RSS 2,000 images {small['peak_mib']:.0f} MiB, 20,000 {large['peak_mib']:.0f} MiB; "
          f"RSS during the large audit {large['rss_mib']}")  # fmt: skip
    assert large["peak_mib"] <= 1.10 * small["peak_mib"], (small, large)
    during = large["rss_mib"]
    assert during["20000"] <= 1.10 * during["2000"], during  # nothing grows per image
    a = pd.read_csv(tmp_path / "small" / "images.csv")
    b = pd.read_csv(tmp_path / "large" / "images.csv")
    assert len(a) == 2000 and len(b) == 20000
    head = b[b.image_index < 2000].reset_index(drop=True)
    pd.testing.assert_frame_equal(head.drop(columns="file"), a.drop(columns="file"))
    assert json.loads((tmp_path / "large" / "audit.json").read_text())["n_images"] == 20000


def test_bootstrap_replicates_do_not_depend_on_the_memory_block(monkeypatch):
    """The bootstrap runs in blocks of bounded size; the replicates are the same whatever the
    block (so a memory budget never changes a result), up to the last bits of the matrix
    products' sums (BLAS sums a block in an order that depends on its shape)."""
    import numpy as np

    from medfair_audit.metrics import estimates
    from medfair_audit.metrics.estimates import HeldOut, estimate_shares

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    soft = np.eye(2)[labels] * 0.8 + 0.1
    held = HeldOut(labels=labels, probs=soft, predicted=soft.argmax(1))
    probs = rng.dirichlet([1, 1], size=3000)
    runs = []
    for block in (10_000_000, 250_000, 3_001):  # one block, a few, one replicate each
        monkeypatch.setattr(estimates, "BOOTSTRAP_BLOCK", block)
        runs.append(estimate_shares(probs, held, n_boot=40, seed=5).samples)
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for kind in runs[0]:
            np.testing.assert_allclose(other[kind], runs[0][kind], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_ten_thousand_prompts_leave_a_few_hundred_files_and_resume(tmp_path):
    """An audit's plan of 10,000 prompts (one shard each) through the generation engine, with a
    stand-in pipeline (each image a function of its seed): stopped after 6,000 shards and
    resumed, it draws only the 4,000 missing ones, ends with one pack per 79 shards (129 files
    where loose shards would be 20,000), never holds more than a few hundred files while it
    runs, and every image is the one its seed gives."""
    from medfair_audit.device import initial_latents
    from medfair_audit.generation import GenerationConfig
    from medfair_audit.generation.engine import (
        MAX_PACKS,
        iter_shards,
        pack_size,
        plan_shards,
        run_shards,
    )

    prompts = [f"Axial FLAIR MRI of the brain, case {i}." for i in range(10_000)]
    cfg = GenerationConfig(n_per_prompt=1)  # the default batch: one shard per prompt
    folder = tmp_path / "shards"
    calls, most = [], 0

    def draw(seeds):
        return initial_latents(seeds, (1, 8, 8)).tanh()

    def generate(prompt, seeds):
        if len(calls) == 6_000:
            raise KeyboardInterrupt
        calls.append(seeds[0])
        return draw(seeds)

    def analyse(images):
        return images.flatten(1)[:, :2].softmax(1), images.flatten(1)[:, :4]

    def count(event):
        nonlocal most
        if event.completed % 250 == 0:
            most = max(most, sum(1 for _ in folder.iterdir()))

    def run():
        return run_shards(
            generate, prompts, cfg, folder, analyse=analyse, settings={}, progress=count
        )

    with pytest.raises(KeyboardInterrupt):
        run()
    first = list(calls)
    calls.clear()
    plan = run()
    assert len(first) == 6_000 and len(calls) == 4_000 and not set(first) & set(calls)
    size = pack_size(len(plan))
    files = sorted(p.name for p in folder.iterdir())
    print(f"{len(plan)} shards in {len(files)} files (packs of {size}); {most} at most")
    assert size == 79 and len(files) == -(-10_000 // size) <= MAX_PACKS + 1
    assert all(f.startswith("pack-") for f in files)
    assert most <= MAX_PACKS + 2 * size + 4  # packs, plus the shards waiting for their pack
    assert [s.name for s in plan] == [s.name for s in plan_shards(10_000, cfg)]
    for shard in iter_shards(folder, plan):
        want = ((draw(shard["seeds"].tolist()).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        assert torch.equal(shard["images"], want)
