"""Long batch runs of ``hippogan segment``: throughput and peak memory from 50 to 500 scans, and resume after a kill.

Each size runs in a fresh process (``--no-qc``, label maps and ``volumes.csv``) over links to the 200 shared MSD
crops, cycled under distinct names; peak memory is that process's maximum resident set size (``wait4``).
The resume check kills a 100-scan run halfway (SIGKILL), reruns it with ``--resume`` and counts what was redone.

    python benchmarks/bench_batch.py --sizes 50 500 --threads 2 --out benchmarks/results/batch.md
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MSD = Path(os.environ.get("HIPPOGAN_DATA", ROOT.parent / "shared" / "data")) / "msd_hippocampus" / "imagesTr"


def make_inputs(folder: Path, n: int) -> Path:
    """``folder`` with ``n`` links ``scan_0000.nii.gz`` ... to the shared MSD crops, cycled."""
    sources = sorted(MSD.glob("hippocampus_*.nii.gz"))
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"scan_{i:04d}.nii.gz").symlink_to(sources[i % len(sources)])
    return folder


def command(inputs: Path, out: Path, threads: int, *extra: str) -> list[str]:
    cli = [sys.executable, "-m", "hippogan.pipeline", "segment", str(inputs), "--out", str(out)]
    return [*cli, "--no-qc", "--no-progress", "--device", "cpu", "--threads", str(threads), *extra]


def run(cmd: list[str], kill_after: float | None = None) -> tuple[float, float, int]:
    """Run ``cmd``; returns (wall seconds, peak RSS in MB, exit code); SIGKILL after ``kill_after`` seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is not None:
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    _, status, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def count_rows(out: Path) -> int:
    table = out / "volumes.csv"
    return sum(1 for _ in table.open()) - 1 if table.is_file() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume-size", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch.md")
    args = parser.parse_args(argv)
    lines = ["| scans | wall s | scans/s | peak RSS MB | exit |", "|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            inputs = make_inputs(Path(tmp) / f"in_{n}", n)
            wall, rss, code = run(command(inputs, Path(tmp) / f"out_{n}", args.threads))
            lines.append(f"| {n} | {wall:.1f} | {n / wall:.2f} | {rss:.0f} | {code} |")
            print(lines[-1], flush=True)
        n = args.resume_size
        inputs, out = make_inputs(Path(tmp) / "in_resume", n), Path(tmp) / "out_resume"
        first, _, _ = run(command(inputs, out, args.threads))
        (Path(tmp) / "out_resume").rename(Path(tmp) / "out_full")
        run(command(inputs, out, args.threads), kill_after=first / 2)
        done = count_rows(out)
        wall, _, code = run(command(inputs, out, args.threads, "--resume"))
        resume = (f"Resume: a {n}-scan run ({first:.1f} s uninterrupted) killed after {first / 2:.1f} s had {done} rows; "
                  f"`--resume` finished the other {count_rows(out) - done} in {wall:.1f} s (exit {code}), "
                  f"{count_rows(out)} rows in all.")  # fmt: skip
        print(resume)
    text = "\n".join(["# Batch runs of `hippogan segment --no-qc`", "", f"`{' '.join(['python', *sys.argv])}`, "
                      f"{args.threads} torch threads, shared 2-core CPU.", "", *lines, "", resume, ""])  # fmt: skip
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
