"""Loading a scan: a NIfTI file (MONAI's ``NibabelReader``) or a DICOM series folder (SimpleITK, read here).

MONAI's own DICOM readers need ``itk`` or ``pydicom``, neither of which this project depends on;
:class:`SitkDicomSeriesReader` implements MONAI's :class:`~monai.data.ImageReader` interface on top of
SimpleITK so that :class:`~monai.transforms.LoadImaged` reads a series folder like any other file.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SitkDicomSeriesReader", "scan_loader"]

logger = logging.getLogger(__name__)

_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
_NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"
_NVIMGCODEC_NOTICE = "nvImageCodec is not available; skipping pydicom decoder plugin registration"


class SitkDicomSeriesReader(ImageReader):
    """Read one DICOM series from a folder with SimpleITK (imported lazily, on first read).

    The array comes back in ITK index order ``(X, Y, Z)`` (i, j, k: columns, rows, slices), and the
    affine is converted from DICOM's LPS to RAS, as MONAI's ``ITKReader`` does, so it is consistent
    with ``NibabelReader`` and ``Orientationd(axcodes="RAS")`` can follow.

    Args:
        series_uid: the SeriesInstanceUID to read when a folder holds several series; ``None`` reads
            the first one SimpleITK lists (and logs a warning when there are several).
    """

    def __init__(self, series_uid: str | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """Return True when every given path is a folder (a DICOM series is read from its folder)."""
        return all(Path(f).is_dir() for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> Any:
        """Read the series in each folder; returns one ``SimpleITK.Image`` (or a list for several folders).

        Raises:
            ValueError: a path is not a folder, holds no DICOM series, or lacks ``series_uid``.
        """
        import SimpleITK as sitk

        images = []
        for folder in ensure_tuple(data):
            folder = str(folder)
            if not Path(folder).is_dir():
                raise ValueError(f"DICOM series reader: {folder} is not a folder; expected a folder of one series.")
            uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
            if not uids:
                raise ValueError(f"DICOM series reader: no DICOM series in folder {folder}.")
            if self.series_uid is not None and self.series_uid not in uids:
                raise ValueError(f"DICOM series reader: series {self.series_uid} not in {folder}; found {uids}.")
            if self.series_uid is None and len(uids) > 1:
                logger.warning("folder %s holds %d DICOM series; reading the first, %s", folder, len(uids), uids[0])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, self.series_uid or uids[0]))
            images.append(reader.Execute())
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the ``(X, Y, Z)`` voxel array (several series stacked on a first channel axis) and its metadata.

        The metadata holds ``affine`` / ``original_affine`` (4x4, RAS, mm), ``spatial_shape`` (voxels),
        ``spacing`` (mm) and ``original_channel_dim`` (``nan``: no channel axis), as MONAI's readers do.
        """
        import SimpleITK as sitk

        arrays, meta = [], {}
        for image in img if isinstance(img, (list, tuple)) else [img]:
            if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
                raise ValueError(
                    f"DICOM series reader: expected a 3D single-component series, got {image.GetDimension()}D "
                    f"with {image.GetNumberOfComponentsPerPixel()} components."
                )
            arrays.append(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
            spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
            affine = np.eye(4)
            affine[:3, :3] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
            affine[:3, 3] = image.GetOrigin()
            affine = orientation_ras_lps(affine)
            meta = {
                "spacing": spacing,
                MetaKeys.ORIGINAL_AFFINE: affine,
                MetaKeys.AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(image.GetSize()),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(arrays) == 1 else 0,
            }
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        return data, meta


def scan_loader(keys: Sequence[str] | str, allow_missing_keys: bool = False) -> LoadImaged:
    """Return a :class:`~monai.transforms.LoadImaged` that reads NIfTI files and DICOM series folders.

    MONAI picks the reader by the path: a folder goes to :class:`SitkDicomSeriesReader` (registered last,
    so tried first), a ``.nii``/``.nii.gz`` file to MONAI's ``NibabelReader``. Each key then holds a
    ``MetaTensor`` of shape ``(X, Y, Z)`` (no channel axis yet), ``float32``, with its affine in RAS (mm).

    Args:
        keys: the data keys holding paths (e.g. ``("image", "label")``).
        allow_missing_keys: do not raise when a key is absent.
    """
    # LoadImage always instantiates all of MONAI's default readers (an explicit ``reader=`` only adds to them), and
    # NvImgCodecPydicomReader warns and logs when it finds no GPU decoder. It never reads our scans (its
    # verify_suffix is False without nvImageCodec; DICOM folders go to SitkDicomSeriesReader), so drop exactly
    # that warning and that log record while the loader is built.
    plugin_logger = logging.getLogger(_NVIMGCODEC_LOGGER)
    plugin_logger.addFilter(_drop_nvimgcodec_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NVIMGCODEC_WARNING, category=UserWarning)
            loader = LoadImaged(keys, image_only=True, allow_missing_keys=allow_missing_keys)
    finally:
        plugin_logger.removeFilter(_drop_nvimgcodec_notice)
    loader.register(SitkDicomSeriesReader())
    return loader


def _drop_nvimgcodec_notice(record: logging.LogRecord) -> bool:
    """Logging filter: False (drop) for MONAI's "nvImageCodec is not available" record only."""
    return _NVIMGCODEC_NOTICE not in record.getMessage()
