from __future__ import annotations

from pathlib import Path

import pytest

from medfair_audit.data import PhantomConfig, build_phantom
from medfair_audit.models.classifier import ClassifierConfig
from medfair_audit.models.clip import CLIPTrainConfig
from medfair_audit.models.t2medi import T2IConfig

TINY_CLIP = CLIPTrainConfig(
    width=32, layers=1, heads=2, projection_dim=16, epochs=1, batch_size=16, max_length=40
)
TINY_T2I = T2IConfig(
    vae_channels=(8, 8, 16),
    vae_steps=2,
    vae_batch_size=4,
    unet_channels=(16, 16, 32),
    unet_steps=4,
    batch_size=4,
    checkpoint_every=2,
    attention_head_dim=8,
)
TINY_CLF = ClassifierConfig(widths=(8, 8, 16, 16), epochs=2, patience=2, batch_size=16)


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
    train_clip(small_phantom, root / "clip", TINY_CLIP)
    train_t2i(small_phantom, root / "t2medi", TINY_T2I, clip=root / "clip")
    train_classifier(small_phantom, root / "classifier", TINY_CLF, attribute="sex")
    return {"clip": root / "clip", "t2medi": root / "t2medi", "classifier": root / "classifier"}
