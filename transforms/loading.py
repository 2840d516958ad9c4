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
from monai.data import ImageReader, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "MGH_SUFFIXES",
    "NIFTI_SUFFIXES",
    "SCAN_SUFFIXES",
    "MghReader",
    "SitkDicomSeriesReader",
    "is_dicom_file",
    "nifti_stem",
    "scan_loader",
    "scan_stem",
    "source_name",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""File name endings of NIfTI images (compressed first, so that ``.nii.gz`` is not read as ``.gz``)."""
MGH_SUFFIXES = (".mgz", ".mgh")
"""File name endings of FreeSurfer's MGH images."""
SCAN_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES
"""File name endings of the image files :func:`scan_loader` reads (besides DICOM series folders)."""
_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
_NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"
_NVIMGCODEC_NOTICE = "nvImageCodec is not available; skipping pydicom decoder plugin registration"


def nifti_stem(name: str) -> str | None:
    """``"sub-01.nii.gz"`` -> ``"sub-01"``; ``None`` when ``name`` is not a NIfTI file name (case-insensitive)."""
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.lower().endswith(s)), None)


def source_name(img: object, default: str = "the image") -> str:
    """The file a loaded image came from (its MetaTensor's ``filename_or_obj``), for error messages."""
    meta = getattr(img, "meta", None)
    return str(meta.get("filename_or_obj", default)) if isinstance(meta, dict) else default


def scan_stem(name: str) -> str | None:
    """``"t1.mgz"`` -> ``"t1"``, ``"sub-01.nii.gz"`` -> ``"sub-01"``; ``None`` for a name of no :data:`SCAN_SUFFIXES`."""
    return next((name[: -len(s)] for s in SCAN_SUFFIXES if name.lower().endswith(s)), None)


class MghReader(NibabelReader):
    """MONAI's ``NibabelReader`` for FreeSurfer's ``.mgz`` / ``.mgh`` files (nibabel reads them; MONAI's reader
    only claims NIfTI names). The affine is the file's own voxel-to-RAS matrix, as for NIfTI."""

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """Return True when every given path ends in ``.mgz`` or ``.mgh``."""
        return all(str(f).lower().endswith(MGH_SUFFIXES) for f in ensure_tuple(filename))


class SitkDicomSeriesReader(ImageReader):
    """Read one DICOM series from a folder with SimpleITK (imported lazily, on first read).

    The array comes back in ITK index order ``(X, Y, Z)`` (i, j, k: columns, rows, slices), and the
    affine is converted from DICOM's LPS to RAS, as MONAI's ``ITKReader`` does, so it is consistent
    with ``NibabelReader`` and ``Orientationd(axcodes="RAS")`` can follow.

    A series is refused (``ValueError`` naming the folder) when its folder holds several series and no
    ``series_uid`` is given (as ``hippogan manifest`` refuses them), when some DICOM files of the folder are
    not readable slices of it (a corrupt header is not dropped silently), and when its slices are not evenly
    spaced (a missing slice would otherwise stretch the volume).

    Args:
        series_uid: the SeriesInstanceUID to read when a folder holds several series.
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
                raise ValueError(
                    f"DICOM series reader: folder {folder} holds {len(uids)} DICOM series ({', '.join(uids)}); "
                    "put each series in a folder of its own."
                )
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, self.series_uid or uids[0]))
            _check_series_files(folder, files, several_series=len(uids) > 1)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()  # keeps each slice's position for the spacing check
            warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling" line: raised below
            try:
                image = reader.Execute()
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
            _check_slice_spacing(folder, reader, image)
            images.append(image)
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


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble magic ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def _check_series_files(folder: str, files: Sequence[str], several_series: bool) -> None:
    """Raise ``ValueError`` when DICOM files of ``folder`` are left out of its (only) series: unreadable slices."""
    if several_series:
        return
    listed = {Path(f).resolve() for f in files}
    dicom = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"]
    left_out = sorted(p.name for p in dicom if is_dicom_file(p) and p.resolve() not in listed)
    if left_out:
        raise ValueError(
            f"DICOM series reader: {len(left_out)} DICOM file(s) in {folder} are not readable slices of its series "
            f"(corrupt header?): {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}."
        )


def _check_slice_spacing(folder: str, reader: Any, image: Any, tolerance: float = 0.05) -> None:
    """Raise ``ValueError`` when the slice positions along the slice normal are not evenly spaced (missing slices).

    The positions are the slices' ImagePositionPatient (0020|0032) kept by ``reader``
    (``MetaDataDictionaryArrayUpdateOn`` before ``Execute``), so no file is read twice.
    """
    n = image.GetSize()[2]
    if n < 3:
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = [
        float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)) for i in range(n)
    ]
    steps = np.abs(np.diff(positions))
    typical = float(np.median(steps))
    odd = np.flatnonzero(np.abs(steps - typical) > tolerance * max(typical, 1e-3))
    if typical <= 0 or len(odd):
        first = int(odd[0]) if len(odd) else 0
        raise ValueError(
            f"DICOM series reader: the slices of {folder} are not evenly spaced: {steps[first]:.2f} mm between "
            f"slices {first + 1} and {first + 2} where the others are {typical:.2f} mm (a missing slice?)."
        )


def scan_loader(keys: Sequence[str] | str, allow_missing_keys: bool = False) -> LoadImaged:
    """Return a :class:`~monai.transforms.LoadImaged` that reads NIfTI files and DICOM series folders.

    MONAI picks the reader by the path: a folder goes to :class:`SitkDicomSeriesReader` (registered last,
    so tried first), a ``.mgz``/``.mgh`` file to :class:`MghReader`, a ``.nii``/``.nii.gz`` file to MONAI's
    ``NibabelReader``. Each key then holds a
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
    loader.register(MghReader())
    loader.register(SitkDicomSeriesReader())
    return loader


def _drop_nvimgcodec_notice(record: logging.LogRecord) -> bool:
    """Logging filter: False (drop) for MONAI's "nvImageCodec is not available" record only."""
    return _NVIMGCODEC_NOTICE not in record.getMessage()
