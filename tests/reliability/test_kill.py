"""Nothing lost on a kill: an audit SIGKILLed at seeded points resumes to the uninterrupted result.

One output folder is killed again and again at seeded points (once a seeded number of shards is
on disk, after a seeded fraction of a second: during start-up, mid-batch or mid-write), each
re-run resuming from the shards the last one finished, then allowed to finish. Its
``audit.json`` and ``images.csv`` must equal, byte for byte, those of a run that was never
interrupted, and no re-run may treat a partial file as complete (a broken shard would fail to
load or differ in the result).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # about 5 minutes: run by `make test` after the fast tier

KILLS = 20


def _cmd(models, out):
    return [
        sys.executable, "-m", "medfair_cli.main", "audit", str(models["t2medi"]),
        "--classifier", str(models["classifier"]), "--target", "male=0.58,female=0.42",
        "--prompt", "Axial FLAIR MRI of the brain showing a glioma.",
        "--prompt", "Axial T1-weighted MRI of the brain.",
        "--n-per-prompt", "20", "--batch-size", "1", "--steps", "2", "--n-boot", "50",
        "--seed", "3", "--out", str(out),
    ]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd):
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_then_finish(cmd, finished, progress, targets, pauses):
    """Start ``cmd`` again and again, SIGKILL it once ``progress()`` reaches each target plus its
    pause, then let it finish; ``finished`` is the file written last. Returns the kills made."""
    killed = 0
    for target, pause in zip(targets, pauses, strict=True):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and progress() < target:
            time.sleep(0.02)
        time.sleep(pause)
        if proc.poll() is not None or finished.exists():  # done before its kill point
            proc.wait()
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        if finished.exists():  # killed after its last write: finished after all
            break
    if not finished.exists():
        _run(cmd)
    return killed


def _same_weights(a, b, names):
    from safetensors.torch import load_file

    for name in names:
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x), name


def test_an_audit_killed_at_20_seeded_points_resumes_to_the_same_result(tiny_models, tmp_path):
    _run(_cmd(tiny_models, tmp_path / "full"))
    rng = np.random.default_rng(20261128)
    out = tmp_path / "killed"
    shards = 40  # 2 prompts x 20 images, 1 per shard
    targets = np.sort(rng.choice(shards - 1, size=KILLS, replace=False))
    killed = _kill_then_finish(
        _cmd(tiny_models, out),
        out / "audit.json",
        lambda: len(list(out.glob("shards/*.json"))),
        targets,
        rng.uniform(0.0, 0.4, size=KILLS),
    )
    assert killed >= KILLS - 2  # (the last kill points may come after the run finished)
    for name in ("audit.json", "images.csv"):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    # every manifest has its data (a kill mid-write leaves only an unused temporary file)
    manifests = {p.stem for p in (out / "shards").glob("*.json")}
    assert manifests == {p.stem for p in (out / "shards").glob("*.safetensors")}
    assert len(manifests) == shards


def test_a_precision_audit_killed_at_seeded_points_resumes_to_the_same_stop(tiny_models, tmp_path):
    """``--precision``: the looks after a resume repeat those before it, to the same stop."""
    cmd = _cmd(tiny_models, tmp_path / "full")
    at = cmd.index("--n-per-prompt")
    cmd[at : at + 2] = ["--precision", "0.001", "--max-n-per-prompt", "10"]
    _run(cmd)
    rng = np.random.default_rng(20261202)
    out = tmp_path / "killed"
    cmd = [str(out) if c == str(tmp_path / "full") else c for c in cmd]
    shards = 20  # 2 prompts x at most 10 images, 1 per shard: a look after every 2 shards
    killed = _kill_then_finish(
        cmd,
        out / "audit.json",
        lambda: len(list(out.glob("shards/*.json"))),
        np.sort(rng.choice(shards - 1, size=8, replace=False)),
        rng.uniform(0.0, 0.4, size=8),
    )
    assert killed >= 6
    full = json.loads((tmp_path / "full" / "audit.json").read_text())
    assert full["sequential"]["stopped_by"] == "max_n_per_prompt"
    assert len(full["sequential"]["looks"]) == 10
    for name in ("audit.json", "images.csv"):
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def _remediate_cmd(models, out):
    return [
        sys.executable, "-m", "medfair_cli.main", "remediate", str(models["t2medi"]),
        "--classifier", str(models["classifier"]), "--target", "male=0.58,female=0.42",
        "--prompt", "Axial FLAIR MRI of the brain showing a glioma.",
        "--image-encoder", str(models["clip"]), "--steps", "6", "--checkpoint-every", "1",
        "--batch-per-prompt", "2", "--sampling-steps", "3", "--grad-steps", "2",
        "--lora-rank", "2", "--audit-images", "2", "--ema-decay", "0.9", "--seed", "5",
        "--resume", "--out", str(out),
    ]  # fmt: skip


def test_a_remediation_killed_at_20_seeded_points_resumes_to_the_same_weights(
    tiny_models, tmp_path
):
    _run(_remediate_cmd(tiny_models, tmp_path / "full"))
    rng = np.random.default_rng(20261129)
    out = tmp_path / "killed"
    log = out.with_name("killed.partial") / "log.jsonl"
    # kill points: once a seeded number of steps is logged, after a seeded pause; in rising order,
    # so that only the last few can come after the run finished, however fast the machine
    killed = _kill_then_finish(
        _remediate_cmd(tiny_models, out),
        out / "model_index.json",
        lambda: len(log.read_text().splitlines()) if log.is_file() else 0,
        np.sort(rng.integers(0, 6, size=KILLS)),
        rng.uniform(0, 0.3, size=KILLS),
    )
    assert killed >= KILLS // 2
    names = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")
    _same_weights(out, tmp_path / "full", names)
    curves = [
        json.loads((d / "remediation.json").read_text())["curves"] for d in (out, tmp_path / "full")
    ]
    assert curves[0] == curves[1]


def _steps_done(partial):
    """VAE plus UNet steps checkpointed so far (the newest ``step-N`` of each stage)."""
    return sum(
        max((int(p.name.split("-")[1]) for p in (partial / stage).glob("step-*")), default=0)
        for stage in ("vae", "unet")
    )


def _t2i_cmd(data, clip, out):
    return [
        sys.executable, "-m", "medfair_cli.main", "train", "t2i", "--data", str(data),
        "--clip", str(clip), "--vae-steps", "4", "--unet-steps", "8", "--batch-size", "4",
        "--unet-channels", "16,16,32", "--checkpoint-every", "1", "--seed", "2", "--resume",
        "--out", str(out),
    ]  # fmt: skip


def test_a_t2i_training_killed_at_20_seeded_points_resumes_to_the_same_weights(
    small_phantom, tiny_models, tmp_path
):
    _run(_t2i_cmd(small_phantom, tiny_models["clip"], tmp_path / "full"))
    rng = np.random.default_rng(20261130)
    out = tmp_path / "killed"
    partial = out.with_name("killed.partial")
    # kill points: once a seeded number of steps (4 VAE, then 8 UNet) is checkpointed, after a
    # short seeded pause; in rising order, so that only the last few can come after the run
    # finished, however fast the machine (unsorted, a fast machine finished at the first point)
    killed = _kill_then_finish(
        _t2i_cmd(small_phantom, tiny_models["clip"], out),
        out / "model_index.json",
        lambda: _steps_done(partial),
        np.sort(rng.integers(0, 12, size=KILLS)),
        rng.uniform(0, 0.15, size=KILLS),
    )
    assert killed >= KILLS // 2
    names = [f"{part}/diffusion_pytorch_model.safetensors" for part in ("unet", "vae")]
    _same_weights(out, tmp_path / "full", names)
