"""Inference: segment T1 scans with the 2D generator and write label maps plus a volume table.

One code path serves the bundle (``configs/inference.yaml``, whose ``segmenter`` is a :class:`Segmenter`),
the ``hippogan infer`` command (:func:`segmenter_from_bundle` reads that same config) and Python callers::

    segmenter = segmenter_from_bundle("bundles/hippocampus_resse_gan")   # or Segmenter(load_generator(...))
    result = segmenter.segment("scan.nii.gz")                            # one scan, nothing written
    summary = segmenter.segment_many(find_inputs(["scans/"]), "out/")    # label maps + volumes.csv

Per scan (:meth:`Segmenter.segment`): choose the ROI mode (``"auto"``: ``"whole_brain"`` when the scan's
field of view, voxels x spacing, exceeds :data:`WHOLE_BRAIN_MIN_EXTENT_MM` along any axis, else
``"precropped"``; MSD crops span at most ~60 mm, a whole-brain T1 ~150 mm or more), run
:func:`~hippogan.transforms.chains.get_preprocessing`, the generator on every sagittal plane of the ROI(s)
in one batch (:func:`~hippogan.transforms.slicing.sagittal_inferer`; all-zero planes, the ROI's padding, are
not run through the network but get its output for a zero plane), argmax, and
:func:`~hippogan.transforms.chains.get_postprocessing` back to the input grid. The optional clean-up keeps,
per side and on the input grid (after the inversion, so the written map is the one cleaned), the largest
connected component of the hippocampus (labels 1 and 2 together, 26-connectivity; ``scipy.ndimage.label``,
as MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, not a dependency here). Whole-brain sides
are then merged (:func:`~hippogan.transforms.roi.merge_sides`).

Outputs of :meth:`Segmenter.segment_many` in ``out_dir``: ``<subject_id>.nii.gz`` (uint8, 0 background,
1 anterior, 2 posterior; the input's shape and affine; the NIfTI header of a NIfTI input) -- the names
``hippogan evaluate --pred-dir`` expects -- and ``volumes.csv`` (:data:`VOLUME_COLUMNS`; one row per scan
and side, volumes in mm³ = voxel count x voxel volume of the input affine; a failed scan gets one row with
``status`` ``failed`` and its ``reason``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from monai.inferers import Inferer
from scipy import ndimage
from tqdm import tqdm

from hippogan.pipeline.manifest import SUBJECT_ID, load_manifest, select_folds
from hippogan.transforms.chains import get_postprocessing, get_preprocessing
from hippogan.transforms.keys import IMAGE, PRED, SIDE
from hippogan.transforms.roi import ROI_MODES, merge_sides
from hippogan.transforms.slicing import sagittal_inferer

__all__ = [
    "AUTO",
    "DEFAULT_BUNDLE",
    "VOLUMES_CSV",
    "VOLUME_COLUMNS",
    "WHOLE_BRAIN_MIN_EXTENT_MM",
    "EmptyPlaneSkipper",
    "RunSummary",
    "Segmentation",
    "Segmenter",
    "SideVolumes",
    "choose_mode",
    "find_inputs",
    "load_generator",
    "save_label_map",
    "scan_extent_mm",
    "segmenter_from_bundle",
    "voxel_volume_mm3",
    "write_volumes_csv",
]

logger = logging.getLogger(__name__)

AUTO = "auto"
WHOLE_BRAIN_MIN_EXTENT_MM = 100.0
"""Field of view (mm, along any axis) above which ``mode="auto"`` treats a scan as a whole brain."""
VOLUMES_CSV = "volumes.csv"
VOLUME_COLUMNS = ("subject", "side", "mode", "total_mm3", "anterior_mm3", "posterior_mm3", "status", "reason")
"""Columns of ``volumes.csv``; volumes in mm³ (empty for a failed scan)."""
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "hippocampus_resse_gan"
"""The bundle of a source checkout (editable install); pass ``bundle_root`` elsewhere."""
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DICOM_MAGIC_OFFSET = 128


# ---------------------------------------------------------------------------------------------- network


def load_generator(
    weights: str | os.PathLike,
    network: torch.nn.Module | Mapping[str, Any],
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Build the generator and load its weights for inference (eval mode, float32, on ``device``).

    Args:
        weights: a ``torch.save`` of the generator's state dict (fp16 or fp32, read with
            ``weights_only=True``), or a trainer checkpoint holding it under ``"g_network"``.
        network: the module, or its config (``{"_target_": "hippogan.networks.ResSEGenerator", ...}``,
            the bundle's ``network_def``).
        device: target device (default CPU).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: the file is not a readable state dict, or its keys or shapes do not fit the network
            (the message names the file and the first differing keys).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if isinstance(network, Mapping):
        network = ConfigParser({"network": dict(network)}).get_parsed_content("network")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a weights_only pickle
        raise ValueError(f"cannot read weights {path} with torch.load(weights_only=True): {error}") from error
    if isinstance(state, Mapping) and "g_network" in state:
        state = state["g_network"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path}: expected a state dict of tensors (or a checkpoint with 'g_network').")
    _check_state_dict(path, network, state)
    network.load_state_dict(state)  # copies into the module's float32 parameters
    return network.float().to(torch.device("cpu") if device is None else device).eval()


def _check_state_dict(path: Path, network: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming ``path`` when ``state`` does not fit ``network`` key for key, shape for shape."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(items)} {what} (e.g. {', '.join(items[:3])})"
            for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
            if items
        ]
        raise ValueError(
            f"weights {path} do not fit the network {type(network).__name__}: {'; '.join(problems)}. "
            "Were they trained with another network_def (architecture or widths)?"
        )


class EmptyPlaneSkipper:
    """Wrap a 2D network so that all-zero input planes skip it: they get its (cached) output for a zero plane.

    In eval mode a 2D network maps each plane independently, so this is exact (up to floating-point
    rounding); the ROI's zero padding (5-17 of 48 sagittal planes for an MSD crop) then costs nothing.

    The zero-plane output is computed once per plane shape, dtype and device: use one skipper per
    precision setting (e.g. with or without autocast).

    Args:
        network: the 2D network ``(N, C, H, W) -> (N, C_out, H, W)``, in eval mode.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network
        self._zero_out: dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` planes -> ``(N, C_out, H, W)`` network outputs."""
        empty = ~x.flatten(1).any(dim=1)
        if not bool(empty.any()):
            return self.network(x)
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._zero_out:
            self._zero_out[key] = self.network(x.new_zeros((1, *x.shape[1:])))
        zero_out = self._zero_out[key]
        out = zero_out.expand(x.shape[0], *zero_out.shape[1:]).clone()
        if not bool(empty.all()):
            out[~empty] = self.network(x[~empty]).to(out.dtype)
        return out


# ---------------------------------------------------------------------------------------------- inputs


def _nifti_stem(name: str) -> str | None:
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.lower().endswith(s)), None)


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble magic ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as stream:
            stream.seek(_DICOM_MAGIC_OFFSET)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and not p.name.startswith(".") and _is_dicom_file(p) for p in folder.iterdir())


def _folder_inputs(folder: Path) -> list[tuple[str, Path]]:
    """One DICOM series folder, or the NIfTI files and DICOM series sub-folders of a folder."""
    if _holds_dicom(folder):
        return [(folder.name, folder)]
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = _nifti_stem(entry.name)
        if entry.is_file() and stem is not None:
            found.append((stem, entry))
        elif entry.is_dir() and _holds_dicom(entry):
            found.append((entry.name, entry))
    if not found:
        raise ValueError(
            f"input folder {folder}: no NIfTI file (*.nii.gz, *.nii), DICOM series or series sub-folder in it."
        )
    return found


def find_inputs(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    dataset_dir: str | os.PathLike | None = None,
    fold: int | None = None,
) -> list[tuple[str, Path]]:
    """List the scans to segment as ``(subject_id, path)`` pairs; nothing is read but folder listings.

    Each path may be:

    - a NIfTI file (``subject_id`` = its name without ``.nii.gz``/``.nii``);
    - a manifest CSV (``subject_id,image,label,fold``; image paths relative to ``dataset_dir``);
    - a folder holding DICOM files: one series (``subject_id`` = the folder name);
    - a folder of NIfTI files and/or DICOM series sub-folders: each one.

    Args:
        paths: one path or several.
        dataset_dir: root of a manifest's relative paths (needed with a manifest).
        fold: keep only this fold of a manifest (``None``: every row).

    Raises:
        ValueError: a path does not exist or is of no listed kind, a manifest lacks ``dataset_dir`` or has
            no row of ``fold``, a folder holds no scan, or two scans share a subject id (their outputs
            would collide); the message names the paths.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("find_inputs: no input path given.")
    found: list[tuple[str, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += _folder_inputs(path)
        elif not path.is_file():
            raise ValueError(f"input {path}: no such file or folder.")
        elif path.suffix.lower() == ".csv":
            found += _manifest_inputs(path, dataset_dir, fold)
        elif _nifti_stem(path.name) is not None:
            found.append((_nifti_stem(path.name), path))
        elif _is_dicom_file(path):
            found.append((path.parent.name, path.parent))
        else:
            raise ValueError(
                f"input {path}: expected a NIfTI file, a manifest CSV, or a folder (NIfTI files, DICOM series)."
            )
    seen: dict[str, Path] = {}
    clashes = []
    for subject, path in found:
        if subject in seen and seen[subject] != path:
            clashes.append(f"{subject} ({seen[subject]} and {path})")
        seen.setdefault(subject, path)
    if clashes:
        raise ValueError(f"inputs share subject ids, so their outputs would collide: {'; '.join(clashes)}.")
    return list(dict.fromkeys(found))


def _manifest_inputs(path: Path, dataset_dir: str | os.PathLike | None, fold: int | None) -> list[tuple[str, Path]]:
    if dataset_dir is None:
        raise ValueError(f"manifest {path}: needs dataset_dir, the root of its relative image paths.")
    rows = load_manifest(path, dataset_dir)
    if fold is not None:
        rows = select_folds(rows, folds=[int(fold)])
        if not rows:
            raise ValueError(f"manifest {path}: no row with fold {fold}.")
    return [(str(row[SUBJECT_ID]), Path(row[IMAGE])) for row in rows]


def scan_extent_mm(path: str | os.PathLike) -> np.ndarray:
    """Field of view of a scan along its 3 voxel axes, mm (voxels x spacing), from its header only.

    Args:
        path: a NIfTI file or a DICOM series folder.
    """
    path = Path(path)
    if path.is_dir():
        return _dicom_extent_mm(path)
    header = nib.load(path).header
    return np.asarray(header.get_data_shape()[:3], dtype=float) * np.asarray(header.get_zooms()[:3], dtype=float)


def _dicom_extent_mm(folder: Path) -> np.ndarray:
    """In-plane size x spacing of the first slice; across slices, the slice count x the slice step."""
    import SimpleITK as sitk

    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise ValueError(f"DICOM folder {folder}: no DICOM series in it.")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0])
    infos = []
    for name in (files[0], files[-1]):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        infos.append(reader)
    first, last = infos
    in_plane = np.asarray(first.GetSize()[:2], dtype=float) * np.asarray(first.GetSpacing()[:2], dtype=float)
    step = np.linalg.norm(np.subtract(last.GetOrigin(), first.GetOrigin())) / max(len(files) - 1, 1)
    return np.append(in_plane, len(files) * (step if step > 0 else first.GetSpacing()[2]))


def choose_mode(path: str | os.PathLike, mode: str = AUTO) -> str:
    """Return the ROI mode for a scan: ``mode`` itself, or for ``"auto"`` the one its field of view implies.

    ``"auto"``: ``"whole_brain"`` when any axis of :func:`scan_extent_mm` exceeds
    :data:`WHOLE_BRAIN_MIN_EXTENT_MM` (100 mm), else ``"precropped"``.
    """
    if mode != AUTO:
        return mode
    return ROI_MODES[1] if float(scan_extent_mm(path).max()) > WHOLE_BRAIN_MIN_EXTENT_MM else ROI_MODES[0]


# ---------------------------------------------------------------------------------------------- results


@dataclass
class SideVolumes:
    """Hippocampal volumes of one side of a scan, mm³ (voxel count x voxel volume of the input affine).

    ``side`` is ``"left"``/``"right"`` (whole brain) or ``"unknown"`` (a hippocampus crop); ``found`` is
    False when no hippocampus voxel was predicted.
    """

    side: str
    total_mm3: float
    anterior_mm3: float
    posterior_mm3: float

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
        mode: the ROI mode used (``"precropped"`` or ``"whole_brain"``).
        label_map: ``(X, Y, Z)`` uint8, 0 background, 1 anterior, 2 posterior hippocampus; the input's voxel
            grid (``hippogan.transforms.scan_loader("image")({"image": source})`` loads the scan on it).
        affine: ``(4, 4)`` voxel-to-world matrix of the input (mm; RAS for NIfTI and DICOM alike).
        sides: volumes per side (one entry for a crop, left and right for a whole brain).
    """

    subject: str
    source: Path
    mode: str
    label_map: np.ndarray
    affine: np.ndarray
    sides: list[SideVolumes] = field(default_factory=list)

    def volume_rows(self) -> list[dict[str, Any]]:
        """Rows of ``volumes.csv`` (:data:`VOLUME_COLUMNS`), one per side, status ``ok``."""
        return [
            {"subject": self.subject, "mode": self.mode, **vars(side), "status": "ok", "reason": ""}
            for side in self.sides
        ]


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
    """

    out_dir: Path
    label_maps: dict[str, Path]
    failures: dict[str, str]
    rows: list[dict[str, Any]]
    volumes_csv: Path
    seconds: dict[str, float]

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


def _side_volumes(side: str, labels: torch.Tensor, voxel_mm3: float) -> SideVolumes:
    counts = np.bincount(labels.numpy().ravel(), minlength=3)
    anterior, posterior = float(counts[1]) * voxel_mm3, float(counts[2]) * voxel_mm3
    return SideVolumes(side=side, total_mm3=anterior + posterior, anterior_mm3=anterior, posterior_mm3=posterior)


def save_label_map(result: Segmentation, path: str | os.PathLike) -> Path:
    """Write ``result.label_map`` as uint8 NIfTI with the input's affine (and header, for a NIfTI input).

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    header = None
    if result.source.is_file():
        header = nib.load(result.source).header.copy()
    image = nib.Nifti1Image(result.label_map.astype(np.uint8), result.affine, header=header)
    image.set_data_dtype(np.uint8)
    nib.save(image, path)
    return path


def write_volumes_csv(
    rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] = VOLUME_COLUMNS
) -> Path:
    """Write volume rows to a CSV (``columns`` in order; keys not in it ignored, missing ones empty); returns the path.

    ``columns`` defaults to :data:`VOLUME_COLUMNS`; ``hippogan segment`` adds a ``flag`` column.
    """
    path = Path(path)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    return path


# ---------------------------------------------------------------------------------------------- segmenter


def _root_cause(error: BaseException) -> BaseException:
    """The innermost cause (MONAI wraps transform errors in ``RuntimeError('applying transform ...')``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


class Segmenter:
    """Segment T1 scans with a 2D generator over sagittal planes of the hippocampal ROI(s).

    Args:
        network: the 2D generator, ``(N, 1, 64, 64) -> (N, 3, 64, 64)`` logits (background, anterior,
            posterior), e.g. from :func:`load_generator`; put in eval mode here.
        mode: ``"precropped"``, ``"whole_brain"`` or ``"auto"`` (per scan, see :func:`choose_mode`).
        lcc: keep, per side, only the largest connected component of the hippocampus (labels 1 and 2
            together), on the input grid.
        device: where the network runs (default: the device of its parameters).
        inferer: runs the network over a ROI batch ``(B, 1, X, Y, Z)``; default
            :func:`~hippogan.transforms.slicing.sagittal_inferer` with ``sw_batch_size=128`` (both
            whole-brain sides, 2 x 48 planes, in one forward pass).
        amp: on CUDA, run the network under float16 autocast (ignored on CPU, which runs float32).
        skip_empty: all-zero planes get the network's output for a zero plane (:class:`EmptyPlaneSkipper`).
        channels_last: convert the network's weights to ``torch.channels_last`` (in place), which the CPU
            (oneDNN) and CUDA convolutions run faster on (1 CPU thread: -13% for the paper's widths).
        preprocessing_kwargs: further :func:`~hippogan.transforms.chains.get_preprocessing` arguments
            (``mirror``, ``roi_size``, ``percentiles``, ``roi_kwargs``...), as in training.

    Raises:
        ValueError: unknown ``mode``, or ``preprocessing_kwargs`` holding ``mode`` or ``with_label``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        mode: str = AUTO,
        lcc: bool = True,
        device: str | torch.device | None = None,
        inferer: Inferer | None = None,
        amp: bool = True,
        skip_empty: bool = True,
        channels_last: bool = True,
        preprocessing_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in (AUTO, *ROI_MODES):
            raise ValueError(f"Segmenter: unknown mode {mode!r}; expected one of {(AUTO, *ROI_MODES)}.")
        kwargs = dict(preprocessing_kwargs or {})
        clashing = sorted({"mode", "with_label"} & set(kwargs))
        if clashing:
            raise ValueError(f"Segmenter: preprocessing_kwargs must not set {clashing}; use the mode argument.")
        if device is None:
            device = next(network.parameters(), torch.empty(0)).device
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        self.mode = mode
        self.lcc = lcc
        self.amp = amp
        self.inferer = sagittal_inferer(sw_batch_size=128) if inferer is None else inferer
        self._run_network = EmptyPlaneSkipper(self.network) if skip_empty else self.network
        self._chains = {}
        for roi_mode in ROI_MODES:
            pre = get_preprocessing(mode=roi_mode, with_label=False, **kwargs)
            self._chains[roi_mode] = (pre, get_postprocessing(pre, argmax=False))

    def segment(self, path: str | os.PathLike, subject: str | None = None) -> Segmentation:
        """Segment one scan (NIfTI file or DICOM series folder); nothing is written.

        A side with no hippocampus predicted gets an empty map and a logged warning.

        Raises:
            ValueError: the scan cannot be read or does not fit its mode (the message names the file).
        """
        path = Path(path)
        subject = subject or _nifti_stem(path.name) or path.name
        try:
            mode = choose_mode(path, self.mode)
            pre, post = self._chains[mode]
            samples = pre({IMAGE: str(path)})
        except Exception as error:
            cause = _root_cause(error)
            raise ValueError(f"cannot load or pre-process {path}: {type(cause).__name__}: {cause}") from error
        batch = list_data_collate(samples if isinstance(samples, list) else [samples])
        batch[PRED] = self._predict(batch[IMAGE])
        inverted = [post(sample) for sample in decollate_batch(batch)]
        first = inverted[0][PRED]
        affine = np.asarray(first.meta.get("original_affine", first.affine), dtype=np.float64)
        voxel_mm3 = voxel_volume_mm3(affine)
        sides = []
        for sample in inverted:
            labels = sample[PRED].as_tensor().round().to(torch.uint8)
            if self.lcc:
                labels = self._largest_component(labels)
            sample[PRED] = labels
            sides.append(_side_volumes(str(sample[SIDE]), labels, voxel_mm3))
            if not sides[-1].found:
                logger.warning(
                    "%s: no hippocampus found (side %s) in %s; its label map is empty", subject, sides[-1].side, path
                )
        label_map = merge_sides(inverted) if len(inverted) > 1 else inverted[0][PRED]
        label_map = np.asarray(label_map, dtype=np.uint8)[0]
        return Segmentation(subject=subject, source=path, mode=mode, label_map=label_map, affine=affine, sides=sides)

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """ROI batch ``(B, 1, X, Y, Z)`` -> label maps ``(B, 1, X, Y, Z)`` float32 (argmax of the logits), on CPU."""
        amp = self.amp and self.device.type == "cuda"
        autocast = torch.autocast(self.device.type, dtype=torch.float16) if amp else nullcontext()
        with torch.inference_mode(), autocast:
            logits = self.inferer(images.as_tensor().to(self.device), self._run_network)
            labels = torch.as_tensor(logits).argmax(dim=1, keepdim=True).to("cpu", torch.float32)
        return labels.clone()  # a normal tensor, usable outside inference mode

    @staticmethod
    def _largest_component(labels: torch.Tensor) -> torch.Tensor:
        """Keep the largest 26-connected component of labels 1 and 2 together; ``(1, X, Y, Z)`` in and out."""
        components, count = ndimage.label(labels[0].numpy() > 0, structure=np.ones((3, 3, 3), dtype=bool))
        if count <= 1:
            return labels
        largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
        return labels * torch.from_numpy(components == largest)[None]

    def segment_many(
        self,
        inputs: Iterable[tuple[str, str | os.PathLike]],
        out_dir: str | os.PathLike,
        progress: bool = True,
        on_result: Callable[[Segmentation, Path], None] | None = None,
    ) -> RunSummary:
        """Segment each ``(subject_id, path)`` (see :func:`find_inputs`), writing into ``out_dir``.

        Writes ``<subject_id>.nii.gz`` per scan (existing files are replaced) and ``volumes.csv``. A scan
        that fails (unreadable, wrong mode...) is logged and skipped; the others go on, and every failure
        is listed at the end and in the summary (:meth:`RunSummary.raise_on_failure` turns them into an error).

        Args:
            inputs: ``(subject_id, path)`` pairs.
            out_dir: output folder, created if needed.
            progress: show a progress bar.
            on_result: called as ``on_result(segmentation, label_map_path)`` after each scan is written
                (e.g. to draw a QC picture); an error it raises fails that scan like any other.

        Raises:
            ValueError: ``out_dir`` cannot be created or written (checked before any scan is read).
        """
        out_dir = _writable_folder(out_dir)
        inputs = list(inputs)
        label_maps: dict[str, Path] = {}
        failures: dict[str, str] = {}
        rows: list[dict[str, Any]] = []
        seconds: dict[str, float] = {}
        for subject, path in tqdm(inputs, desc="segmenting", unit="scan", disable=not progress):
            start = time.perf_counter()
            try:
                result = self.segment(path, subject=subject)
                written = save_label_map(result, out_dir / f"{subject}.nii.gz")
                if on_result is not None:
                    on_result(result, written)
                label_maps[subject] = written
                rows += result.volume_rows()
            except Exception as error:  # one bad scan must not stop the run; it is reported below
                reason = str(error) if isinstance(error, ValueError) else f"{path}: {type(error).__name__}: {error}"
                failures[subject] = reason
                rows.append({"subject": subject, "side": "", "status": "failed", "reason": failures[subject]})
                logger.error("%s failed: %s", subject, failures[subject])
            seconds[subject] = time.perf_counter() - start
        volumes_csv = write_volumes_csv(rows, out_dir / VOLUMES_CSV)
        logger.info("segmented %d of %d scan(s) into %s", len(label_maps), len(inputs), out_dir)
        if failures:
            logger.error("%d scan(s) failed: %s", len(failures), "; ".join(f"{s}: {r}" for s, r in failures.items()))
        return RunSummary(out_dir, label_maps, failures, rows, volumes_csv, seconds)


def _writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check a file can be written there; ``ValueError`` naming it otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"output folder {folder} cannot be created or written: {error}") from error
    return folder


def segmenter_from_bundle(
    bundle_root: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
) -> Segmenter:
    """Build the bundle's ``segmenter`` from its ``configs/inference.yaml`` (the ``monai.bundle run`` path).

    Args:
        bundle_root: the bundle folder (default :data:`DEFAULT_BUNDLE`).
        overrides: config ids -> values, as ``monai.bundle run --id value`` would set them (e.g.
            ``{"mode": "whole_brain", "lcc": False, "device": "$torch.device('cpu')"}``).
        config_file: another inference config (default ``<bundle_root>/configs/inference.yaml``).

    Raises:
        ValueError: the bundle or config file is missing, or building the segmenter failed on a bad value
            or file (e.g. weights that do not fit ``network_def``; the message names the file).
    """
    bundle_root = Path(DEFAULT_BUNDLE if bundle_root is None else bundle_root)
    config_file = Path(config_file or bundle_root / "configs" / "inference.yaml")
    if not config_file.is_file():
        raise ValueError(
            f"bundle config {config_file} not found; pass the bundle folder (holding configs/inference.yaml)."
        )
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update({"bundle_root": str(bundle_root), **dict(overrides or {})})
    try:
        return parser.get_parsed_content("segmenter")
    except RuntimeError as error:  # ConfigParser wraps the errors of "$" expressions: surface the user's error
        cause = error.__cause__  # the outermost ValueError/OSError: load_generator's names the weights file
        while cause is not None and not isinstance(cause, (ValueError, OSError)):
            cause = cause.__cause__
        if cause is not None:
            raise ValueError(f"{config_file}: {cause}") from error
        raise
