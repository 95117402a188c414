from __future__ import annotations

from pathlib import Path

import pytest

from medfair_audit.config import (
    ClassifierConfig,
    ClassifierJob,
    CLIPJob,
    CLIPTrainConfig,
    T2IConfig,
    T2IJob,
)
from medfair_audit.data import PhantomConfig, build_phantom

# The library's presets, named once for the tests that share them.
TINY_CLIP = CLIPTrainConfig.tiny()
TINY_T2I = T2IConfig.tiny()
TINY_CLF = ClassifierConfig.tiny()


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-image phantom data set shared by read-only tests."""
    out = tmp_path_factory.mktemp("phantom") / "data"
    build_phantom(out, PhantomConfig(n=60, seed=3, workers=1))
    return out


@pytest.fixture(scope="session")
def tiny_models(small_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLIP, T2MedI and classifier trained on the small phantom (seconds, not quality)."""
    from medfair_audit.models.classifier import train_classifier
    from medfair_audit.models.clip import train_clip
    from medfair_audit.models.t2medi import train_t2i

    root = tmp_path_factory.mktemp("models")
    train_clip(CLIPJob(data=small_phantom, out=root / "clip", config=TINY_CLIP))
    train_t2i(T2IJob(data=small_phantom, out=root / "t2medi", config=TINY_T2I, clip=root / "clip"))
    train_classifier(
        ClassifierJob(data=small_phantom, out=root / "classifier", config=TINY_CLF, attribute="sex")
    )
    return {"clip": root / "clip", "t2medi": root / "t2medi", "classifier": root / "classifier"}
