"""Check every manifest row before any work, and report every bad row at once.

A row is bad when a file is missing, unreadable or truncated (the voxel data is read), not 3D,
holds NaN/inf, when image and label disagree in shape or affine, when label values (after the
label map) fall outside {0, 1, 2}, when a DICOM folder holds no series or several, or when two
rows share a subject id.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import CommonKeys, MetaKeys
from tqdm import tqdm


from hippogan.transforms.labels import LabelMap, MapLabels, parse_label_map
from hippogan.transforms.loading import SitkDicomSeriesReader

from .file_io import NIFTI_SUFFIXES

__all__ = ["SUBJECT_ID", "LABEL_VALUES", "AFFINE_ATOL_MM", "ManifestError", "read_volume", "validate_manifest"]

logger = logging.getLogger(__name__)

LABEL_VALUES = frozenset({0, 1, 2})
"""Label values the project accepts: background, anterior and posterior hippocampus."""

AFFINE_ATOL_MM = 1e-3
"""Largest difference (mm) tolerated between image and label affine entries."""

SUBJECT_ID = "subject_id"
"""The manifest key of the subject identifier (image and label keys are MONAI's ``CommonKeys``)."""


class ManifestError(ValueError):
    """Bad manifest rows; the message lists every problem as ``subject: file: reason``.

    Args:
        problems: ``(subject_id, file, reason)`` per problem, in row order.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]]) -> None:
        self.problems = list(problems)
        subjects = len({subject for subject, _, _ in self.problems})
        lines = [f"  {subject}: {file}: {reason}" for subject, file, reason in self.problems]
        super().__init__(f"{len(self.problems)} problem(s) in {subjects} subject(s):\n" + "\n".join(lines))


class _BadFile(Exception):
    """A file that cannot serve as a volume; the message is the reason."""


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the one DICOM series in ``folder`` as ``(array (X, Y, Z), RAS affine 4x4 in mm)``."""
    import SimpleITK as sitk  # lazy: the package must import without SimpleITK

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise _BadFile("no DICOM series in folder")
    if len(series) > 1:
        raise _BadFile(f"{len(series)} DICOM series in one folder (expected one): {', '.join(series)}")
    reader = SitkDicomSeriesReader(series_uid=series[0])
    array, meta = reader.get_data(reader.read(folder))
    return array, meta[MetaKeys.AFFINE]


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file or a DICOM series folder, voxel data included.

    Args:
        path: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.

    Returns:
        ``(array, affine)``: the voxels in (X, Y, Z[, ...]) order and the 4x4 voxel-to-RAS affine (mm).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        Exception: whatever the reader raises for an unreadable or truncated file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    if path.is_dir():
        return _read_dicom_series(path)
    if not path.name.endswith(NIFTI_SUFFIXES):
        raise _BadFile("unsupported file type (expected .nii, .nii.gz or a DICOM series folder)")
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image.affine


def _load_checked(path: Path, kind: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, list[str]]:
    """Read ``path`` and check it is a finite 3D volume; returns ``(volume or None, reasons)``."""
    if not path.exists():
        return None, [f"{kind} not found"]
    try:
        array, affine = read_volume(path)
    except _BadFile as exc:
        return None, [f"{kind}: {exc}"]
    except Exception as exc:  # nibabel, gzip and GDCM raise many types for a truncated or corrupt file
        return None, [f"{kind} unreadable or truncated ({type(exc).__name__}: {exc})"]
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        return None, [f"{kind} is not 3D: shape {tuple(array.shape)} (a 4th dimension of size 1 is accepted)"]
    reasons = []
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        reasons.append(f"{kind} holds {int((~np.isfinite(array)).sum())} NaN/inf voxel(s)")
    return (array, affine), reasons


def _check_row(row: Mapping, label_map: LabelMap | None, root: Path | None) -> list[tuple[str, str, str]]:
    """Every problem of one manifest row (duplicates aside) as ``(subject_id, file, reason)``."""
    subject = str(row.get(SUBJECT_ID) or "")
    image_path, label_path = row.get(CommonKeys.IMAGE), row.get(CommonKeys.LABEL)
    problems: list[tuple[str, str, str]] = []
    if not subject:
        subject = "?"
        problems.append((subject, str(image_path or ""), f"no {SUBJECT_ID}"))
    if not image_path:
        return problems + [(subject, "", "no image path")]
    resolve = (lambda p: root / p) if root is not None else Path
    image, reasons = _load_checked(resolve(image_path), "image")
    problems += [(subject, str(image_path), reason) for reason in reasons]
    if not label_path:
        return problems
    label, reasons = _load_checked(resolve(label_path), "label")
    problems += [(subject, str(label_path), reason) for reason in reasons]
    if label is None:
        return problems
    if image is not None:
        if image[0].shape != label[0].shape:
            problems.append((subject, str(label_path), f"label shape {label[0].shape} != image shape {image[0].shape}"))
        elif not np.allclose(image[1], label[1], atol=AFFINE_ATOL_MM, rtol=0):
            problems.append((subject, str(label_path), f"label affine differs from image affine by more than {AFFINE_ATOL_MM} mm"))
    values = np.unique(MapLabels(label_map)(label[0]))
    bad = [int(v) if float(v).is_integer() else v.item() for v in values if v not in LABEL_VALUES]
    if bad:
        after = f" after label map {label_map!r}" if label_map is not None else ""
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        problems.append((subject, str(label_path), f"label values {{{shown}}} outside {{0, 1, 2}}{after}"))
    return problems


def validate_manifest(
    rows: Sequence[Mapping],
    label_map: str | Mapping | None = None,
    *,
    dataset_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> None:
    """Check every manifest row (reading all voxel data) and raise once, listing every bad row.

    Args:
        rows: manifest rows with ``subject_id``, ``image`` and optional ``label`` (paths).
        label_map: label-map spec (see :func:`hippogan.transforms.labels.parse_label_map`) applied
            before the label-value check; ``None`` checks values as stored.
        dataset_dir: root that relative paths resolve against; ``None`` uses them as given.
        num_workers: reader threads; ``None`` picks ``min(4, cpu count)``.
        progress: show a tqdm progress bar (on a terminal).

    Raises:
        ManifestError: one or more bad rows (or no rows at all); ``.problems`` lists them.
        ValueError: ``label_map`` is not a valid spec.
    """
    mapping = parse_label_map(label_map)
    if not rows:
        raise ManifestError([("-", str(dataset_dir or ""), "manifest has no rows")])
    root = Path(dataset_dir) if dataset_dir is not None else None
    workers = num_workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = pool.map(lambda row: _check_row(row, mapping, root), rows)
        per_row = list(tqdm(checked, total=len(rows), desc="validating", unit="subject", disable=None if progress else True))
    counts = Counter(row.get(SUBJECT_ID) for row in rows)
    problems = []
    for row, row_problems in zip(rows, per_row):
        subject = row.get(SUBJECT_ID)
        if subject and counts[subject] > 1:
            problems.append((str(subject), str(row.get(CommonKeys.IMAGE, "")), f"duplicate {SUBJECT_ID} ({counts[subject]} rows)"))
        problems += row_problems
    if problems:
        raise ManifestError(problems)
    logger.debug("manifest valid: %d rows", len(rows))
