"""CPU inference speed and peak memory of the shipped bundle against MONAI UNets; training throughput (issue #5).

Inference (``--threads`` torch threads, default 2), each model in its own worker process so that peak memories
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, resident set, MB) do not mix; this parent process imports only
the standard library, so the ``ru_maxrss`` a worker inherits from it at spawn is negligible (~10 MB):

- **ours**: the shipped bundle through the real code path, ``segmenter_from_bundle(bundle)`` (its
  ``configs/inference.yaml``: ``models/model.pt``, the narrow Res-SEblock generator, ``mode: auto``, LCC on);
- **MONAI 3D UNet**: ``UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
  strides=(2, 2, 2, 2), num_res_units=2)`` with random weights, run by the same ``segmenter_from_bundle`` (same
  ``configs/inference.yaml`` pre- and postprocessing, same LCC) with ``network_def`` and ``ckpt_path`` overridden,
  a ``SimpleInferer`` whole-ROI forward on the ``(B, 1, 48, 64, 64)`` ROI batch, no empty-plane skip;
- **MONAI 2D UNet**: the same UNet with ``spatial_dims=2``, random weights, on the sagittal 64x64 planes (the
  bundle's ``plane_inferer``, empty planes skipped, ``channels_last``), i.e. a drop-in for our generator.

Figures per model: build time (config parse, network, weights, chains; reported apart from the rest);
``Segmenter.segment(path)`` seconds (load, pre-process, network, invert, LCC; nothing written) on ``--cases``
MSD crops and on nilearn's MNI152 1 mm template (whole-brain mode, two ROIs); network-only seconds per volume
(ours and the 2D UNet: the 48 sagittal 64x64 planes of one pre-processed MSD ROI in one batch; the 3D UNet:
that ``(1, 1, 48, 64, 64)`` ROI); peak RSS after the MSD phase and after the whole run, and RSS after imports.
The models take turns (A, B, C, A, B, C, ... per scan and per network call; several rounds), the medians are
reported, and each figure of ours is also given as the ratio ours / baseline.

Training throughput: 2D sagittal planes per second of the bundle's trainer iteration
(``ConditionalGanTrainer._iteration``: prepare batch, G forward, D step when ``adversarial_weight > 0``, G backward
+ step), the trainer built by ``hippogan train``'s code (``build_train_workflow``) from ``configs/train.yaml`` +
``configs/train_cpu.yaml`` (ours; ``adversarial_weight`` 0, so the generator alone) and the same +
``benchmarks/configs/unet2d.yaml`` (MONAI 2D UNet), on a manifest of ``--train-cases`` MSD cases, batch
``--batch`` (16) planes of the recipe's own data loader; the two in turns.

GPU figures are measured only when CUDA is available (otherwise the run says so). On a shared machine the
absolute seconds are inflated by other jobs (the load average is printed with the figures): the ratios, measured
in turns under the same load, are the meaningful figures.

Run: ``python benchmarks/bench_speed.py [--cases 20] [--rounds 2] [--mni-rounds 3] [--threads 2] [--out DIR]``
Writes ``speed.md`` and ``speed.json`` in ``--out`` and logs the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["WORKERS", "Worker", "main", "worker_main"]

logger = logging.getLogger("bench_speed")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
DEFAULT_BUNDLE = ROOT / "bundles" / "hippocampus_resse_gan"  # = hippogan.pipeline.bundled.DEFAULT_BUNDLE (not
# imported: this parent process imports only the standard library, see the module docstring)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "msd_hippocampus"
UNET_KWARGS = {"in_channels": 1, "out_channels": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
               "num_res_units": 2}  # fmt: skip
WORKERS = ("ours", "unet3d", "unet2d")
"""Inference workers: the shipped bundle, MONAI 3D UNet (whole ROI), MONAI 2D UNet (sagittal planes)."""
LABELS = {"ours": "ours (bundle)", "unet3d": "MONAI 3D UNet", "unet2d": "MONAI 2D UNet"}
TARGET_S_PER_VOLUME = 0.25
TARGET_PEAK_MB = 2048.0


# ------------------------------------------------------------------------------------------------ worker side


def _rss_mb() -> dict[str, float]:
    """Peak RSS of this process (``ru_maxrss``, MB), and the kernel's own high-water mark and current RSS (MB)."""
    import resource

    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_hwm_mb": int(status["VmHWM"].split()[0]) / 1024,
        "vm_rss_mb": int(status["VmRSS"].split()[0]) / 1024,
    }


class _InferenceModel:
    """One model in a worker: the bundle's segmenter (``segmenter_from_bundle``) and timings of it and its network.

    ``ours`` is the bundle as shipped; the UNets are the same ``configs/inference.yaml`` with ``network_def`` and
    ``ckpt_path`` overridden (random weights saved to a temporary file), and for the 3D UNet a ``SimpleInferer``
    over the whole ROI, without the 2D-only empty-plane skip and ``channels_last``.
    """

    def __init__(self, kind: str, bundle: Path, device: str) -> None:
        import torch
        from monai.bundle import ConfigParser

        from hippogan.pipeline.segmenter import segmenter_from_bundle

        self.torch = torch
        self.device = torch.device(device)
        self.kind = kind
        self._weights = tempfile.TemporaryDirectory(prefix="bench_speed_weights_")
        overrides: dict[str, Any] = {"device": f"$torch.device('{device}')"}
        if kind != "ours":
            network_def = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3 if kind == "unet3d" else 2,
                           **UNET_KWARGS}  # fmt: skip
            torch.manual_seed(0)
            weights = Path(self._weights.name) / f"{kind}.pt"
            torch.save(ConfigParser({"net": network_def}).get_parsed_content("net").state_dict(), weights)
            overrides |= {"network_def": network_def, "ckpt_path": str(weights)}
        if kind == "unet3d":
            overrides |= {"inferer": {"_target_": "SimpleInferer"}, "evaluator#skip_empty": False,
                          "evaluator#channels_last": False}  # fmt: skip
        self.segmenter = segmenter_from_bundle(bundle, overrides)
        self.network_input: Any = None

    def params_m(self) -> float:
        return sum(p.numel() for p in self.segmenter.network.parameters()) / 1e6

    def segment(self, path: str) -> float:
        start = time.perf_counter()
        self.segmenter.segment(path)
        return self._sync(start)

    def prepare_network(self, path: str) -> list[int]:
        """Pre-process ``path`` with the segmenter's own chain to its ``(1, 1, 48, 64, 64)`` ROI, shaped for this
        network alone (the 2D nets: its 48 sagittal planes, ``channels_last``)."""
        from hippogan.transforms.slicing import volume_to_sagittal

        samples = self.segmenter.preprocessing({"image": path})
        sample = samples[0] if isinstance(samples, (list, tuple)) else samples
        roi = self.torch.as_tensor(sample["image"])[None]
        if self.kind == "unet3d":
            x = roi
        else:
            x = volume_to_sagittal(roi).contiguous(memory_format=self.torch.channels_last)
        self.network_input = x.to(self.device)
        return list(self.network_input.shape)

    def network(self) -> float:
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.segmenter.network(self.network_input)
        return self._sync(start)

    def _sync(self, start: float) -> float:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


TRAINING_CONFIGS = {"ours": ["train_cpu.yaml"], "unet2d": ["train_cpu.yaml", str(CONFIGS / "unet2d.yaml")]}
"""The timed trainings: the bundle's CPU recipe, and the same with MONAI's 2D UNet (``bench_accuracy``'s models)."""


class _TrainingModels:
    """The bundle's trainers of :data:`TRAINING_CONFIGS`, built by ``hippogan train``'s code on a few MSD cases.

    Each is ``build_train_workflow`` (``configs/train.yaml`` + the model's files, ``batch_size`` = ``batch``) on a
    temporary manifest of ``cases`` (the last one validates), initialised; the timed batches are the recipe's own
    (the first model's data loader: labelled planes plus a share of empty ones, augmented), the same for both.
    """

    def __init__(self, bundle: Path, data: Path, cases: list[str], batch: int, device: str) -> None:
        import csv

        import torch

        from hippogan.pipeline.manifest import MANIFEST_COLUMNS
        from hippogan.pipeline.train_cli import build_train_workflow

        self.torch = torch
        self.device = torch.device(device)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench_speed_train_")
        root = Path(self._tmp.name)
        manifest = root / "manifest.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for index, name in enumerate(cases):
                stem = name[: -len(".nii.gz")]
                fold = 0 if index == len(cases) - 1 else 1
                row = {"subject_id": stem, "image": f"imagesTr/{name}", "label": f"labelsTr/{name}", "fold": fold}
                writer.writerow(row)
        overrides = {"batch_size": batch, "num_workers": 0, "device": f"$torch.device('{device}')",
                     "amp": self.device.type == "cuda"}  # fmt: skip
        self.trainers = {}
        for name, configs in TRAINING_CONFIGS.items():
            torch.manual_seed(0)
            workflow = build_train_workflow(data, root / name, fold=0, configs=configs, overrides=overrides,
                                            bundle_root=bundle, manifest=manifest)  # fmt: skip
            workflow.initialize()
            self.trainers[name] = workflow.parser.get_parsed_content("train#trainer")
        loader = next(iter(self.trainers.values())).data_loader
        self.batches = [b for b in loader if len(b["image"]) == batch]
        self.step = 0

    def train(self, name: str, iterations: int) -> list[float]:
        """Seconds of each of ``iterations`` trainer iterations of ``name``."""
        trainer, seconds = self.trainers[name], []
        for _ in range(iterations):
            batch = self.batches[self.step % len(self.batches)]
            self.step += 1
            start = time.perf_counter()
            trainer._iteration(trainer, batch)
            if self.device.type == "cuda":
                self.torch.cuda.synchronize(self.device)
            seconds.append(time.perf_counter() - start)
        return seconds


def worker_main(kind: str, threads: int, device: str) -> int:
    """Serve JSON commands (one a line on stdin, one JSON answer a line on the original stdout) for ``kind``."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries go to stderr, not into the answers
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(threads)
    after_import = _rss_mb()
    model: Any = None
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request["cmd"]
        if cmd == "quit":
            break
        start = time.perf_counter()
        if cmd == "load" and kind == "train":
            data = Path(request["data"])
            model = _TrainingModels(Path(request["bundle"]), data, request["cases"], request["batch"], device)
            answer: dict[str, Any] = {"seconds": time.perf_counter() - start, "batches": len(model.batches)}
        elif cmd == "load":
            model = _InferenceModel(kind, Path(request["bundle"]), device)
            answer = {"seconds": time.perf_counter() - start, "params_M": model.params_m()}
        elif cmd == "segment":
            answer = {"seconds": model.segment(request["path"])}
        elif cmd == "prepare_network":
            answer = {"shape": model.prepare_network(request["path"])}
        elif cmd == "network":
            answer = {"seconds": model.network()}
        elif cmd == "train":
            answer = {"seconds": model.train(request["name"], request["iterations"])}
        elif cmd == "memory":
            answer = {**_rss_mb(), "after_import": after_import}
        else:
            raise ValueError(f"bench_speed worker: unknown command {cmd!r}")
        answers.write(json.dumps(answer) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ parent side


class Worker:
    """A worker process (``bench_speed.py --worker KIND``); :meth:`ask` sends one command and returns its answer.

    Its stderr goes to a temporary file, shown when the worker fails.
    """

    def __init__(self, kind: str, threads: int, device: str) -> None:
        self.kind = kind
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench_speed_{kind}_", suffix=".log", delete=False)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--threads", str(threads),
                   "--device", device]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env=env, cwd=ROOT)  # fmt: skip

    def ask(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"worker {self.kind} died on {cmd!r} (exit {self.process.returncode}):\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)
        os.unlink(self.log.name)


def _save_mni(path: Path) -> None:
    """Write nilearn's MNI152 1 mm template to ``path`` (in a child process, keeping this one light)."""
    code = "import sys, nibabel, nilearn.datasets as d; nibabel.save(d.load_mni152_template(resolution=1), sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)


def _cuda_available() -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_inference(args: argparse.Namespace, device: str, msd: list[Path], mni: Path) -> dict[str, Any]:
    """Time the three models in turns; returns per-model figures (seconds, MB) and the load averages."""
    workers = {kind: Worker(kind, args.threads, device) for kind in WORKERS}
    try:
        results: dict[str, dict[str, Any]] = {kind: {} for kind in WORKERS}
        for kind, worker in workers.items():  # sequential: build times do not overlap
            answer = worker.ask("load", bundle=str(args.bundle))
            results[kind].update(load_s=answer["seconds"], params_M=answer["params_M"])
            results[kind]["network_input"] = worker.ask("prepare_network", path=str(msd[0]))["shape"]
        loads = {"start": os.getloadavg()}
        for worker in workers.values():  # warm-up (first calls allocate)
            worker.ask("segment", path=str(msd[0]))
            worker.ask("network")
        times: dict[str, dict[str, list[float]]] = {kind: {"msd": [], "mni": [], "net": []} for kind in WORKERS}
        for _ in range(args.rounds):
            for path in msd:
                for kind, worker in workers.items():
                    times[kind]["msd"].append(worker.ask("segment", path=str(path))["seconds"])
            for _ in range(5):
                for kind, worker in workers.items():
                    times[kind]["net"].append(worker.ask("network")["seconds"])
        loads["msd"] = os.getloadavg()
        for kind, worker in workers.items():
            results[kind]["peak_msd"] = worker.ask("memory")
        for _ in range(args.mni_rounds):
            for kind, worker in workers.items():
                times[kind]["mni"].append(worker.ask("segment", path=str(mni))["seconds"])
        loads["mni"] = os.getloadavg()
        for kind, worker in workers.items():
            results[kind]["peak_all"] = worker.ask("memory")
            for key, values in times[kind].items():
                results[kind][f"{key}_s"] = _median(values)
                results[kind][f"{key}_n"] = len(values)
        return {"models": results, "loadavg": loads}
    finally:
        for worker in workers.values():
            worker.close()


def run_training(args: argparse.Namespace, device: str, msd: list[Path]) -> dict[str, Any]:
    """Planes/s of the GAN trainer iteration, ours and the 2D UNet generator, in turns."""
    worker = Worker("train", args.threads, device)
    try:
        cases = [path.name for path in msd[: args.train_cases + 1]]  # the last one validates
        load = worker.ask("load", bundle=str(args.bundle), data=str(args.data), cases=cases, batch=args.batch)
        names = ("ours", "unet2d")
        for name in names:
            worker.ask("train", name=name, iterations=2)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.train_rounds):
            for name in names:
                seconds[name] += worker.ask("train", name=name, iterations=4)["seconds"]
        figures = {name: {"iteration_s": _median(s), "planes_per_s": args.batch / _median(s), "n": len(s)}
                   for name, s in seconds.items()}  # fmt: skip
        return {"batch": args.batch, "batches": load["batches"], "models": figures, "memory": worker.ask("memory"),
                "loadavg": os.getloadavg()}  # fmt: skip
    finally:
        worker.close()


def _table(inference: dict[str, Any], training: dict[str, Any], device: str) -> list[str]:
    models = inference["models"]
    ours = models["ours"]
    rows = [
        ("build (load) time, s", "load_s", "{:.2f}", ""),
        ("parameters, M", "params_M", "{:.2f}", ""),
        ("segment() per MSD volume, s (median)", "msd_s", "{:.3f}", f"<= {TARGET_S_PER_VOLUME}"),
        ("network only per volume, s (median)", "net_s", "{:.4f}", ""),
        ("segment() per whole-brain MNI152 scan, s (median)", "mni_s", "{:.3f}", ""),
        ("peak RSS after MSD phase, MB", ("peak_msd", "ru_maxrss_mb"), "{:.0f}", f"<= {TARGET_PEAK_MB:.0f}"),
        ("peak RSS whole run (MSD + MNI), MB", ("peak_all", "ru_maxrss_mb"), "{:.0f}", f"<= {TARGET_PEAK_MB:.0f}"),
        ("RSS after imports, MB", ("peak_all", "after_import", "vm_rss_mb"), "{:.0f}", ""),
    ]
    baselines = [kind for kind in WORKERS if kind != "ours"]
    header = ["figure (" + device + ")", LABELS["ours"]]
    for kind in baselines:
        header += [LABELS[kind], f"ours / {kind}"]
    header.append("target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def pick(figures: dict[str, Any], key: str | tuple[str, ...]) -> float:
        for part in (key,) if isinstance(key, str) else key:
            figures = figures[part]
        return float(figures)  # type: ignore[arg-type]

    for label, key, fmt, target in rows:
        cells = [label, fmt.format(pick(ours, key))]
        for kind in baselines:
            value = pick(models[kind], key)
            cells += [fmt.format(value), f"{pick(ours, key) / value:.2f}"]
        cells.append(target)
        lines.append("| " + " | ".join(cells) + " |")
    train = training["models"]
    ours_pps, unet_pps = train["ours"]["planes_per_s"], train["unet2d"]["planes_per_s"]
    cells = [f"training, planes/s (bundle trainer iteration, batch {training['batch']})", f"{ours_pps:.1f}",
             "(3D: not run)", "",
             f"{unet_pps:.1f}", f"{ours_pps / unet_pps:.2f}", ""]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, log the table and write ``speed.md`` / ``speed.json`` into ``--out``. Returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: the shipped)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HIPPOGAN_DATA", DEFAULT_DATA)),
                        help="MSD folder (imagesTr/, labelsTr/); default $HIPPOGAN_DATA or ../shared/data")  # fmt: skip
    parser.add_argument("--cases", type=int, default=20, help="MSD scans timed (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the MSD scans (default 2)")
    parser.add_argument("--mni-rounds", type=int, default=3, help="rounds on the MNI152 scan (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per worker (default 2)")
    parser.add_argument("--batch", type=int, default=16, help="training batch, planes (default 16)")
    parser.add_argument("--train-cases", type=int, default=6, help="MSD cases whose planes feed training (default 6)")
    parser.add_argument("--train-rounds", type=int, default=4, help="training rounds of 4 iterations (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--worker", choices=(*WORKERS, "train"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.threads, args.device)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images = args.data / "imagesTr"
    msd = sorted(images.glob("*.nii.gz"))[: args.cases]
    if len(msd) < args.cases:
        raise ValueError(f"{images}: expected at least {args.cases} NIfTI files (--data), found {len(msd)}.")
    started = time.perf_counter()
    devices = ["cpu"]
    if _cuda_available():
        devices.append("cuda:0")
    else:
        logger.info("CUDA is not available: CPU figures only (no GPU figures).")
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads,
                    "processor": platform.processor() or platform.machine()},  # fmt: skip
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
        "cases": [path.name for path in msd],
        "results": {},
    }
    md = [
        "# Inference and training speed (issue #5)",
        "",
        f"Written by `python benchmarks/bench_speed.py` ({args.cases} MSD scans x {args.rounds} rounds, MNI152 x "
        f"{args.mni_rounds}, {args.threads} torch threads; the module docstring gives the method). Each model ran in "
        "its own worker process (peak RSS = its `ru_maxrss`), the models in turns, medians reported. `segment()` = "
        "`Segmenter.segment(path)`: load, pre-process, network, invert, LCC (nothing written). Baselines: random "
        "weights, same `segmenter_from_bundle` chains; the 3D UNet forward is a `SimpleInferer` on the 48x64x64 ROI. "
        "Training: the bundle's trainers (train_cpu.yaml: generator alone; + unet2d.yaml). The machine "
        "is shared with other jobs: absolute seconds are inflated, the ratios are the meaningful figures. Under "
        "heavy load (load average above the 2 cores) 2 OpenMP threads can run slower than 1, more so for a deep "
        "net of many small layers (ours) than for a shallow one, so the ratios then lean against ours.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        mni = Path(tmp) / "mni152_1mm.nii.gz"
        _save_mni(mni)
        for device in devices:
            logger.info("[%s] inference: %d MSD scans x %d rounds, MNI152 x %d, in turns...", device, len(msd),
                        args.rounds, args.mni_rounds)  # fmt: skip
            inference = run_inference(args, device, msd, mni)
            logger.info("[%s] training throughput...", device)
            training = run_training(args, device, msd)
            report["results"][device] = {"inference": inference, "training": training}
            table = _table(inference, training, device)
            loads = inference["loadavg"]
            md += [
                f"## {device}, {args.threads} torch threads",
                "",
                *table,
                "",
                "Load average (1, 5, 15 min): " + "; ".join(
                    f"{phase} {', '.join(f'{v:.2f}' for v in values)}" for phase, values in loads.items()
                ) + f"; training {', '.join(f'{v:.2f}' for v in training['loadavg'])}.",
                "",
            ]  # fmt: skip
    report["wall_s"] = time.perf_counter() - started
    if len(devices) == 1:
        md += ["CUDA not available on this machine: no GPU figures.", ""]
    md += [f"Wall time of the benchmark: {report['wall_s']:.0f} s.", ""]
    text = "\n".join(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "speed.md").write_text(text)
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
