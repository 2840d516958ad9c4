"""Crops of a right hippocampus: the multi-view ensemble's orientation check, on the cross-validation.

The MSD training crops all have the left hippocampus's orientation. A user's crop of a right hippocampus is, to
the networks, a left one mirrored along x. For every fold k of ``hippogan cv`` runs of the sagittal and the
coronal recipe (``--runs``, the views in that order), the fold's held-out scans are segmented as given and
mirrored along x (image and label, written under ``runs/mirrored_crops/``) through the bundle's inference chain
(``precropped`` mode, largest-component clean-up), by:

- ``sagittal``: the sagittal generator alone (mirror-invariant: mirroring reverses its planes' order);
- ``coronal``: the coronal generator alone;
- ``sagittal + coronal, unchecked``: the two as one model, each plane as given (``mirror_check=False``);
- ``sagittal + coronal``: the two as one model with the orientation check (the default,
  :class:`~hippogan.networks.ProbabilityEnsemble`): the coronal member first runs on every 4th coronal plane of
  the ROI as given and x-mirrored, and per scan the orientation whose hippocampus probability agrees better with
  the sagittal member's is the one its full pass runs in.

With ``--volume-run`` (a ``hippogan cv`` run of the 3D recipe, ``train_3d.yaml``), the models are instead the
three as one model (the shipped 0.9.0 kind; the 3D member on the centred 32x64x64 window of the ROI), unchecked and
checked: checked, the 3D member runs in the orientation the coronal member's check picked.

Reported: binary, anterior and posterior DSC of each model on the scans as given and mirrored, the check's
picks (the mirrored orientation should be picked for the mirrored scans only) with their soft-Dice margins, and
seconds per scan. Run from the repository root, e.g.::

    python benchmarks/bench_mirrored_crops.py --runs runs/cv5_a runs/cv5_cor --manifest runs/cv5_manifest.csv \\
        --dataset-dir ../shared/data/msd_hippocampus --out benchmarks/results/mirrored_crops.md
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from hippogan.networks.ensemble import MIRROR_CHECK_STRIDE, mirror_margin
from hippogan.pipeline.evaluation import evaluate_files
from hippogan.pipeline.file_io import write_results
from hippogan.pipeline.manifest import SUBJECT_ID, select_folds
from hippogan.pipeline.segmenter import segmenter_from_bundle
from hippogan.pipeline.train_cli import build_train_workflow
from hippogan.transforms import plane_inferer, view_axis

__all__ = ["main"]

logger = logging.getLogger("bench_mirrored_crops")

WORK = Path("runs/mirrored_crops")
MODELS = {  # name: (members' views, mirror_check)
    "sagittal": (["sagittal"], True),
    "coronal": (["coronal"], True),
    "sagittal + coronal, unchecked": (["sagittal", "coronal"], False),
    "sagittal + coronal": (["sagittal", "coronal"], True),
}
MODELS_3D = {  # with --volume-run
    "sagittal + coronal + 3D, unchecked": (["sagittal", "coronal", "volume"], False),
    "sagittal + coronal + 3D": (["sagittal", "coronal", "volume"], True),
}
NETWORK_DEFS = {"sagittal": "%network_def", "coronal": "%network_def", "volume": "%network_def_3d"}  # bundle ids


def _mirror(rows: list[dict], out: Path) -> list[dict]:
    """The rows' images and labels flipped along their first voxel axis (x: the MSD crops are RAS), same header."""
    out.mkdir(parents=True, exist_ok=True)
    mirrored = []
    for row in rows:
        paths = {}
        for key in ("image", "label"):
            image = nib.load(row[key])
            paths[key] = str(out / f"{key}_{Path(row[key]).name}")
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine, image.header), paths[key])
        mirrored.append({**row, **paths})
    return mirrored


def _picks(segmenter, networks: dict, rows: list[dict]) -> list[float]:
    """Per row, the orientation check's margin (:func:`~hippogan.networks.ensemble.mirror_margin`, as the
    ensemble computes it; > 0: the mirrored orientation is kept)."""
    sagittal, coronal = plane_inferer(view="sagittal"), plane_inferer(view="coronal")

    def run(volume: torch.Tensor) -> torch.Tensor:
        return coronal(volume, networks["coronal"]).softmax(dim=1)

    margins = []
    for row in rows:
        roi = segmenter.preprocessing({"image": row["image"]})["image"].as_tensor()[None]
        with torch.inference_mode():
            reference = sagittal(roi, networks["sagittal"]).softmax(dim=1)
            margins.append(float(mirror_margin(roi, run, reference, 2 + view_axis("coronal"))))
    return margins


def _fold(runs: list[Path], fold: int, rows: list[dict], models: dict) -> pd.DataFrame:
    views = ["sagittal", "coronal", "volume"]
    checkpoints = {view: str(run / f"fold_{fold}" / "checkpoints" / "best.pt") for run, view in zip(runs, views)}
    inputs = {"as given": rows, "mirrored": _mirror(rows, WORK / f"inputs_fold_{fold}")}
    frames = []
    for name, (model_views, check) in models.items():
        segmenter = segmenter_from_bundle(
            overrides={"mode": "precropped", "device": "$torch.device('cpu')", "ckpt_views": model_views,
                       "ckpt_paths": [checkpoints[v] for v in model_views], "ensemble": len(model_views) > 1,
                       "member_network_defs": [NETWORK_DEFS[v] for v in model_views]}
        )  # fmt: skip
        if len(model_views) > 1:
            segmenter.network.mirror_check = check
        for orientation, items in inputs.items():
            start = time.perf_counter()
            written = segmenter.run(items, WORK / f"{name}_{orientation}_fold_{fold}".replace(" ", "_"), progress=False)
            seconds = (time.perf_counter() - start) / len(items)
            scored = pd.DataFrame(evaluate_files([{**r, "pred": written.label_maps[r[SUBJECT_ID]]} for r in items]))
            scored = scored.assign(model=name, orientation=orientation, fold=fold, seconds_per_scan=seconds)
            if len(model_views) > 1 and check:
                scored["mirror_margin"] = _picks(segmenter, dict(zip(model_views, segmenter.network.members)), items)
            frames.append(scored)
    return pd.concat(frames, ignore_index=True)


def _markdown(table: pd.DataFrame, command: str) -> str:
    lines = [
        "# Crops of a right hippocampus: the multi-view ensemble's orientation check", "", f"`{command}`", "",
        "Held-out CV scans as given and mirrored along x (a right hippocampus's crop); DSC with the largest-component "
        "clean-up on each scan's own grid.", "",
        "| model | scans | as given: binary DSC | anterior | posterior | mirrored: binary DSC | anterior | posterior | "
        "s/scan |", "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name in table.model.unique():
        rows = table[table.model == name]
        given, mirrored = rows[rows.orientation == "as given"], rows[rows.orientation == "mirrored"]
        cells = [name, str(len(given))]
        cells += [f"{part[m].mean():.4f}" for part in (given, mirrored) for m in ("dsc", "dsc_class1", "dsc_class2")]
        lines.append("| " + " | ".join(cells + [f"{rows.seconds_per_scan.mean():.2f}"]) + " |")
    checked = table[table.mirror_margin.notna()] if "mirror_margin" in table else table.iloc[:0]
    margin = checked.mirror_margin.where(checked.orientation == "mirrored", -checked.mirror_margin)  # > 0: right
    lines += ["", f"Orientation check (every {MIRROR_CHECK_STRIDE}th coronal plane): the right orientation picked "
              f"for {(margin > 0).sum()} of {len(checked)} scans (as given and mirrored); soft-Dice margin toward the "
              f"right one: smallest {margin.min():.3f}, median {margin.median():.3f}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs=2, required=True, help="`hippogan cv` runs: sagittal, coronal")
    parser.add_argument("--volume-run", type=Path, help="a `hippogan cv` run of the 3D recipe: score it and the three")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest the runs were trained with")
    parser.add_argument("--dataset-dir", type=Path, required=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mirrored_crops.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    workflow = build_train_workflow(args.dataset_dir, WORK, manifest=args.manifest)
    datalist = workflow.parser.get_parsed_content("datalist")
    runs, models = (args.runs + [args.volume_run], MODELS_3D) if args.volume_run else (args.runs, MODELS)
    tables = []
    for fold in args.folds:
        tables.append(_fold(runs, fold, select_folds(datalist, folds=[fold]), models))
        logger.info("fold %d done", fold)
    table = pd.concat(tables, ignore_index=True)
    command = "python benchmarks/bench_mirrored_crops.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = _markdown(table, command)
    write_results(args.out, text, table)
    logger.info("%s\nwrote %s", text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
