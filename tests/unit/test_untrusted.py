"""Untrusted weight files: pickle is refused unless trusted, and trusting it keeps safetensors."""

from __future__ import annotations

import pickle
import shutil

import pytest

from medfair_audit.exceptions import ModelError
from medfair_audit.models.classifier import SubgroupClassifier
from medfair_audit.models.pipelines import load_pipeline


class _Payload:
    """Unpickling this writes a marker file: proof that loading ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious(path, marker):
    path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))


def test_a_malicious_pickle_is_refused_without_running(tiny_models, tmp_path):
    folder = tmp_path / "clf"
    shutil.copytree(tiny_models["classifier"], folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _malicious(folder / "pytorch_model.bin", marker)
    with pytest.raises(ModelError, match=r"pickle file .*--trust-pickle") as err:
        SubgroupClassifier.from_pretrained(folder)
    assert err.value.param == "classifier" and not marker.exists()


@pytest.mark.parametrize("kind", ["classifier", "t2medi"])
def test_trusting_pickle_still_loads_safetensors_first(kind, tiny_models, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(tiny_models[kind], folder)
    marker = tmp_path / "pwned"
    part = folder if kind == "classifier" else folder / "unet"
    name = "pytorch_model.bin" if kind == "classifier" else "diffusion_pytorch_model.bin"
    _malicious(part / name, marker)  # a pickle beside the safetensors weights
    if kind == "classifier":
        clf = SubgroupClassifier.from_pretrained(folder, trust_pickle=True)
        assert clf.groups == ("female", "male")
    else:
        assert load_pipeline(folder, trust_pickle=True).unet is not None
    assert not marker.exists()  # the safetensors file was read, the pickle never opened


def test_a_successful_trust_pickle_audit_prints_no_library_error(tiny_models, tmp_path):
    """A pipeline saved with pickle weights only: diffusers logs its safetensors fallback as an
    error; the run succeeds, so stderr must not say "error"."""
    import subprocess
    import sys

    from medfair_audit.models.sd_like import build_sd_like

    build_sd_like("sd15", "tiny").save_pretrained(tmp_path / "pk", safe_serialization=False)
    assert not list((tmp_path / "pk" / "unet").glob("*.safetensors"))
    done = subprocess.run(
        [sys.executable, "-m", "medfair_cli.main", "audit", str(tmp_path / "pk"),
         "--trust-pickle", "--classifier", str(tiny_models["classifier"]),
         "--target", "male=0.58,female=0.42", "--prompt", "Axial FLAIR MRI of the brain.",
         "--n-per-prompt", "2", "--steps", "2", "--out", str(tmp_path / "a")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    assert (tmp_path / "a" / "audit.json").is_file()
