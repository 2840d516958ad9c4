"""Registration to the MNI152 template (issue 12): time, peak memory, quality, eTIV, known-transform recovery, and
whether the network should see the hippocampi in template space or in the subject's own space.

Run from the repository root (about 10 minutes on 2 CPU cores)::

    python benchmarks/bench_registration.py [--data ../shared/data] [--runs 3] [--threads 2] \\
        [--out benchmarks/results/registration.md]

Part 1, per input, each in its own worker process (peak RSS = its ``VmHWM``): ``register_to_template`` time
(median of ``--runs``), ``RegisterToTemplated`` forward (registration + resampling onto the 197x233x189 template
grid) and the inverse of a label map back onto the input grid (nearest), quality, ``etiv_scale``, eTIV, and for
the template moved by a known transform: the error of the two hippocampal box centres (mm), of the determinant,
and the Dice of the two boxes inverted onto the input grid against the boxes moved by the known transform.

Part 2, the shipped network (bundle weights) on the template moved by known transforms (scales 0.85-1.15) and on
the two native T1s: label maps on the input grid from (a) the bundle's pipeline as shipped (the scan resampled
into template space, the fixed MNI boxes, percentile scaling, histogram standardisation), (b) the same without the
histogram standardisation and (c) the scan at 1 mm in its own space, the same boxes centred where the registration
puts the hippocampi (anatomy at its own size, as in the MSD training crops), standardised. Truth for the moved
templates: the shipped pipeline's segmentation of the template itself, moved by the known transform (nearest);
Dice per side and volumes against it.

Part 3, the shipped network on the MSD fold-0 crops zoomed (0.8-1.25) or pitched (±20°) about their centre: how much
template space (anatomy at template size and orientation) can cost.

Part 4, end to end through the shipped bundle (``segmenter_from_bundle(...).segment``), registered (mode ``auto``)
and with the fixed MNI boxes (mode ``mni``) side by side: median seconds of ``--runs`` after a first run, peak RSS.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hippogan.transforms import (
    DEFAULT_BOX_SIZE,
    DEFAULT_LEFT_CENTER,
    DEFAULT_RIGHT_CENTER,
    IMAGE,
    HippocampalROICropd,
    HistogramStandardized,
    ScaleIntensityRangePercentilesNonzerod,
    get_postprocessing,
    scan_loader,
    world_box_to_voxels,
)
from hippogan.transforms.registration import (
    RegisterToTemplate,
    known_transform,
    load_template,
    register_to_template,
    resample_affine,
    simulate_acquisition,
)

__all__ = ["main"]

logger = logging.getLogger("bench_registration")

CENTERS = (DEFAULT_LEFT_CENTER, DEFAULT_RIGHT_CENTER)
NATIVE = ("chris_t1", "otsu_t1")
MOVED = {  # name: (rotation deg xyz, shift mm, scale xyz, axcodes, spacing mm, field of view z mm, gain, offset)
    "template": ((0, 0, 0), (0, 0, 0), (1, 1, 1), "RAS", (1, 1, 1), None, 1.0, 0.0),
    "rot20_shift30_LPS": ((20, -10, 5), (30, -20, 10), (1, 1, 1), "LPS", (1, 1, 1), None, 1.0, 0.0),
    "rot-20_scale0.85_LIA_0.8mm": ((-15, 20, -20), (-30, 30, -25), (0.85,) * 3, "LIA", (0.8,) * 3, None, 1.0, 0.0),
    "scale1.15_aniso_1.2mm_fov150_x1000": ((10, 0, -10), (0, -10, 15), (1.15, 1.05, 1.1), "RAS", (1.2, 1, 1), 150.0,
                                           1000.0, 500.0),
}  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's peak resident set, MB: the kernel's ``VmHWM`` (reset at exec; ``ru_maxrss`` is not, so a
    worker spawned by a large parent would report the parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _moved_template(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(array, affine, known)``: the template moved by the case's known transform (MNI -> subject world)."""
    rotation, shift, scale, axcodes, spacing, fov_z, gain, offset = MOVED[name]
    known = known_transform(rotation, shift, scale)
    array, affine = simulate_acquisition(known, axcodes, spacing, fov_z, gain, offset)
    return array, affine, known


def _load(name: str, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if name in MOVED:
        return _moved_template(name)
    image = nib.load(data / "whole_brain_t1" / f"{name}.nii.gz")
    return image.get_fdata(dtype=np.float32), np.asarray(image.affine), None


def _template_boxes() -> np.ndarray:
    tpl = load_template()
    boxes = np.zeros(tpl.array.shape, dtype=np.float32)
    for center in CENTERS:
        start, end = world_box_to_voxels(tpl.affine, center, DEFAULT_BOX_SIZE)
        boxes[tuple(slice(s, e) for s, e in zip(start, end))] = 1
    return boxes


def _on_grid(volume: np.ndarray, known: np.ndarray, affine: np.ndarray, shape) -> np.ndarray:
    """A template-grid volume moved by ``known`` onto ``(affine, shape)``, nearest."""
    tpl = load_template()
    out_to_in = np.linalg.inv(tpl.affine) @ np.linalg.inv(known) @ affine
    return resample_affine(torch.as_tensor(volume, dtype=torch.float32)[None], out_to_in, shape, "nearest")[0].numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(float(a.sum() + b.sum()), 1.0)


PERTURBATIONS = {  # name: (rotation deg xyz about the brain centre, shift mm), applied in MNI space
    "5 mm": ((0, 0, 0), (5, 0, 0)),
    "10 mm": ((0, 0, 0), (0, 10, 0)),
    "20 mm": ((0, 0, 0), (0, 0, 20)),
    "10°": ((10, 0, 0), (0, 0, 0)),
    "20°": ((0, 20, 0), (0, 0, 0)),
}


def _perturbed_quality(array: np.ndarray, affine: np.ndarray, mni_from_subject: np.ndarray) -> dict[str, float]:
    """The quality of the registration found, deliberately put off by each of :data:`PERTURBATIONS`."""
    from hippogan.transforms import registration

    tpl = load_template()
    moving = registration._downsample(registration._to_sitk(array, affine), 2.0)
    boxes = (CENTERS, DEFAULT_BOX_SIZE)
    centre = np.eye(4)
    centre[:3, 3] = (0.0, -18.0, 18.0)  # about the middle of the template's brain, MNI mm
    out = {}
    for name, (rotation, shift) in PERTURBATIONS.items():
        off = centre @ known_transform(rotation, shift, (1, 1, 1)) @ np.linalg.inv(centre)
        subject_from_mni = np.linalg.inv(mni_from_subject) @ off
        out[name] = registration._evaluate(tpl, moving, subject_from_mni, array.shape, affine, boxes)[0]
    return out


def _worker(name: str, data: Path, runs: int) -> dict:
    """Part 1 for one input, in this process."""
    array, affine, known = _load(name, data)
    rss_before = _peak_rss_mb()
    load_template()
    seconds, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = register_to_template(array, affine)
        seconds.append(time.perf_counter() - start)
    img = MetaTensor(torch.as_tensor(array)[None], affine=torch.as_tensor(affine))
    transform = RegisterToTemplate(mode="register")
    start = time.perf_counter()
    registered = transform(img)
    forward = time.perf_counter() - start
    trace = [dict(op, extra_info=dict(op["extra_info"], mode="nearest")) for op in registered.applied_operations]
    boxes = MetaTensor(torch.as_tensor(_template_boxes())[None], meta=dict(registered.meta), applied_operations=trace)
    start = time.perf_counter()
    back = transform.inverse(boxes)
    inverse = time.perf_counter() - start
    figures = {
        "name": name,
        "shape": list(array.shape),
        "spacing": np.round(np.linalg.norm(affine[:3, :3], axis=0), 2).tolist(),
        "register_s": float(np.median(seconds)),
        "register_runs_s": [round(s, 2) for s in seconds],
        "forward_s": forward,
        "inverse_s": inverse,
        "quality": result.quality,
        "etiv_scale": result.etiv_scale,
        "etiv_mm3": result.etiv_mm3,
        "dof": result.dof,
        "box_mm3_on_input": float((back[0] > 0.5).sum()) * abs(float(np.linalg.det(affine[:3, :3]))),
        "rss_inputs_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if known is None:
        figures["perturbed_quality"] = _perturbed_quality(array, affine, result.mni_from_subject)
    else:
        subject_from_mni = np.linalg.inv(result.mni_from_subject)
        points = [np.append(c, 1.0) for c in CENTERS]
        figures["centre_error_mm"] = [float(np.linalg.norm((subject_from_mni @ p - known @ p)[:3])) for p in points]
        figures["det_error_pct"] = 100.0 * (result.etiv_scale * abs(np.linalg.det(known[:3, :3])) - 1.0)
        truth = _on_grid(_template_boxes(), known, affine, array.shape) > 0.5
        figures["box_dice"] = _dice(back[0].numpy() > 0.5, truth)
    return figures


def _run_workers(names: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--worker", name, "--data", str(args.data), "--runs", str(args.runs),
                   "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"worker {name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        logger.info("%s: %s", name, rows[-1])
    return rows


def _segmenter(preprocessing: Compose):
    from hippogan.pipeline.segmenter import Segmenter

    post = get_postprocessing(preprocessing, argmax=False, largest_component=True)
    bundle = _bundle()
    return Segmenter(
        bundle.network, preprocessing=preprocessing, postprocessing=post, inferer=bundle.inferer, device="cpu"
    )


@functools.lru_cache(maxsize=None)
def _bundle():
    """The shipped bundle's segmenter (inference.yaml as shipped), CPU."""
    from hippogan.pipeline.segmenter import segmenter_from_bundle

    return segmenter_from_bundle(overrides={"device": "$torch.device('cpu')"})


def _bundle_steps() -> list:
    return list(_bundle().preprocessing.transforms)


def _template_space_chain(standardize: bool = True) -> Compose:
    """The bundle's pre-processing (registration, template grid, fixed boxes), with or without its last step, the
    histogram standardisation."""
    steps = _bundle_steps()
    return Compose(steps if standardize else [t for t in steps if not isinstance(t, HistogramStandardized)])


def _subject_space_chain(mni_from_subject: np.ndarray) -> Compose:
    """The boxes centred where the registration puts the hippocampi, cut from the scan at 1 mm RAS (own size)."""
    left, right = (np.linalg.solve(mni_from_subject, np.append(c, 1.0))[:3].tolist() for c in CENTERS)
    standardize = next(t for t in _bundle_steps() if isinstance(t, HistogramStandardized))
    return Compose(
        [
            scan_loader(IMAGE),
            EnsureChannelFirstd(IMAGE),
            Orientationd(IMAGE, axcodes="RAS", labels=None),
            Spacingd(IMAGE, pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
            HippocampalROICropd(IMAGE, mode="whole_brain", left_center=left, right_center=right),
            ScaleIntensityRangePercentilesNonzerod(IMAGE, lower=0.5, upper=99.5),
            standardize,
        ]
    )


SPACES = {
    "template, percentile scaling only": lambda result: _template_space_chain(standardize=False),
    "template (shipped)": lambda result: _template_space_chain(),
    "subject": lambda result: _subject_space_chain(result.mni_from_subject),
}
"""Part 2's variants: name -> the pre-processing of a scan given its registration."""


def _side_masks(label_map: np.ndarray, affine: np.ndarray, mni_from_subject: np.ndarray) -> dict[str, np.ndarray]:
    """Hippocampus voxels per side (MNI x < 0: left)."""
    index = np.argwhere(label_map > 0)
    x_mni = (mni_from_subject @ affine @ np.vstack([index.T, np.ones(len(index))]))[0]
    sides = {}
    for side, keep in (("left", x_mni < 0), ("right", x_mni >= 0)):
        mask = np.zeros(label_map.shape, dtype=bool)
        mask[tuple(index[keep].T)] = True
        sides[side] = mask
    return sides


def _network_comparison(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], dict]:
    """Part 2."""
    tpl = load_template()
    template_path = tmp / "template.nii"
    nib.save(nib.Nifti1Image(tpl.array, tpl.affine), template_path)
    reference_seg = _bundle().segment(template_path)
    reference = reference_seg.label_map  # the template's own labels, by the shipped pipeline
    rim_path = tmp / "template_rim.nii"
    brain = tpl.array > 0
    rim = ndimage.binary_dilation(brain, iterations=2) & ~brain  # what resampling smears into the zeros
    nib.save(nib.Nifti1Image(np.where(rim, 0.05 * float(tpl.array.max()), tpl.array), tpl.affine), rim_path)
    controls = {}
    for space in ("template, percentile scaling only", "template (shipped)"):
        segmenter = _segmenter(SPACES[space](None))
        controls[f"template as is, {space}"] = [s.total_mm3 for s in segmenter.segment(template_path).sides]
        rimmed = segmenter.segment(rim_path)
        controls[f"template + a 2 mm rim at 5% around its brain, {space}"] = [s.total_mm3 for s in rimmed.sides]
    logger.info("controls: %s", controls)
    rows = []
    for name in [n for n in MOVED if n != "template"] + list(NATIVE):
        array, affine, known = _load(name, args.data)
        path = tmp / f"{name}.nii"
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
        result = register_to_template(array, affine)
        voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
        row = {"name": name, "etiv_scale": result.etiv_scale, "spaces": {}}
        truth = None
        if known is not None:
            truth = _side_masks(_on_grid(reference, known, affine, array.shape), affine, np.linalg.inv(known))
            row["truth_mm3"] = [float(truth[side].sum()) * voxel_mm3 for side in ("left", "right")]
        for space, chain in SPACES.items():
            start = time.perf_counter()
            segmentation = _segmenter(chain(result)).segment(path)
            figures = {"s": time.perf_counter() - start}
            sides = _side_masks(segmentation.label_map, affine, result.mni_from_subject)
            figures["mm3"] = [float(sides[side].sum()) * voxel_mm3 for side in ("left", "right")]
            if truth is not None:
                figures["dice"] = [_dice(sides[side], truth[side]) for side in ("left", "right")]
            row["spaces"][space] = figures
        rows.append(row)
        logger.info("%s: %s", name, row)
    return rows, controls


def _end_to_end_worker(name: str, mode: str, data: Path, runs: int) -> dict:
    """Part 4, in a fresh process: the shipped bundle's segmenter on one whole brain, ``runs`` times (the first run
    reads the template and builds the network's caches: reported apart)."""
    from hippogan.pipeline.segmenter import segmenter_from_bundle

    array, affine, _ = _load(name, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.nii"
        nib.save(nib.Nifti1Image(array.astype(np.float32), affine), path)
        segmenter = segmenter_from_bundle(overrides={"device": "$torch.device('cpu')", "mode": mode})
        seconds = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            result = segmenter.segment(path)
            seconds.append(time.perf_counter() - start)
    return {
        "name": name, "mode": mode, "first_s": seconds[0], "runs_s": seconds[1:],
        "peak_rss_mb": _peak_rss_mb(),
        "mm3": [s.total_mm3 for s in result.sides],
    }  # fmt: skip


def _end_to_end(args: argparse.Namespace) -> list[dict]:
    """Part 4: registered (mode auto) and MNI-box (mode mni) paths side by side, worker processes in turns."""
    rows = []
    for name in ("template", *NATIVE):
        for mode in ("auto", "mni"):
            command = [sys.executable, __file__, "--data", str(args.data), "--runs", str(args.runs),
                       "--threads", str(args.threads), "--e2e", name, mode]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            logger.info("end to end %s: %s", name, rows[-1])
    return rows


def _sensitivity(args: argparse.Namespace) -> dict[str, dict[float, tuple[float, float]]]:
    """Part 3: the network on MSD fold-0 crops zoomed (anatomy size) or pitched (rotation about x) about their
    centre: mean Dice against the label moved alike, and mean predicted / true volume."""
    import csv

    from hippogan.pipeline.bundled import DEFAULT_BUNDLE
    from hippogan.transforms import HippocampalROICrop, ScaleIntensityRangePercentilesNonzero, get_loading

    manifest = DEFAULT_BUNDLE / "configs" / "msd_hippocampus.csv"
    with open(manifest, newline="") as handle:
        cases = [row for row in csv.DictReader(handle) if row["fold"] == "0"]
    segmenter = _segmenter(_template_space_chain())
    load, crop = get_loading(with_label=True), HippocampalROICrop("precropped")
    scale_intensity = ScaleIntensityRangePercentilesNonzero(lower=0.5, upper=99.5)
    changes = {"zoom": (0.8, 0.89, 1.0, 1.12, 1.25), "pitch deg": (-20, -10, 0, 10, 20)}
    figures: dict[str, dict[float, list]] = {kind: {v: [] for v in values} for kind, values in changes.items()}
    root = args.data / "msd_hippocampus"
    for case in cases:
        d = load({IMAGE: str(root / case["image"]), "label": str(root / case["label"])})
        image, label = d[IMAGE][0].numpy(), d["label"][0].numpy()
        for kind, values in changes.items():
            for value in values:
                if kind == "zoom":
                    shape = np.maximum(np.round(np.asarray(image.shape) * value), 1).astype(int)
                    matrix = np.eye(3) / value
                else:
                    shape = np.asarray(image.shape)
                    matrix = Rotation.from_euler("x", value, degrees=True).as_matrix()
                offset = (np.asarray(image.shape) - 1) / 2 - matrix @ ((shape - 1) / 2)
                moved = ndimage.affine_transform(image, matrix, offset, output_shape=tuple(shape), order=1)
                truth = ndimage.affine_transform(label, matrix, offset, output_shape=tuple(shape), order=0)
                x = scale_intensity(crop(MetaTensor(torch.as_tensor(moved)[None])))
                y = crop(MetaTensor(torch.as_tensor(truth)[None])).numpy()[0] > 0
                p = segmenter._predict(torch.as_tensor(x)[None])[0][0, 0].numpy() > 0
                figures[kind][value].append((_dice(p, y), p.sum() / max(y.sum(), 1)))
    return {kind: {v: tuple(np.mean(f, axis=0)) for v, f in values.items()} for kind, values in figures.items()}


def _load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _markdown(
    part1: list[dict], part2: list[dict], controls: dict, part3: dict, part4: list[dict], args: argparse.Namespace,
    loads: list[str], wall: float,
) -> str:
    command = "python benchmarks/bench_registration.py" + (f" --runs {args.runs}" if args.runs != 3 else "")
    lines = [
        "# Registration to the MNI152 template (issue 12)",
        "",
        f"Written by `{command}` ({args.threads} SimpleITK and torch threads; the module docstring gives the method). "
        "Each input of parts 1 and 4 ran in its own worker process (peak RSS = its `VmHWM`, input arrays included). "
        "The machine is shared with other jobs (load averages below): absolute seconds are inflated.",
        "",
        "## Part 1: registration per input",
        "",
        "| input | shape | spacing mm | register s (median) | runs s | forward s | inverse s | peak RSS MB | quality "
        "| etiv_scale | eTIV L | dof | box centre error mm (L / R) | det error % | box Dice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part1:
        errors = " / ".join(f"{e:.2f}" for e in r["centre_error_mm"]) if "centre_error_mm" in r else ""
        det = f"{r['det_error_pct']:+.1f}" if "det_error_pct" in r else ""
        dice = f"{r['box_dice']:.3f}" if "box_dice" in r else ""
        lines.append(
            f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {'x'.join(f'{s:g}' for s in r['spacing'])} "
            f"| {r['register_s']:.2f} | {', '.join(f'{s:.1f}' for s in r['register_runs_s'])} | {r['forward_s']:.2f} "
            f"| {r['inverse_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['quality']:.3f} | {r['etiv_scale']:.3f} "
            f"| {r['etiv_mm3'] / 1e6:.3f} | {r['dof']} | {errors} | {det} | {dice} |"
        )
    lines += [
        "",
        "register s: `register_to_template` (2 mm copies, start search, similarity, affine, quality). forward s: "
        "`RegisterToTemplate` on the MetaTensor (registration again + resampling onto the template grid). inverse s: "
        "a label map of the two boxes from the template grid back onto the input grid (nearest). quality: mean local "
        "NCC with the template in its brain mask. eTIV = 1,882,989 mm³ (the template's brain-mask volume) / "
        "etiv_scale.",
        "",
        "Quality of the native T1s' registrations deliberately put off (MNI space; the min_quality to fail is 0.3, "
        "the suggested flag level 0.45):",
        "",
        "| input | found | " + " | ".join(PERTURBATIONS) + " |",
        "|---|---|" + "---|" * len(PERTURBATIONS),
    ]
    for r in part1:
        if "perturbed_quality" in r:
            values = " | ".join(f"{v:.3f}" for v in r["perturbed_quality"].values())
            lines.append(f"| {r['name']} | {r['quality']:.3f} | {values} |")
    lines += [
        "",
        "## Part 2: the network in template space vs subject space",
        "",
        "| input | etiv_scale | pipeline | s | left mm³ | right mm³ | truth L / R mm³ | Dice L | Dice R |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part2:
        truth = " / ".join(f"{v:.0f}" for v in r["truth_mm3"]) if "truth_mm3" in r else ""
        for space, f in r["spaces"].items():
            dice = [f"{d:.3f}" for d in f["dice"]] if "dice" in f else ["", ""]
            lines.append(
                f"| {r['name']} | {r['etiv_scale']:.3f} | {space} | {f['s']:.2f} | {f['mm3'][0]:.0f} "
                f"| {f['mm3'][1]:.0f} | {truth} | {dice[0]} | {dice[1]} |"
            )
    lines += [
        "",
        "template (shipped): the bundle's inference.yaml as shipped: the scan resampled onto the template grid, the "
        "fixed MNI boxes, percentile scaling, then the boxes' histogram standardised onto the training crops' "
        "(HistogramStandardized). template, percentile scaling only: the same without the last step (the pipeline "
        "before it). subject: the scan at 1 mm RAS in its own space, the same 36x50x36 mm boxes centred where the "
        "registration maps the MNI box centres (rotation not undone, anatomy at its own size), standardised. Truth: "
        "the shipped pipeline's label map of the template itself, moved by the known transform (nearest). Volumes "
        "are counted on the input grid (the subject's own mm³).",
        "",
        "Controls (left / right mm³): "
        + "; ".join(f"{k}: {v[0]:.0f} / {v[1]:.0f}" for k, v in controls.items())
        + ". Without the standardisation the network's output depends on the exact zeros around the skull-stripped "
        "template's brain (left out of the percentile scaling): a thin rim of low values, as resampling smears into "
        "them, changes the volumes several-fold; with it the volumes hold.",
        "",
        "## Part 3: the network's sensitivity to anatomy size and pitch (MSD fold-0 crops)",
        "",
        "| change | " + " | ".join(f"{k} {v:g}" for k in part3 for v in part3[k]) + " |",
        "|---|" + "---|" * sum(len(v) for v in part3.values()),
        "| mean Dice | " + " | ".join(f"{part3[k][v][0]:.3f}" for k in part3 for v in part3[k]) + " |",
        "| predicted / true volume | " + " | ".join(f"{part3[k][v][1]:.3f}" for k in part3 for v in part3[k]) + " |",
        "",
        "Each crop zoomed or rotated about its centre (image trilinear, label nearest), then the bundle's precropped "
        "ROI and intensity scaling. Template space scales a subject's anatomy by etiv_scale^(1/3) (1.09 and 1.12 for "
        "the two native T1s) and turns it to the MNI orientation (pitch 5° and 15° for them).",
        "",
        "## Part 4: end to end, registered vs MNI boxes",
        "",
        "| input | mode | first run s | runs s | median s | peak RSS MB | left / right mm³ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in part4:
        lines.append(
            f"| {r['name']} | {r['mode']} | {r['first_s']:.1f} | {', '.join(f'{v:.1f}' for v in r['runs_s'])} "
            f"| {np.median(r['runs_s']):.1f} | {r['peak_rss_mb']:.0f} | {' / '.join(f'{v:.0f}' for v in r['mm3'])} |"
        )
    ratios = []
    for name in dict.fromkeys(r["name"] for r in part4):
        by_mode = {r["mode"]: np.median(r["runs_s"]) for r in part4 if r["name"] == name}
        ratios.append(f"{name} {by_mode['auto'] / by_mode['mni']:.1f}x")
    lines += [
        "",
        "`segmenter_from_bundle(mode=...).segment(path)` in a fresh process per row (rows in turns), the scan read, "
        "registered (auto), segmented and mapped back onto its grid; no file written. First run: template read and "
        "caches built. mni on a native T1 gives meaningless volumes (it is not in MNI space): its row is a timing "
        "baseline only. Registered / MNI-box median time: " + ", ".join(ratios) + ".",
        "",
        f"Load average (1, 5, 15 min): {'; '.join(loads)}.",
        "",
        f"Wall time of the benchmark: {wall:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, log its figures and write the markdown table; returns 0."""
    default_data = os.environ.get("HIPPOGAN_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(default_data), help="shared data folder")
    parser.add_argument("--runs", type=int, default=3, help="registrations per input (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="SimpleITK and torch threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "registration.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--e2e", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.runs)))
        return 0
    if args.e2e:
        print(json.dumps(_end_to_end_worker(*args.e2e, args.data, args.runs)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    missing = [n for n in NATIVE if not (args.data / "whole_brain_t1" / f"{n}.nii.gz").is_file()]
    if missing:
        raise ValueError(f"missing {missing} in {args.data / 'whole_brain_t1'}; expected <name>.nii.gz")
    start, loads = time.perf_counter(), [f"start {_load_average()}"]
    part1 = _run_workers(list(NATIVE) + list(MOVED), args)
    loads.append(f"part 1 {_load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        part2, controls = _network_comparison(args, Path(tmp))
    loads.append(f"part 2 {_load_average()}")
    part3 = _sensitivity(args)
    logger.info("sensitivity: %s", part3)
    loads.append(f"part 3 {_load_average()}")
    part4 = _end_to_end(args)
    loads.append(f"part 4 {_load_average()}")
    text = _markdown(part1, part2, controls, part3, part4, args, loads, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".md.tmp")
    partial.write_text(text)
    partial.replace(args.out)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
