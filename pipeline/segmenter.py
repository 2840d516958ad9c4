"""The segmenter: one code path for the bundle, ``hippogan segment``, cross-validation and the benchmarks.

The bundle's ``configs/inference.yaml`` spells out every step as MONAI objects a user can edit:
``preprocessing`` (load, RAS, 1 mm, hippocampal ROI crop, intensity scaling), ``network`` (the 2D generator
and its weights), ``inferer`` (every sagittal plane of the ROI), ``postprocessing`` (invert to the input grid,
largest component), ``dataset`` (a MONAI ``Dataset`` of the inputs) and ``evaluator``, a :class:`Segmenter`
that runs them scan by scan and writes the results. :func:`segmenter_from_bundle` builds it from the bundle::

    segmenter = segmenter_from_bundle("bundles/hippocampus_resse_gan")
    result = segmenter.segment("scan.nii.gz")                            # one scan, nothing written
    summary = segmenter.run(input_datalist(["scans/"]), "out/")          # label maps + volumes.csv

Per scan: ``preprocessing`` gives one ROI sample (a hippocampus crop) or two (left and right of a whole brain),
the generator runs on every sagittal plane of them in one batch (all-zero planes, the ROI's padding, get the
network's output for a zero plane without running it: :class:`~hippogan.networks.EmptyPlaneSkipper`), argmax, then
``postprocessing`` maps each sample back to the input grid; whole-brain sides are merged
(:func:`~hippogan.transforms.roi.merge_sides`).

Why not MONAI's ``SupervisedEvaluator`` + ``DataLoader``: a scan that cannot be read or does not fit its mode must
fail alone with its reason while the run goes on (an exception inside a ``DataLoader`` ends the run), and one
whole-brain scan yields two ROI samples that must be merged before writing. :meth:`Segmenter.run` reads the
``Dataset`` item by item (optionally in worker processes), records a failure per item, and writes atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset, decollate_batch, list_data_collate
from monai.inferers import Inferer
from monai.transforms import Compose
from torch.utils.data import DataLoader
from tqdm import tqdm

from hippogan.networks import EmptyPlaneSkipper
from hippogan.transforms.chains import get_postprocessing
from hippogan.transforms.keys import IMAGE, PRED, SIDE, UNKNOWN_SIDE
from hippogan.transforms.loading import scan_stem
from hippogan.transforms.registration import (
    ETIV_MM3,
    ETIV_SCALE,
    MNI_FROM_SUBJECT,
    REGISTRATION_KEYS,
    REGISTRATION_QUALITY,
)
from hippogan.transforms.roi import merge_sides
from hippogan.transforms.sanity import SCAN_WARNINGS
from hippogan.transforms.slicing import plane_inferer

from .bundled import DEFAULT_BUNDLE
from .file_io import first_cause, root_cause, writable_folder
from .inputs import check_outputs_spare_inputs, output_stems
from .manifest import SUBJECT_ID
from .results import (
    MODES,
    VOLUMES_CSV,
    RunSummary,
    Segmentation,
    is_complete,
    read_volumes_csv,
    save_label_map,
    self_agreement,
    side_volumes,
    voxel_volume_mm3,
    write_volumes_csv,
)

__all__ = ["Segmenter", "bundle_preprocessing", "segmenter_from_bundle"]

logger = logging.getLogger(__name__)

_ERROR = "error"
_SCAN_KEYS = (SCAN_WARNINGS, *REGISTRATION_KEYS)
"""Per-scan entries of a sample (the input checks' warnings, the registration's figures): kept out of the batch."""
_FLUSH_SECONDS = 2.0
"""Longest time a finished scan's rows wait before they are merged into ``volumes.csv``."""


def _preprocessing_error(path: object, error: BaseException) -> str:
    cause = root_cause(error)
    return f"cannot load or pre-process {path}: {type(cause).__name__}: {cause}"


class _FailSafe(torch.utils.data.Dataset):
    """Items ``indices`` of a MONAI ``Dataset``; one whose transform fails becomes ``{..., "error": reason}``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        row = self.indices[index]
        try:
            return self.dataset[row]
        except Exception as error:  # reported as this scan's failure by Segmenter.run
            item = self.dataset.data[row]
            return {**item, _ERROR: _preprocessing_error(item[IMAGE], error)}


def _as_is(item: Any) -> Any:
    return item


class Segmenter:
    """Segment T1 scans with a 2D generator over sagittal planes of the hippocampal ROI(s).

    Args:
        network: the 2D generator, ``(N, 1, 64, 64) -> (N, 3, 64, 64)`` logits (background, anterior,
            posterior), e.g. from :func:`~hippogan.pipeline.weights.load_generator`; put in eval mode here.
        preprocessing: ``{"image": path}`` -> one ROI sample or a list of them (default
            :func:`bundle_preprocessing`, the shipped bundle's: whole brains registered, crops as they are).
        postprocessing: one decollated sample whose ``"pred"`` is a ``(1, *roi_size)`` label map -> the map on
            the input grid (default :func:`~hippogan.transforms.chains.get_postprocessing` of ``preprocessing``
            without argmax, with the largest-component clean-up).
        inferer: runs the network over a ROI batch ``(B, C, X, Y, Z)``; default
            :func:`~hippogan.transforms.slicing.plane_inferer` with ``sw_batch_size=128`` (both
            whole-brain sides, 2 x 48 planes, in one forward pass).
        device: where the network runs (default: the device of its parameters).
        amp: on CUDA, run the network under float16 autocast (ignored on CPU, which runs float32).
        skip_empty: all-zero planes get the network's output for a zero plane
            (:class:`~hippogan.networks.EmptyPlaneSkipper`).
        channels_last: convert the weights of the network's 2D convolutions to ``torch.channels_last`` (in
            place), which the CPU (oneDNN) and CUDA convolutions run faster on (1 CPU thread: -13% for the
            paper's widths).
        low_confidence: a side whose confidence is below this is flagged "check this scan"
            (:func:`~hippogan.pipeline.qc.confidence_flag`; the bundle's ``low_confidence``); None: never.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable | None = None,
        postprocessing: Callable | None = None,
        inferer: Inferer | None = None,
        device: str | torch.device | None = None,
        amp: bool = True,
        skip_empty: bool = True,
        channels_last: bool = True,
        low_confidence: float | None = None,
    ) -> None:
        self.low_confidence = None if low_confidence is None else float(low_confidence)
        if device is None:
            device = next(network.parameters(), torch.empty(0)).device
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if channels_last:  # the 2D convolutions: 3D ones (a 3D ensemble member) have no channels_last layout
            for module in self.network.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.to(memory_format=torch.channels_last)
        self.amp = amp
        self.preprocessing = bundle_preprocessing() if preprocessing is None else preprocessing
        if postprocessing is None:
            if not isinstance(self.preprocessing, Compose):
                raise ValueError("Segmenter: give postprocessing when preprocessing is not a Compose to invert.")
            postprocessing = get_postprocessing(self.preprocessing, argmax=False, largest_component=True)
        self.postprocessing = postprocessing
        self.inferer = plane_inferer(sw_batch_size=128) if inferer is None else inferer
        self._run_network = EmptyPlaneSkipper(self.network) if skip_empty else self.network

    def segment(self, path: str | os.PathLike, subject: str | None = None) -> Segmentation:
        """Segment one scan (NIfTI file or DICOM series folder); nothing is written.

        Raises:
            ValueError: the scan cannot be read or does not fit its mode (the message names the file).
        """
        path = Path(path)
        subject = subject or scan_stem(path.name) or path.name
        try:
            samples = self.preprocessing({SUBJECT_ID: subject, IMAGE: str(path)})
        except Exception as error:
            raise ValueError(_preprocessing_error(path, error)) from error
        return self.segment_samples(samples, subject, path)

    def segment_samples(
        self, samples: Mapping | Sequence[Mapping], subject: str, path: str | os.PathLike
    ) -> Segmentation:
        """Segment the pre-processed ROI sample(s) of one scan (the output of ``preprocessing``).

        A side with no hippocampus predicted gets an empty map and a logged warning.
        """
        samples = list(samples) if isinstance(samples, (list, tuple)) else [samples]
        scan = {key: samples[0].get(key) for key in _SCAN_KEYS}
        batch = list_data_collate([{k: v for k, v in sample.items() if k not in _SCAN_KEYS} for sample in samples])
        batch[PRED], confidence = self._predict(batch[IMAGE])
        inverted = [self.postprocessing(sample) for sample in decollate_batch(batch)]
        first = inverted[0][PRED]
        affine = np.asarray(first.meta.get("original_affine", first.affine), dtype=np.float64)
        voxel_mm3 = voxel_volume_mm3(affine)
        sides = []
        for sample, side_confidence in zip(inverted, confidence):
            labels = torch.as_tensor(sample[PRED]).round().to(torch.uint8)
            sides.append(side_volumes(str(sample[SIDE]), labels, voxel_mm3, side_confidence))
            if not sides[-1].found:
                logger.warning(
                    "%s: no hippocampus found (side %s) in %s; its label map is empty", subject, sides[-1].side, path
                )
        label_map = merge_sides(inverted) if len(inverted) > 1 else inverted[0][PRED]
        label_map = np.asarray(torch.as_tensor(label_map).round(), dtype=np.uint8)[0]
        nan = float("nan")
        etiv_scale = nan if scan[ETIV_SCALE] is None else float(scan[ETIV_SCALE])
        if str(inverted[0][SIDE]) == UNKNOWN_SIDE:
            mode = MODES[0]
        else:
            mode = MODES[1] if np.isfinite(etiv_scale) else MODES[2]
        return Segmentation(
            subject=subject, source=Path(path), mode=mode, label_map=label_map, affine=affine, sides=sides,
            warnings=list(scan[SCAN_WARNINGS] or []),
            registration_quality=nan if scan[REGISTRATION_QUALITY] is None else float(scan[REGISTRATION_QUALITY]),
            etiv_mm3=nan if scan[ETIV_MM3] is None else float(scan[ETIV_MM3]), etiv_scale=etiv_scale,
            mni_from_subject=_finite_or_none(scan[MNI_FROM_SUBJECT]), low_confidence=self.low_confidence,
        )  # fmt: skip

    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """ROI batch ``(B, 1, X, Y, Z)`` -> label maps ``(B, 1, X, Y, Z)`` float32 (argmax of the logits), on CPU, and
        the :func:`~hippogan.pipeline.results.self_agreement` confidence of each map."""
        amp = self.amp and self.device.type == "cuda"
        autocast = torch.autocast(self.device.type, dtype=torch.float16) if amp else nullcontext()
        with torch.inference_mode(), autocast:
            logits = torch.as_tensor(self.inferer(torch.as_tensor(images).to(self.device), self._run_network))
            probabilities = logits.float().softmax(dim=1)
            labels = probabilities.argmax(dim=1, keepdim=True)
            confidence = [self_agreement(1.0 - p[0], l[0] > 0) for p, l in zip(probabilities, labels)]
            labels = labels.to("cpu", torch.float32)
        return labels.clone(), confidence  # a normal tensor, usable outside inference mode

    def run(
        self,
        inputs: Dataset | Sequence[Mapping[str, Any]],
        out_dir: str | os.PathLike,
        progress: bool = True,
        on_result: Callable[[Segmentation, Path], None] | None = None,
        num_workers: int = 0,
        resume: bool = False,
    ) -> RunSummary:
        """Segment every scan of ``inputs``, writing ``<stem>.nii.gz`` per scan and ``volumes.csv`` in ``out_dir``.

        ``<stem>`` is :func:`~hippogan.pipeline.file_io.safe_file_stem` of the subject id (nothing lands
        outside ``out_dir``). A scan that fails (unreadable, implausible, a failing ``on_result``...) gets a
        ``failed`` row with its reason and the run goes on; every failure is listed at the end and in the
        summary (:meth:`~hippogan.pipeline.results.RunSummary.raise_on_failure` turns them into an error).
        Each file is written to a temporary name and renamed; ``volumes.csv`` is merged with the rows already
        there (:func:`~hippogan.pipeline.results.write_volumes_csv`) at most :data:`_FLUSH_SECONDS` after each
        scan and at the end, so a killed run keeps what it finished (``resume`` redoes a scan whose row was
        still pending) and concurrent runs into one folder keep each other's rows.

        Args:
            inputs: a MONAI ``Dataset`` whose transform is ``preprocessing`` (the bundle's ``dataset``), or a
                datalist ``[{"subject_id": id, "image": path}, ...]`` (:func:`~hippogan.pipeline.inputs.input_datalist`).
            out_dir: output folder, created if needed.
            progress: show a progress bar.
            on_result: called as ``on_result(segmentation, label_map_path)`` after each scan is written
                (e.g. to draw a QC picture); an error it raises fails that scan like any other.
            num_workers: worker processes that load and pre-process the next scans while the network runs.
            resume: skip the scans already done in ``out_dir``: an ``ok`` row in its ``volumes.csv`` and a
                label map that reads whole, on the input's grid (:func:`~hippogan.pipeline.results.is_complete`).

        Raises:
            ValueError: ``out_dir`` cannot be created or written, an output would overwrite an input, or two
                subject ids share a file name (all checked before any scan is read).
        """
        dataset = inputs if isinstance(inputs, Dataset) else Dataset(list(inputs), transform=self.preprocessing)
        stems = output_stems(dataset.data)
        check_outputs_spare_inputs(dataset.data, out_dir, stems.values())
        out_dir = writable_folder(out_dir)
        todo = list(range(len(dataset)))
        if resume:
            done = {row["subject"] for row in read_volumes_csv(out_dir / VOLUMES_CSV) if row.get("status") == "ok"}
            todo = [
                i for i in todo
                if not is_complete(dataset.data[i], out_dir / f"{stems[_subject(dataset, i)]}.nii.gz",
                                   _subject(dataset, i) in done)
            ]  # fmt: skip
            logger.info("resume: %d of %d scan(s) already done in %s", len(dataset) - len(todo), len(dataset), out_dir)
        loader = DataLoader(_FailSafe(dataset, todo), batch_size=None, collate_fn=_as_is, num_workers=num_workers)
        label_maps: dict[str, Path] = {}
        failures: dict[str, str] = {}
        rows: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []  # rows not yet merged into volumes.csv
        table = None
        seconds: dict[str, float] = {}
        start = flushed = time.perf_counter()
        for index, samples in zip(todo, tqdm(loader, desc="segmenting", unit="scan", disable=not progress)):
            subject, path = _subject(dataset, index), Path(dataset.data[index][IMAGE])
            try:
                if isinstance(samples, Mapping) and _ERROR in samples:
                    raise ValueError(samples[_ERROR])
                result = self.segment_samples(samples, subject, path)
                written = save_label_map(result, out_dir / f"{stems[subject]}.nii.gz")
                if on_result is not None:
                    on_result(result, written)
                label_maps[subject] = written
                scan_rows = result.volume_rows()
            except Exception as error:  # one bad scan must not stop the run; it is reported below
                reason = str(error) if isinstance(error, ValueError) else f"{path}: {type(error).__name__}: {error}"
                failures[subject] = reason
                scan_rows = [{"subject": subject, "side": "", "status": "failed", "reason": reason}]
                logger.error("%s failed: %s", subject, reason)
            rows += scan_rows
            pending += scan_rows
            seconds[subject] = time.perf_counter() - start
            start = time.perf_counter()
            if start - flushed >= _FLUSH_SECONDS:  # a read-merge-write per scan would grow with the table
                table, pending, flushed = write_volumes_csv(pending, out_dir / VOLUMES_CSV), [], start
        if pending or table is None:
            table = write_volumes_csv(pending, out_dir / VOLUMES_CSV)
        logger.info("segmented %d of %d scan(s) into %s", len(label_maps), len(todo), out_dir)
        if failures:
            logger.error("%d scan(s) failed: %s", len(failures), "; ".join(f"{s}: {r}" for s, r in failures.items()))
        return RunSummary(out_dir, label_maps, failures, rows, out_dir / VOLUMES_CSV, seconds, table)


def _finite_or_none(matrix: Any) -> np.ndarray | None:
    """A registration's 4x4 matrix, or ``None`` for a crop (absent, or the all-NaN placeholder)."""
    if matrix is None:
        return None
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix if np.all(np.isfinite(matrix)) else None


def bundle_preprocessing(bundle_root: str | os.PathLike | None = None, mode: str = "auto") -> Compose:
    """The ``preprocessing`` of a bundle's ``configs/inference.yaml`` (default the shipped bundle), for ``mode``."""
    parser = ConfigParser()
    parser.read_config(str(Path(DEFAULT_BUNDLE if bundle_root is None else bundle_root) / "configs" / "inference.yaml"))
    parser.update({"mode": mode})
    return parser.get_parsed_content("preprocessing")


def _subject(dataset: Dataset, index: int) -> str:
    return str(dataset.data[index][SUBJECT_ID])


def segmenter_from_bundle(
    bundle_root: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
) -> Segmenter:
    """Build the bundle's ``evaluator`` (a :class:`Segmenter`) from its ``configs/inference.yaml``.

    Args:
        bundle_root: the bundle folder (default :data:`~hippogan.pipeline.bundled.DEFAULT_BUNDLE`).
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
        return parser.get_parsed_content("evaluator")
    except RuntimeError as error:  # ConfigParser wraps the errors of "$" expressions: surface the user's error
        cause = first_cause(error.__cause__, (ValueError, OSError)) if error.__cause__ else None
        if cause is not None:
            raise ValueError(f"{config_file}: {cause}") from error
        raise
