"""medfair: measure and repair demographic bias in text-to-medical-image diffusion models.

The library behind the ``medfair`` command. Each stage is a function taking a frozen,
keyword-only config; errors caused by user input are :class:`MedfairError`.
"""

from importlib.metadata import PackageNotFoundError, version

from .audit import AuditConfig, AuditResult, run_audit
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

from .generation import GenerationConfig

audit = run_audit  # the library call behind `medfair audit`

__all__ = [
    "AnatomyModel",
    "AuditConfig",
    "AuditResult",
    "BratsDataset",
    "ConfigError",
    "DataError",
    "GenerationConfig",
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
    "audit",
    "build_phantom",
    "export_image_folder",
    "parse_target",
    "run_audit",
    "target_from_labels",
]
