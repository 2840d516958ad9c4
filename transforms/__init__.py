"""MONAI dictionary transforms that turn a T1 scan into the hippocampal ROI the networks see, and back."""

from __future__ import annotations

from .augmentation import get_plane_augmentation
from .cleanup import KeepLargestComponent, KeepLargestComponentD, KeepLargestComponentd, KeepLargestComponentDict
from .chains import get_loading, get_postprocessing, get_preprocessing
from .context import SagittalContext, SagittalContextD, SagittalContextd, SagittalContextDict
from .histogram import (
    DEFAULT_PERCENTILES,
    HistogramStandardize,
    HistogramStandardized,
    HistogramStandardizeD,
    HistogramStandardizeDict,
    histogram_landmarks,
)
from .intensity import (
    ScaleIntensityRangePercentilesNonzero,
    ScaleIntensityRangePercentilesNonzeroD,
    ScaleIntensityRangePercentilesNonzerod,
    ScaleIntensityRangePercentilesNonzeroDict,
)
from .keys import IMAGE, LABEL, LEFT, PRED, RIGHT, SIDE, UNKNOWN_SIDE
from .loading import SitkDicomSeriesReader, scan_loader
from .mirror import MirrorSideD, MirrorSided, MirrorSideDict
from .roi import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    DEFAULT_ROI_SIZE,
    AUTO,
    ROI_MODES,
    WHOLE_BRAIN_MIN_EXTENT_MM,
    field_of_view_mm,
    HippocampalROICrop,
    HippocampalROICropD,
    HippocampalROICropd,
    HippocampalROICropDict,
    merge_sides,
    world_box_to_voxels,
)
from .sanity import SCAN_WARNINGS, CheckScand, CheckScanD, CheckScanDict, check_scan
from .slicing import VIEWS, as_plain_tensor, pad_plane, plane_inferer, sagittal_to_volume, view_axis, volume_to_sagittal

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
    "DEFAULT_PERCENTILES",
    "HistogramStandardize",
    "HistogramStandardized",
    "HistogramStandardizeD",
    "HistogramStandardizeDict",
    "histogram_landmarks",
    "ScaleIntensityRangePercentilesNonzero",
    "ScaleIntensityRangePercentilesNonzerod",
    "ScaleIntensityRangePercentilesNonzeroD",
    "ScaleIntensityRangePercentilesNonzeroDict",
    "AUTO",
    "ROI_MODES",
    "WHOLE_BRAIN_MIN_EXTENT_MM",
    "field_of_view_mm",
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
    "KeepLargestComponent",
    "KeepLargestComponentd",
    "KeepLargestComponentD",
    "KeepLargestComponentDict",
    "MirrorSided",
    "MirrorSideD",
    "MirrorSideDict",
    "SagittalContext",
    "SagittalContextd",
    "SagittalContextD",
    "SagittalContextDict",
    "plane_inferer",
    "VIEWS",
    "view_axis",
    "pad_plane",
    "volume_to_sagittal",
    "sagittal_to_volume",
    "as_plain_tensor",
    "SCAN_WARNINGS",
    "CheckScand",
    "CheckScanD",
    "CheckScanDict",
    "check_scan",
    "get_loading",
    "get_preprocessing",
    "get_postprocessing",
]

from .registration import (  # noqa: E402  (issue 12: localisation by registration to the MNI152 template)
    ETIV_MM3,
    ETIV_SCALE,
    MIN_QUALITY,
    MNI_FROM_SUBJECT,
    QUALITY_WARN,
    REGISTRATION_MODES,
    REGISTRATION_QUALITY,
    RegisterToTemplate,
    RegisterToTemplateD,
    RegisterToTemplated,
    RegisterToTemplateDict,
    RegistrationResult,
    brain_mask_on_grid,
    register_to_template,
)

__all__ += [
    "REGISTRATION_MODES",
    "REGISTRATION_QUALITY",
    "MIN_QUALITY",
    "QUALITY_WARN",
    "ETIV_SCALE",
    "ETIV_MM3",
    "MNI_FROM_SUBJECT",
    "RegistrationResult",
    "brain_mask_on_grid",
    "register_to_template",
    "RegisterToTemplate",
    "RegisterToTemplated",
    "RegisterToTemplateD",
    "RegisterToTemplateDict",
]
