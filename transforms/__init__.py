"""MONAI dictionary transforms that turn a T1 scan into the hippocampal ROI the networks see, and back."""

from __future__ import annotations

from hippogan.transforms.augmentation import get_plane_augmentation
from hippogan.transforms.chains import get_loading, get_postprocessing, get_preprocessing
from hippogan.transforms.context import SagittalContext, SagittalContextD, SagittalContextd, SagittalContextDict
from hippogan.transforms.intensity import (
    ScaleIntensityRangePercentilesNonzero,
    ScaleIntensityRangePercentilesNonzeroD,
    ScaleIntensityRangePercentilesNonzerod,
    ScaleIntensityRangePercentilesNonzeroDict,
)
from hippogan.transforms.keys import IMAGE, LABEL, LEFT, PRED, RIGHT, SIDE, UNKNOWN_SIDE
from hippogan.transforms.loading import SitkDicomSeriesReader, scan_loader
from hippogan.transforms.mirror import MirrorSideD, MirrorSided, MirrorSideDict
from hippogan.transforms.roi import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    DEFAULT_ROI_SIZE,
    ROI_MODES,
    HippocampalROICrop,
    HippocampalROICropD,
    HippocampalROICropd,
    HippocampalROICropDict,
    merge_sides,
    world_box_to_voxels,
)
from hippogan.transforms.slicing import sagittal_inferer, sagittal_slices, sagittal_to_volume, volume_to_sagittal

__all__ = [
    "IMAGE",
    "LABEL",
    "PRED",
    "SIDE",
    "LEFT",
    "RIGHT",
    "UNKNOWN_SIDE",
    "SitkDicomSeriesReader",
    "get_plane_augmentation",
    "scan_loader",
    "ScaleIntensityRangePercentilesNonzero",
    "ScaleIntensityRangePercentilesNonzerod",
    "ScaleIntensityRangePercentilesNonzeroD",
    "ScaleIntensityRangePercentilesNonzeroDict",
    "ROI_MODES",
    "DEFAULT_ROI_SIZE",
    "DEFAULT_BOX_SIZE",
    "DEFAULT_LEFT_CENTER",
    "DEFAULT_RIGHT_CENTER",
    "world_box_to_voxels",
    "HippocampalROICrop",
    "HippocampalROICropd",
    "HippocampalROICropD",
    "HippocampalROICropDict",
    "merge_sides",
    "MirrorSided",
    "MirrorSideD",
    "MirrorSideDict",
    "SagittalContext",
    "SagittalContextd",
    "SagittalContextD",
    "SagittalContextDict",
    "sagittal_inferer",
    "volume_to_sagittal",
    "sagittal_to_volume",
    "sagittal_slices",
    "get_loading",
    "get_preprocessing",
    "get_postprocessing",
]
