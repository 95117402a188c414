"""medfair: measure and repair demographic bias in text-to-medical-image diffusion models.

The library behind the ``medfair`` command. Each stage is a function taking a frozen,
keyword-only config; errors caused by user input are :class:`MedfairError`.
"""

from importlib.metadata import PackageNotFoundError, version

from .data import (
    AnatomyModel,
    BratsDataset,
    ImageDataset,
    ImageFolderDataset,
    PhantomConfig,
    RocoDataset,
    build_phantom,
    export_image_folder,
)
from .exceptions import ConfigError, DataError, MedfairError, ModelError
from .progress import ProgressCallback, ProgressEvent
from .target import Target, parse_target, target_from_labels

try:
    __version__ = version("medfair")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = [
    "AnatomyModel",
    "BratsDataset",
    "ConfigError",
    "DataError",
    "ImageDataset",
    "ImageFolderDataset",
    "MedfairError",
    "ModelError",
    "PhantomConfig",
    "ProgressCallback",
    "ProgressEvent",
    "RocoDataset",
    "Target",
    "__version__",
    "build_phantom",
    "export_image_folder",
    "parse_target",
    "target_from_labels",
]
