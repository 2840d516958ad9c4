"""End-to-end speed of ``hippogan segment`` on MSD crops against an earlier release, side by side (issue 14).

Each variant is the whole command a user runs (``python -m hippogan.pipeline segment CROPS --out DIR``: start-up,
model load, pre-processing, network, inversion, clean-up, QC pictures, ``volumes.csv``, ``report.html``), timed
from outside by ``farm-bench`` with the baseline in turns (A B A B ...), so the ratio is paired under the same
machine load. The baseline is the code and weights of an earlier commit (default ``ef9c6b4``, bundle 0.3.0: one
narrow generator), checked out with ``git worktree`` and imported ahead of the installed package through a
``hippogan`` folder of links on ``PYTHONPATH``. Variants of this checkout: the default model (the bundle's multi-view
ensemble; since 0.9.0 sagittal + coronal + 3D) and ``--single-model``.

Every command runs on 1 crop and on ``--cases`` crops; the per-crop figure is the difference of the medians
divided by ``cases - 1`` (start-up and model load cancel out), the start-up figure the 1-crop median.

Run from the repository root: ``python benchmarks/bench_release_speed.py [--cases 20] [--runs 5] [--threads 2]``;
writes ``benchmarks/results/release_speed.md``. Needs ``farm-bench`` and ``git`` on the PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transforms", "networks", "pipeline")
_MEDIAN = re.compile(r"^(A|B|A/B) wall s?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.MULTILINE)


def _baseline_tree(rev: str, parent: Path) -> tuple[Path, Path]:
    """Check out ``rev`` in ``parent/tree``; a ``parent/site/hippogan`` of links to its packages for PYTHONPATH."""
    tree, site = parent / "tree", parent / "site"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)  # fmt: skip
    (site / "hippogan").mkdir(parents=True)
    for name in PACKAGES:
        (site / "hippogan" / name).symlink_to(tree / name)
    return tree, site


def _farm_bench(a: list[str], b: list[str], runs: int, env: dict[str, str]) -> dict[str, float]:
    """Median wall seconds of A and B (run in turns) and the median of their paired ratio."""
    command = ["farm-bench", "-n", str(runs), "--warmup", "1", "--timeout", "3000", "--vs", shlex.join(b), "--", *a]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    if not (re.search(r"^A exit 0 ", out, re.MULTILINE) and re.search(r"^B exit 0 ", out, re.MULTILINE)):
        raise RuntimeError(f"a benchmarked command failed:\n{out}")
    medians = {m.group(1): float(m.group(3)) for m in _MEDIAN.finditer(out)}
    return {"a": medians["A"], "b": medians["B"], "ratio": medians["A/B"]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="ef9c6b4", help="commit of the baseline release (default: 0.3.0)")
    parser.add_argument("--baseline-name", default="0.3.0")
    parser.add_argument("--dataset-dir", type=Path, default=ROOT.parent / "shared/data/msd_hippocampus")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every command")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/release_speed.md")
    args = parser.parse_args(argv)
    crops = sorted((args.dataset_dir / "imagesTr").resolve().glob("hippocampus_*.nii.gz"))[: args.cases]
    if len(crops) < 2:
        raise SystemExit(f"--dataset-dir {args.dataset_dir}: fewer than 2 crops in imagesTr/")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree, site = _baseline_tree(args.baseline, tmp / "baseline")
        try:
            rows = []
            for name, extra in (("default (ensemble)", []), ("--single-model", ["--single-model"])):
                figures = {}
                for n in (1, len(crops)):
                    inputs = [str(c) for c in crops[:n]]
                    ours = [sys.executable, "-m", "hippogan.pipeline", "segment", *inputs, "--out",
                            str(tmp / f"ours{n}"), "--no-progress", *extra]  # fmt: skip
                    base = ["sh", "-c", f"cd {shlex.quote(str(tree))} && PYTHONPATH={shlex.quote(str(site))} exec "
                            + shlex.join([sys.executable, "-m", "hippogan.pipeline", "segment", *inputs, "--out",
                                          str(tmp / f"base{n}"), "--no-progress"])]  # fmt: skip
                    figures[n] = _farm_bench(ours, base, args.runs, env)
                    print(f"{name}, {n} crop(s): {figures[n]}", flush=True)
                n = len(crops)
                per_crop = {k: (figures[n][k] - figures[1][k]) / (n - 1) for k in ("a", "b")}
                rows.append((name, figures, per_crop))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    n = len(crops)
    lines = [
        f"# `hippogan segment` on MSD crops: this checkout against {args.baseline_name} ({args.baseline}), side by side",
        "",
        f"Written by `python benchmarks/bench_release_speed.py --cases {args.cases} --runs {args.runs} "
        f"--threads {args.threads}` (the module docstring gives the method; {args.threads} torch threads; "
        f"medians of {args.runs} paired runs; the machine's other jobs inflate seconds alike for both).",
        "",
        f"| this checkout | start-up + 1 crop, s | {args.baseline_name}, s | ratio | {n} crops, s | "
        f"{args.baseline_name}, s | ratio | per crop, s | {args.baseline_name} per crop, s | per-crop ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures, per_crop in rows:
        lines.append(
            f"| {name} | {figures[1]['a']:.2f} | {figures[1]['b']:.2f} | {figures[1]['ratio']:.2f} | "
            f"{figures[n]['a']:.2f} | {figures[n]['b']:.2f} | {figures[n]['ratio']:.2f} | {per_crop['a']:.3f} | "
            f"{per_crop['b']:.3f} | {per_crop['a'] / per_crop['b']:.2f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
