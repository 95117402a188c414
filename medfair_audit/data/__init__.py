"""Data: the brain-MR phantom and loaders for image folders, BraTS18 and ROCO layouts."""

from .._io import check_out
from .brats import BratsDataset, normalise_sex
from .datasets import ImageDataset, ImageFolderDataset, export_image_folder
from .phantom import (
    METADATA_COLUMNS,
    SEQUENCES,
    AnatomyModel,
    PhantomConfig,
    PhantomResult,
    build_phantom,
    render_phantom_slice,
)
from .roco import RocoDataset
from .volumes import (
    VolumeFolderDataset,
    build_phantom_volumes,
    import_brats_volumes,
    render_phantom_volume,
)

__all__ = [
    "METADATA_COLUMNS",
    "SEQUENCES",
    "AnatomyModel",
    "BratsDataset",
    "ImageDataset",
    "ImageFolderDataset",
    "PhantomConfig",
    "PhantomResult",
    "RocoDataset",
    "VolumeFolderDataset",
    "build_phantom",
    "build_phantom_volumes",
    "check_out",
    "export_image_folder",
    "import_brats_volumes",
    "normalise_sex",
    "render_phantom_slice",
    "render_phantom_volume",
]
