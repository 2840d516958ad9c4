"""Size and CPU speed of the networks, against MONAI's FlexibleUNet (resnet34) measured in the same run.

For each network, on 2D 64x64 inputs (the paper's sagittal slices): parameters, multiply-accumulates
(``torch.utils.flop_counter.FlopCounterMode``, MACs = FLOPs / 2, convolutions and matrix products only),
median CPU time of a forward pass (eval, inference mode; contiguous and ``channels_last``) and of a
forward + backward pass (train, contiguous), then each figure as a ratio to FlexibleUNet's. Two last lines
time the generator on one volume's worth of slices (eval, ``channels_last``; eager, and frozen TorchScript,
which folds batch norm into the convolutions) against the 0.25 s target.

The timed steps run round-robin (every step once per round, ``--repeats`` rounds), so load from other
processes on a shared machine hits all networks alike; the load average is logged before and after.

Run: ``python benchmarks/bench_networks.py [--batch 32] [--threads 2] [--repeats 5] [--volume-slices 48]``
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
from monai.networks.nets import FlexibleUNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hippogan.networks import ResSEGenerator, SegDiscriminator

__all__ = ["size_figures", "timed_steps", "main"]

logger = logging.getLogger("bench_networks")
TIME_KEYS = ("fwd_ms", "fwd_cl_ms", "fwd_bwd_ms")


def size_figures(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Parameters (millions) and multiply-accumulates of one forward pass on ``x`` (GMAC per batch)."""
    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x)
    return {"params_M": sum(p.numel() for p in net.parameters()) / 1e6, "GMAC": counter.get_total_flops() / 2e9}


def _inference_step(net: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward pass of ``net`` (already in eval mode) on ``x`` in inference mode."""

    def step() -> None:
        with torch.inference_mode():
            net(x)

    return step


def timed_steps(net: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    """Steps to time on a batch ``x`` ``(B, C, H, W)``: eval forward (contiguous, channels_last), train step.

    ``net`` itself is put in train mode for the train step; the forward passes run on eval-mode copies.
    """
    net.train()
    net_eval = copy.deepcopy(net).eval()
    net_cl = copy.deepcopy(net_eval).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def train_step() -> None:
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()

    return {
        "fwd_ms": _inference_step(net_eval, x),
        "fwd_cl_ms": _inference_step(net_cl, x_cl),
        "fwd_bwd_ms": train_step,
    }


def _round_robin_ms(steps: dict[tuple[str, str], Callable[[], None]], repeats: int) -> dict[tuple[str, str], float]:
    """Median milliseconds of each step over ``repeats`` rounds (one warm-up round first)."""
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(1e3 * (time.perf_counter() - start))
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Measure the generator, the discriminator and FlexibleUNet(resnet34); log the table. Returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="slices per batch (default 32)")
    parser.add_argument("--size", type=int, default=64, help="slice side in voxels (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, median reported (default 5)")
    parser.add_argument("--volume-slices", type=int, default=48, help="slices of one volume (default 48)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    image = torch.randn(args.batch, 1, args.size, args.size)
    nets = {
        "ResSEGenerator": (ResSEGenerator(), image),
        "SegDiscriminator": (SegDiscriminator(in_channels=2), torch.randn(args.batch, 2, args.size, args.size)),
        "FlexibleUNet-resnet34": (
            FlexibleUNet(in_channels=1, out_channels=1, backbone="resnet34", pretrained=False, spatial_dims=2),
            image,
        ),
    }
    results = {name: size_figures(net, x) for name, (net, x) in nets.items()}
    steps = {(name, key): step for name, (net, x) in nets.items() for key, step in timed_steps(net, x).items()}

    generator = copy.deepcopy(nets["ResSEGenerator"][0]).eval().to(memory_format=torch.channels_last)
    volume = torch.randn(args.volume_slices, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    volume_nets = {"eager": generator, "frozen TorchScript": torch.jit.freeze(torch.jit.script(generator))}
    steps.update({("volume", label): _inference_step(net, volume) for label, net in volume_nets.items()})

    load_before = os.getloadavg()[0]
    times = _round_robin_ms(steps, args.repeats)
    for (name, key), ms in times.items():
        if name in results:
            results[name][key] = ms

    keys = ("params_M", "GMAC", *TIME_KEYS)
    reference = results["FlexibleUNet-resnet34"]
    logger.info(
        "torch %s, %d threads, input (%d, C, %d, %d), median of %d round-robin runs, load average %.2f -> %.2f",
        torch.__version__, args.threads, args.batch, args.size, args.size, args.repeats, load_before,
        os.getloadavg()[0],
    )  # fmt: skip
    logger.info("ratio columns (x ...) = value / FlexibleUNet-resnet34 value")
    header = f"{'network':<22}" + "".join(f"{k:>12}" for k in keys) + "".join(f"{'x ' + k:>14}" for k in keys)
    logger.info(header)
    logger.info("-" * len(header))
    for name, figures in results.items():
        values = "".join(f"{figures[k]:>12.2f}" for k in keys)
        ratios = "".join(f"{figures[k] / reference[k]:>14.2f}" for k in keys)
        logger.info(f"{name:<22}{values}{ratios}")
    for label in volume_nets:
        logger.info(
            "ResSEGenerator, one volume (%d slices, eval, channels_last, %s): %.3f s (target <= 0.25 s)",
            args.volume_slices, label, times[("volume", label)] / 1e3,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
