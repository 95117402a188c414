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
from .exceptions import ConfigError, DataError, MedfairError, ModelError, ResourceError
from .progress import ProgressCallback, ProgressEvent
from .target import Target, parse_target, target_from_labels

try:
    __version__ = version("medfair")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

# The audit pulls in torch, diffusers and scipy; resolve its names on first use so that
# `import medfair_audit` (and so every `medfair` command, `--help` included) starts fast.
_LAZY = {
    "AuditConfig": ("config", "AuditConfig"),
    "AuditResult": ("audit", "AuditResult"),
    "read_prompts": ("audit", "read_prompts"),
    "run_audit": ("audit", "run_audit"),
    "GenerationConfig": ("config", "GenerationConfig"),
    "Placement": ("config", "Placement"),
    "Speed": ("config", "Speed"),
    "RemediationJob": ("config", "RemediationJob"),
    "RemediationConfig": ("remediation", "RemediationConfig"),
    "RemediationResult": ("remediation", "RemediationResult"),
    "remediate": ("remediation", "remediate"),
    "is_main_process": ("_dist", "is_main_process"),
    "num_processes": ("_dist", "num_processes"),
}


def __getattr__(name: str) -> object:
    """Import the audit's names when first used (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'medfair_audit' has no attribute '{name}'")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


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
    "Placement",
    "ProgressCallback",
    "ProgressEvent",
    "RemediationConfig",
    "RemediationJob",
    "RemediationResult",
    "ResourceError",
    "RocoDataset",
    "Speed",
    "Target",
    "__version__",
    "build_phantom",
    "export_image_folder",
    "is_main_process",
    "num_processes",
    "parse_target",
    "read_prompts",
    "remediate",
    "run_audit",
    "target_from_labels",
]
