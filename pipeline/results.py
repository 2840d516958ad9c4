"""Results of a segmentation run: per-side volumes, the label map on the input grid, the files they become.

``volumes.csv`` (:data:`VOLUME_COLUMNS`): one row per scan and side, volumes in mm³ (voxel count x voxel volume
of the input affine), ``flag`` from :func:`~hippogan.pipeline.qc.volume_flags`; a failed scan gets one row with
``status`` ``failed`` and its ``reason``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .file_io import NIFTI_SUFFIXES, atomic_path, file_lock, spreadsheet_safe, spreadsheet_unsafe
from .qc import confidence_flag, volume_flags

__all__ = [
    "MODES",
    "VOLUMES_CSV",
    "VOLUME_COLUMNS",
    "RunSummary",
    "Segmentation",
    "SideVolumes",
    "is_complete",
    "read_volumes_csv",
    "save_label_map",
    "self_agreement",
    "side_volumes",
    "voxel_volume_mm3",
    "write_volumes_csv",
]

VOLUMES_CSV = "volumes.csv"
VOLUME_COLUMNS = (
    "subject", "side", "mode", "total_mm3", "anterior_mm3", "posterior_mm3", "flag", "status", "reason",
    "registration_quality", "etiv_mm3", "total_norm_mm3", "anterior_norm_mm3", "posterior_norm_mm3", "confidence",
)  # fmt: skip
"""Columns of ``volumes.csv``; volumes in mm³ (empty for a failed scan). ``registration_quality`` to
``posterior_norm_mm3`` are filled for registered whole brains (``registration_quality`` for ``mni`` scans too),
``confidence`` for every segmented side: see :meth:`Segmentation.volume_rows`."""
_VOLUME_KEYS = ("total_mm3", "anterior_mm3", "posterior_mm3")
_NUMBER_KEYS = (
    *_VOLUME_KEYS, "registration_quality", "etiv_mm3", "total_norm_mm3", "anterior_norm_mm3", "posterior_norm_mm3",
    "confidence",
)  # fmt: skip
MODES = ("precropped", "registered", "mni")
"""``Segmentation.mode``: a hippocampus crop; a whole brain registered to MNI152 here; a whole brain given in MNI
space (fixed boxes, alignment only measured)."""


@dataclass
class SideVolumes:
    """Hippocampal volumes of one side of a scan, mm³ (voxel count x voxel volume of the input affine).

    ``side`` is ``"left"``/``"right"`` (whole brain) or ``"unknown"`` (a hippocampus crop); ``found`` is
    False when no hippocampus voxel was predicted; ``confidence`` is the network's :func:`self_agreement` on this
    side (NaN when not measured).
    """

    side: str
    total_mm3: float
    anterior_mm3: float
    posterior_mm3: float
    confidence: float = float("nan")

    @property
    def found(self) -> bool:
        """Whether any hippocampus voxel was predicted on this side."""
        return self.total_mm3 > 0


@dataclass
class Segmentation:
    """The segmentation of one scan, on the scan's own grid.

    Attributes:
        subject: subject id.
        source: the input path (NIfTI file or DICOM series folder).
        mode: one of :data:`MODES`.
        label_map: ``(X, Y, Z)`` uint8, 0 background, 1 anterior, 2 posterior hippocampus; the input's voxel
            grid (``hippogan.transforms.scan_loader("image")({"image": source})`` loads the scan on it).
        affine: ``(4, 4)`` voxel-to-world matrix of the input (mm; RAS for NIfTI and DICOM alike).
        sides: volumes per side (one entry for a crop, left and right for a whole brain).
        warnings: what the input checks found doubtful (e.g. qform and sform disagree, a poor registration);
            they flag every side.
        registration_quality: mean local NCC with the MNI152 template (registered and ``mni`` scans; NaN otherwise).
        etiv_mm3: estimated total intracranial volume from the registration's determinant, mm³ (registered
            scans; NaN otherwise).
        etiv_scale: ``|det|`` of the subject -> MNI map (registered scans; NaN otherwise).
        mni_from_subject: 4x4 subject world -> MNI world (registered: found; ``mni``: identity; crops: ``None``).
    """

    subject: str
    source: Path
    mode: str
    label_map: np.ndarray
    affine: np.ndarray
    sides: list[SideVolumes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    registration_quality: float = float("nan")
    etiv_mm3: float = float("nan")
    etiv_scale: float = float("nan")
    mni_from_subject: np.ndarray | None = None
    low_confidence: float | None = None

    @property
    def whole_brain(self) -> bool:
        """Whether the scan is a whole brain (two sides, left and right), registered or in MNI space."""
        return self.mode != MODES[0]

    def volume_rows(self) -> list[dict[str, Any]]:
        """Rows of ``volumes.csv`` (:data:`VOLUME_COLUMNS`), one per side, status ``ok``.

        ``flag``: the volume's :func:`~hippogan.pipeline.qc.volume_flags`, the side's
        :func:`~hippogan.pipeline.qc.confidence_flag` (below ``low_confidence``: "check this scan") and the scan's
        ``warnings``, ``"; "``-joined.
        ``*_norm_mm3``: head-size-normalised volumes (the proportion method), ``volume x etiv_scale``: the volume
        scaled to a head of the template's intracranial volume (1,882,989 mm³ for nilearn's MNI152), i.e.
        ``volume / etiv_mm3 x 1,882,989``. Empty where not registered.
        """
        registered = bool(np.isfinite(self.etiv_scale))
        scan = {
            "registration_quality": _number(self.registration_quality),
            "etiv_mm3": _number(self.etiv_mm3),
        }
        rows = []
        for side in self.sides:
            norm = {f"{key[:-4]}_norm_mm3": getattr(side, key) * self.etiv_scale if registered else None
                    for key in _VOLUME_KEYS}
            flags = (volume_flags(side.total_mm3), confidence_flag(side.confidence, self.low_confidence), *self.warnings)
            flag = "; ".join(f for f in flags if f)
            rows.append({"subject": self.subject, "mode": self.mode, **vars(side), "flag": flag, "status": "ok",
                         "reason": "", **scan, **norm, "confidence": _number(side.confidence)})
        return rows  # fmt: skip


def _number(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


@dataclass
class RunSummary:
    """What :meth:`Segmenter.segment_many` did.

    Attributes:
        out_dir: the output folder.
        label_maps: subject id -> written ``<subject_id>.nii.gz``.
        failures: subject id -> why it failed.
        rows: the ``volumes.csv`` rows.
        volumes_csv: the written table.
        seconds: subject id -> seconds spent on it (segmentation and writing).
        table: every row of the written ``volumes.csv`` (earlier runs' rows included).
    """

    out_dir: Path
    label_maps: dict[str, Path]
    failures: dict[str, str]
    rows: list[dict[str, Any]]
    volumes_csv: Path
    seconds: dict[str, float]
    table: list[dict[str, Any]] = field(default_factory=list)

    def raise_on_failure(self) -> RunSummary:
        """Return ``self``, or raise ``RuntimeError`` listing the failed scans (for a non-zero exit code)."""
        if self.failures:
            listed = "; ".join(f"{subject}: {reason}" for subject, reason in self.failures.items())
            total = len(self.failures) + len(self.label_maps)
            raise RuntimeError(f"{len(self.failures)} of {total} scan(s) failed: {listed}")
        return self


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel, mm³: ``|det|`` of the affine's 3x3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def side_volumes(side: str, labels: torch.Tensor, voxel_mm3: float, confidence: float = float("nan")) -> SideVolumes:
    counts = np.bincount(labels.numpy().ravel(), minlength=3)
    anterior, posterior = float(counts[1]) * voxel_mm3, float(counts[2]) * voxel_mm3
    return SideVolumes(
        side=side, total_mm3=anterior + posterior, anterior_mm3=anterior, posterior_mm3=posterior,
        confidence=float(confidence),
    )  # fmt: skip


def self_agreement(foreground: torch.Tensor, mask: torch.Tensor) -> float:
    """The network's confidence in one label map: the soft Dice of its hippocampus probability with its own map.

    ``2 sum(p m) / (sum(p) + sum(m))`` for the per-voxel hippocampus probability ``p`` (1 - softmax of the
    background) and the predicted hippocampus ``m`` (argmax, before the largest-component clean-up), on the ROI
    grid: 1 when every voxel is certain, lower the more probability mass lies off the map or the map rests on
    uncertain voxels. It ranks scans by how reliable their segmentation is (measured against the real Dice:
    benchmarks/results/ensemble_confidence.md); it is not itself a Dice. NaN when both are empty.
    """
    p, m = foreground.float(), mask.float()
    denominator = float(p.sum() + m.sum())
    return 2.0 * float((p * m).sum()) / denominator if denominator > 0 else float("nan")


def save_label_map(result: Segmentation, path: str | os.PathLike) -> Path:
    """Write ``result.label_map`` as uint8 NIfTI with the input's affine (and header, for a NIfTI input).

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    header = None
    if result.source.is_file() and result.source.name.lower().endswith(NIFTI_SUFFIXES):
        header = nib.load(result.source).header.copy()
    image = nib.Nifti1Image(result.label_map.astype(np.uint8), result.affine, header=header)
    image.set_data_dtype(np.uint8)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def is_complete(item: Mapping[str, Any], label_map: str | os.PathLike, has_ok_row: bool) -> bool:
    """Whether a scan of an earlier run is done: an ``ok`` row, and a label map that reads whole on its input's grid.

    Args:
        item: the datalist item (``image``: NIfTI file or DICOM folder).
        label_map: the written ``<stem>.nii.gz``.
        has_ok_row: the subject has an ``ok`` row in ``volumes.csv``.
    """
    label_map = Path(label_map)
    if not has_ok_row or not label_map.is_file():
        return False
    try:
        written = nib.load(label_map)
        np.asarray(written.dataobj)  # a truncated file fails here
        source = Path(item["image"])
        return source.is_dir() or tuple(nib.load(source).shape[:3]) == tuple(written.shape[:3])
    except Exception:  # unreadable: not done
        return False


def read_volumes_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``volumes.csv`` (volumes as floats, empty cells as ``None``, text as it was before
    :func:`~hippogan.pipeline.file_io.spreadsheet_safe`); ``[]`` when there is no file.

    Raises:
        ValueError: the file is not a volume table (its header lacks ``subject``).
    """
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if "subject" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: not a volume table (header {reader.fieldnames}); move it away or pick another --out.")
        rows = []
        for row in reader:
            rows.append({
                k: (float(v) if v else None) if k in _NUMBER_KEYS else spreadsheet_unsafe(v or "")
                for k, v in row.items() if k is not None
            })  # fmt: skip
    return rows


def write_volumes_csv(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> list[dict[str, Any]]:
    """Write volume rows to ``path`` (:data:`VOLUME_COLUMNS` in order), merged with the rows already there.

    The earlier table's rows are kept, except those of the subjects in ``rows`` (the newest
    result of a subject wins), so a second run into the same folder, or several runs at once (shards), never
    drop each other's rows: the read-merge-write holds a lock (``.volumes.csv.lock`` next to the table) and
    the table is written to a temporary file and renamed. Text cells a spreadsheet would run as a formula
    are neutralised (:func:`~hippogan.pipeline.file_io.spreadsheet_safe`).

    Returns:
        the rows of the written table.
    """
    path = Path(path)
    new = [dict(row) for row in rows]
    with file_lock(path.with_name(f".{path.name}.lock")):
        subjects = {row["subject"] for row in new}
        kept = [row for row in read_volumes_csv(path) if row["subject"] not in subjects]
        table = kept + new
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(VOLUME_COLUMNS), extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in table:
                writer.writerow({k: round(v, 3) if isinstance(v, float) else spreadsheet_safe(v) for k, v in row.items()})
    return table
