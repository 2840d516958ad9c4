"""One training lever measured on the cross-validation (issue 14): two ``hippogan cv`` runs that differ only in it.

Reads each run's per-case scores (``fold_k/evaluation/metrics_per_case.csv``: each held-out scan segmented by the
fold's best generator through the bundle's inference and scored on its own grid, with the largest-component
clean-up; or, for two models on one held-out fold, the ``metrics_per_case.csv`` of two ``evaluate.yaml`` runs)
and reports the per-fold mean binary DSC, the mean anterior and posterior DSC and HD95 of both runs,
and the lever (``--runs`` second minus first) paired over the scans: mean difference, scans higher/lower,
Wilcoxon signed-rank p. Unlike :mod:`bench_ensemble` it segments nothing, so the runs may differ in their
network (e.g. its widths). Run from the repository root after both CV runs, e.g.::

    hippogan cv ... --output-dir runs/cv5_wide ... "network_def#channels=[32, 64, 128, 256]"
    python benchmarks/bench_cv_lever.py --runs runs/cv5_a runs/cv5_wide --lever "encoder 32-64-128-256" \\
        --out benchmarks/results/width.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import wilcoxon

from hippogan.pipeline.evaluation import PER_CASE_CSV
from hippogan.pipeline.file_io import write_results
from hippogan.pipeline.manifest import FOLD, SUBJECT_ID

__all__ = ["lever_table", "main"]

METRICS = ("dsc", "dsc_class1", "dsc_class2", "hd95")


def _scores(run: Path) -> pd.DataFrame:
    """A CV run's per-case scores over the folds it finished (``fold`` column added), or an ``evaluate.yaml``
    output folder's (one held-out fold, ``fold`` 0)."""
    if (run / PER_CASE_CSV).is_file():
        return pd.read_csv(run / PER_CASE_CSV, dtype={SUBJECT_ID: str}).assign(**{FOLD: 0})
    paths = sorted(run.glob(f"fold_*/evaluation/{PER_CASE_CSV}"))
    if not paths:
        raise ValueError(f"{run}: no {PER_CASE_CSV} nor fold_*/evaluation/{PER_CASE_CSV}; is it a finished "
                         "`hippogan cv` run or an evaluate.yaml output?")  # fmt: skip
    frames = [pd.read_csv(p, dtype={SUBJECT_ID: str}).assign(**{FOLD: int(p.parts[-3].split("_")[1])}) for p in paths]
    return pd.concat(frames, ignore_index=True)


def lever_table(baseline: pd.DataFrame, lever: pd.DataFrame) -> pd.DataFrame:
    """Per-case scores of two runs -> one row a metric: mean difference (lever - baseline) over the scans both
    scored, scans higher and lower, Wilcoxon signed-rank p."""
    columns = [SUBJECT_ID, *METRICS]
    paired = baseline[columns].merge(lever[columns], on=SUBJECT_ID, suffixes=("", "_lever"))
    rows = []
    for metric in METRICS:
        diff = paired[f"{metric}_lever"] - paired[metric]
        rows.append({"metric": metric, "n": len(diff), "difference": diff.mean(), "higher": int((diff > 0).sum()),
                     "lower": int((diff < 0).sum()), "p": wilcoxon(diff).pvalue})  # fmt: skip
    return pd.DataFrame(rows)


def _markdown(runs: list[Path], scores: list[pd.DataFrame], table: pd.DataFrame, command: str, lever: str) -> str:
    folds = sorted(set(scores[0][FOLD]) & set(scores[1][FOLD]))
    lines = [
        "# A training lever on the cross-validation (issue 14)", "",
        f"The lever: {lever}. Per-fold means; `mean` is the mean of the fold means; each scan on its own grid with "
        "the largest-component clean-up. The module docstring gives the method. Written by:", "", "```", command,
        "```", "",
        "| run | " + " | ".join(f"fold {k}" for k in folds) + " | mean binary DSC | anterior | posterior | HD95 mm |",
        "|---|" + "---|" * (len(folds) + 4),
    ]
    for run, frame in zip(runs, scores):
        frame = frame[frame[FOLD].isin(folds)]
        means = frame.groupby(FOLD)[list(METRICS)].mean()
        folds_dsc = " | ".join(f"{v:.4f}" for v in means["dsc"])
        overall = " | ".join(f"{means[m].mean():.{2 if m == 'hd95' else 4}f}" for m in METRICS)
        lines.append(f"| {run} | {folds_dsc} | {overall} |")
    lines += ["", f"{runs[1]} against {runs[0]}, paired over scans:", "",
              "| metric | scans | mean difference | higher/lower | Wilcoxon p |", "|---|---|---|---|---|"]  # fmt: skip
    for row in table.itertuples():
        lines.append(f"| {row.metric} | {row.n} | {row.difference:+.4f} | {row.higher}/{row.lower} | {row.p:.2g} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs=2, required=True, metavar=("BASELINE", "LEVER"),
                        help="two `hippogan cv` output folders: the baseline, then the one with the lever")  # fmt: skip
    parser.add_argument("--lever", required=True, help="what the second run changes, e.g. its `hippogan cv` overrides")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown report (a .csv of the tests beside it)")
    args = parser.parse_args(argv)
    scores = [_scores(run) for run in args.runs]
    table = lever_table(*scores)
    command = shlex.join(["python", "benchmarks/bench_cv_lever.py", *(sys.argv[1:] if argv is None else argv)])
    text = _markdown(args.runs, scores, table, command, args.lever)
    write_results(args.out, text, table)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
