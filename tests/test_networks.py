"""Tests of hippogan.networks: shapes, ablation switches, configs, gradients, SE ratio, TorchScript, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.blocks import ChannelSELayer
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from hippogan.networks import (
    ABLATION_VARIANTS,
    FactorizedInception,
    PlainBlock,
    ResSEGenerator,
    SegDiscriminator,
    factorized_kernels,
)

README = Path(__file__).resolve().parents[1] / "networks" / "README.md"
NARROW_2D = {"channels": (8, 8, 16, 16), "decoder_channels": (32, 16, 16, 16, 16)}
NARROW_3D = {"channels": (4, 4, 8, 8), "decoder_channels": (8, 8, 8, 8, 8), "se_reduction": 4}
NARROW_D = {"channels": (8, 16, 16)}


def _readme_configs() -> list[dict]:
    """Every ```json block of networks/README.md that holds a ``_target_``."""
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    return [cfg for cfg in map(json.loads, blocks) if "_target_" in cfg]


def _build(config: dict) -> nn.Module:
    return ConfigParser({"net": config}).get_parsed_content("net")


@pytest.mark.parametrize("variant", list(ABLATION_VARIANTS))
@pytest.mark.parametrize("out_channels", [1, 3])
@pytest.mark.parametrize("inception", [True, False])
def test_generator_shape_2d(variant: str, out_channels: int, inception: bool) -> None:
    net = ResSEGenerator(2, 1, out_channels, inception=inception, **ABLATION_VARIANTS[variant], **NARROW_2D)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, out_channels, 64, 64)


@pytest.mark.parametrize("variant", list(ABLATION_VARIANTS))
@pytest.mark.parametrize("out_channels", [1, 3])
def test_generator_shape_3d(variant: str, out_channels: int) -> None:
    net = ResSEGenerator(3, 1, out_channels, **ABLATION_VARIANTS[variant], **NARROW_3D).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 48, 64, 64)).shape == (1, out_channels, 48, 64, 64)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize(
    ("spatial_dims", "shape", "padded_shape", "narrow"),
    [(2, (35, 51), (64, 64), NARROW_2D), (3, (20, 27, 33), (32, 32, 64), NARROW_3D)],
)
def test_generator_odd_sizes_pad_and_crop_back(spatial_dims, shape, padded_shape, narrow, pad_mode) -> None:
    """A size that is not a multiple of 32 is padded (centred) to one and the output cropped back."""
    net = ResSEGenerator(spatial_dims, 1, 3, pad_mode=pad_mode, **narrow).eval()
    x = torch.randn(1, 1, *shape)
    starts = [(p - s) // 2 for s, p in zip(shape, padded_shape)]
    pads = [v for s, p, a in reversed(list(zip(shape, padded_shape, starts))) for v in (a, p - s - a)]
    with torch.no_grad():
        y = net(x)
        reference = net(torch.nn.functional.pad(x, pads, mode=pad_mode))
    assert y.shape == (1, 3, *shape)
    crop = tuple(slice(a, a + s) for a, s in zip(starts, shape))
    torch.testing.assert_close(y, reference[(..., *crop)])


def test_default_generator_is_resnet34_without_download() -> None:
    net = ResSEGenerator()
    encoder = net.encoder
    assert encoder.out_channels == (64, 64, 128, 256, 512)
    stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert all(isinstance(block, ResNetBlock) for s in stages for block in s)
    plain = ResSEGenerator(encoder="plain", **NARROW_2D).encoder
    assert all(isinstance(block, PlainBlock) for block in plain.layer3)
    assert not any("downsample" in name for name, _ in plain.named_modules())


def test_generator_from_config_parser() -> None:
    config = {"_target_": "hippogan.networks.ResSEGenerator", "spatial_dims": 2, "out_channels": 3, "se": False}
    net = _build({**config, **{k: list(v) for k, v in NARROW_2D.items()}})
    assert isinstance(net, ResSEGenerator)
    assert not any(isinstance(m, ChannelSELayer) for m in net.modules())
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("config", _readme_configs(), ids=lambda c: c["_target_"].rsplit(".", 1)[-1])
def test_readme_configs_build_and_have_the_documented_shapes(config: dict) -> None:
    """networks/README.md's generators (ours, MONAI UNet, AttentionUnet) and discriminator, 2D 64x64.

    Every generator's output, as probabilities, conditions a SegDiscriminator with the image.
    """
    net = _build(config).eval()
    x = torch.randn(2, config["in_channels"], 64, 64)
    with torch.no_grad():
        y = net(x)
        if config["_target_"].endswith("SegDiscriminator"):
            assert y.shape == (2, 1)
            return
        assert y.shape == (2, config["out_channels"], 64, 64)
        discriminator = SegDiscriminator(2, x.shape[1] + y.shape[1], **NARROW_D)
        assert discriminator(torch.cat([x, y.sigmoid()], dim=1)).shape == (2, 1)


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "patch_output", "expected"),
    [
        (2, (64, 64), False, (2, 1)),
        (2, (64, 64), True, (2, 1, 8, 8)),
        (2, (35, 51), True, (2, 1, 5, 7)),
        (3, (48, 64, 64), False, (2, 1)),
        (3, (48, 64, 64), True, (2, 1, 6, 8, 8)),
    ],
)
def test_discriminator_shapes(spatial_dims, shape, patch_output, expected) -> None:
    net = SegDiscriminator(spatial_dims, 4, patch_output=patch_output, **NARROW_D)
    with torch.no_grad():
        assert net(torch.randn(2, 4, *shape)).shape == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResSEGenerator(2, 1, 3, **NARROW_2D),
        lambda: ResSEGenerator(2, 1, 1, encoder="plain", se=False, inception=False, **NARROW_2D),
        lambda: ResSEGenerator(2, 1, 3, stem_skip=8, **NARROW_2D),
        lambda: SegDiscriminator(2, 2, **NARROW_D),
        lambda: SegDiscriminator(2, 2, patch_output=True, **NARROW_D),
    ],
    ids=["res-se-inception", "plain", "stem-skip", "discriminator", "patch-discriminator"],
)
def test_gradients_reach_every_parameter(make) -> None:
    """One backward pass reaches every weight (also the SE's single hidden unit at 16 channels and r = 16)."""
    net = make()
    in_channels = 1 if isinstance(net, ResSEGenerator) else 2
    y = net(torch.randn(2, in_channels, 35, 51))
    (y * torch.randn_like(y)).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("se_reduction", [16, 8])
def test_se_reduction_sets_the_excitation_width(se_reduction: int) -> None:
    net = ResSEGenerator(se_reduction=se_reduction, **NARROW_2D)
    se_layers = [m for m in net.modules() if isinstance(m, ChannelSELayer)]
    assert len(se_layers) == 5
    widths = [(layer.fc[0].in_features, layer.fc[0].out_features) for layer in se_layers]
    assert widths == [(c, c // se_reduction) for c in NARROW_2D["decoder_channels"]]
    default_widths = [m.fc[0].out_features for m in ResSEGenerator().modules() if isinstance(m, ChannelSELayer)]
    assert default_widths == [256 // 16, 128 // 16, 64 // 16, 32 // 16, 16 // 16]


@pytest.mark.parametrize(
    ("spatial_dims", "expected"),
    [(2, {(1, 1), (1, 3), (3, 1), (1, 5), (5, 1)}), (3, {(1, 1, 1), (1, 1, 3), (1, 3, 1), (3, 1, 1)})],
)
def test_inception_kernels_are_factorised(spatial_dims: int, expected: set) -> None:
    block = FactorizedInception(spatial_dims, 16, 16, kernel_sizes=(3, 5) if spatial_dims == 2 else (3,))
    kernels = {m.kernel_size for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))}
    assert kernels == expected
    assert factorized_kernels(3, 2) == [(1, 3), (3, 1)]
    with torch.no_grad():
        assert block(torch.randn(1, 16, *[9] * spatial_dims)).shape == (1, 16, *[9] * spatial_dims)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: ResSEGenerator(2, 1, 3, **NARROW_2D), (2, 1, 35, 51)),
        (lambda: ResSEGenerator(2, 1, 1, encoder="plain", se=False, inception=False, **NARROW_2D), (2, 1, 64, 64)),
        (lambda: ResSEGenerator(3, 1, 3, **NARROW_3D), (1, 1, 20, 27, 33)),
        (lambda: ResSEGenerator(2, 1, 3, stem_skip=8, **NARROW_2D), (2, 1, 35, 51)),
        (lambda: ResSEGenerator(3, 1, 3, stem_skip=4, **NARROW_3D), (1, 1, 20, 27, 33)),
        (lambda: SegDiscriminator(2, 2, **NARROW_D), (2, 2, 35, 51)),
        (lambda: SegDiscriminator(3, 2, patch_output=True, **NARROW_D), (1, 2, 20, 27, 33)),
    ],
    ids=["generator", "generator-plain", "generator-3d", "stem-skip", "stem-skip-3d", "discriminator",
         "patch-discriminator-3d"],
)
def test_torchscript_matches_eager(make, shape: tuple) -> None:
    """MONAI's ``monai.bundle ckpt_export`` scripts the network (torch 2.13 deprecates ``torch.jit.script``, silenced
    in setup.cfg: the bundle tool still uses it), so every network must script and match eager mode."""
    net = make().eval()
    scripted = torch.jit.script(net)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "memory_format"),
    [(2, (2, 1, 35, 51), torch.channels_last), (3, (1, 1, 20, 27, 33), torch.channels_last_3d)],
)
def test_channels_last_matches_contiguous(spatial_dims, shape, memory_format) -> None:
    net = ResSEGenerator(spatial_dims, 1, 3, **(NARROW_2D if spatial_dims == 2 else NARROW_3D)).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = net(x)
        net = net.to(memory_format=memory_format)
        torch.testing.assert_close(net(x.contiguous(memory_format=memory_format)), expected, rtol=1e-4, atol=1e-4)


def test_stem_skip_feeds_full_resolution_features_to_the_last_decoder_scale() -> None:
    """``stem_skip=C``: the last decoder scale gets a ``(B, C, H, W)`` skip at the input's resolution (the paper's
    finest skip is the stride-2 stem); ``stem_skip=0`` adds no parameter, so the paper's state dicts still load."""
    paper = ResSEGenerator(2, 1, 3, **NARROW_2D)
    skip = ResSEGenerator(2, 1, 3, stem_skip=8, **NARROW_2D).eval()
    assert paper.stem_skip is None
    assert set(skip.state_dict()) - set(paper.state_dict()) == {k for k in skip.state_dict() if k.startswith("stem_skip.")}
    seen = {}
    skip.decoder[-1].register_forward_hook(lambda module, args, out: seen.update(skip=args[1].shape))
    with torch.no_grad():
        skip(torch.randn(2, 1, 64, 64))
    assert seen["skip"] == (2, 8, 64, 64)
    assert skip.decoder[-1].adjust.conv.in_channels == NARROW_2D["decoder_channels"][-2] + 8


def test_out_act() -> None:
    logits_net = ResSEGenerator(out_channels=3, **NARROW_2D).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits = logits_net(x)
        for out_act, expected in (("sigmoid", torch.sigmoid(logits)), ("softmax", torch.softmax(logits, dim=1))):
            net = ResSEGenerator(out_channels=3, out_act=out_act, **NARROW_2D).eval()
            net.load_state_dict(logits_net.state_dict())
            torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoder": "vgg"},
        {"spatial_dims": 4},
        {"spatial_dims": 1},
        {"in_channels": 0},
        {"out_act": "relu"},
        {"out_act": "softmax", "out_channels": 1},
        {"pad_mode": "circular"},
        {"channels": (64, 128, 256)},
        {"layers": (3, 4, 0, 3)},
        {"decoder_channels": (256, 128, 64, 32)},
        {"se_reduction": 32},
        {"se_reduction": 0},
        {"inception_kernels": (2,)},
        {"stem_skip": -1},
    ],
)
def test_generator_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ResSEGenerator(**kwargs)


def test_generator_rejects_wrong_input_rank() -> None:
    with pytest.raises(ValueError, match="spatial axes"):
        ResSEGenerator(**NARROW_2D)(torch.randn(1, 1, 8, 8, 8))


@pytest.mark.parametrize(
    "kwargs", [{"spatial_dims": 4}, {"in_channels": 1}, {"channels": ()}, {"channels": (8, 0)}, {"kernel_size": 2}]
)
def test_discriminator_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SegDiscriminator(**kwargs)


def test_probability_ensemble_is_the_mean_probability():
    from hippogan.networks import ProbabilityEnsemble

    torch.manual_seed(0)
    members = [torch.nn.Conv2d(1, 3, 3, padding=1) for _ in range(3)]
    x = torch.randn(2, 1, 8, 8)
    out = ProbabilityEnsemble(members)(x)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out.softmax(1), expected)
    torch.testing.assert_close(ProbabilityEnsemble(members[:1])(x).softmax(1), members[0](x).softmax(1))
    with pytest.raises(ValueError, match="at least one member"):
        ProbabilityEnsemble([])


def test_multi_view_ensemble_runs_each_member_over_its_own_planes():
    from hippogan.networks import ProbabilityEnsemble
    from hippogan.transforms import plane_inferer

    torch.manual_seed(0)
    members = [torch.nn.Conv2d(1, 3, 3, padding=1) for _ in range(2)]
    volume = torch.randn(1, 1, 48, 64, 64)
    with torch.no_grad():
        out = ProbabilityEnsemble(members, views=["sagittal", "coronal"], mirror_check=False)(volume)
        views = ["sagittal", "coronal"]
        expected = [torch.as_tensor(plane_inferer(view=v)(volume, m)).softmax(1) for v, m in zip(views, members)]
        expected = torch.stack(expected).mean(0)
        same_view = ProbabilityEnsemble(members, views=["sagittal", "sagittal"])(volume)
        planes = plane_inferer()(volume, ProbabilityEnsemble(members))  # the 2D ensemble under the plane inferer
    assert out.shape == (1, 3, 48, 64, 64)
    torch.testing.assert_close(out.softmax(1), expected)
    torch.testing.assert_close(same_view, torch.as_tensor(planes))
    # zero-padded planes (a crop in its ROI) skip the networks in eval mode, exactly
    padded = torch.nn.functional.pad(torch.randn(1, 1, 40, 50, 64), (0, 0, 7, 7, 4, 4))
    three = members + [torch.nn.Conv2d(1, 3, 3, padding=1)]
    ensemble = ProbabilityEnsemble(three, views=["sagittal", "coronal", "sagittal"])
    with torch.no_grad():
        torch.testing.assert_close(ensemble.eval()(padded), ensemble.train()(padded))
    with pytest.raises(ValueError, match="2 members but 1 views"):
        ProbabilityEnsemble(members, views=["sagittal"])
    with pytest.raises(ValueError, match="sagittal, coronal, axial"):
        ProbabilityEnsemble(members, views=["sagittal", "oblique"])


class _Threshold(torch.nn.Module):
    """A 2D or 3D 'generator' that labels bright voxels hippocampus; with ``left_only`` it finds nothing in a plane
    (or volume) whose bright voxels lie mostly in the second half of its first axis (x, for coronal planes and
    volumes): an orientation-dependent model, as a coronal or 3D generator trained on left-hippocampus crops is."""

    def __init__(self, left_only: bool = False) -> None:
        super().__init__()
        self.left_only = left_only

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        hippocampus = 8.0 * (planes - 0.5)
        if self.left_only:
            half = planes.shape[2] // 2
            mirrored = planes[:, :, half:].flatten(1).sum(1) > planes[:, :, :half].flatten(1).sum(1)
            hippocampus[mirrored] = -8.0
        return torch.cat([torch.zeros_like(planes), hippocampus, torch.full_like(planes, -8.0)], dim=1)


def test_ensemble_volume_member_runs_on_the_whole_roi():
    from hippogan.networks import ProbabilityEnsemble
    from hippogan.transforms import plane_inferer

    torch.manual_seed(0)
    members = [torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Conv3d(1, 3, 3, padding=1)]
    volume = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        out = ProbabilityEnsemble(members, views=["sagittal", "volume"]).eval()(volume)
        sagittal = torch.as_tensor(plane_inferer(roi_size=(16, 16))(volume, members[0])).softmax(1)
        expected = (sagittal + members[1](volume).softmax(1)) / 2
    torch.testing.assert_close(out.softmax(1), expected)


def test_ensemble_volume_member_window_and_orientation_check():
    from hippogan.networks import ProbabilityEnsemble

    volume = torch.zeros(2, 1, 48, 64, 64)
    volume[0, :, 12:22, 20:40, 24:36] = 1.0  # left half of x, inside the centred 32 (8..40)
    volume[1] = volume[0].flip(1)  # a right hippocampus's crop
    truth = volume[:, 0] > 0.5
    members = [_Threshold(), _Threshold(left_only=True)]
    seen = []
    members[1].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[2:]))
    with torch.no_grad():
        ensemble = ProbabilityEnsemble(members, views=["sagittal", "volume"], volume_roi_size=(32, 64, 64)).eval()
        labels = ensemble(volume).argmax(dim=1)
        assert seen == [(32, 64, 64)] * 2  # the 3D member saw its window only, as given and mirrored
        unchecked = ProbabilityEnsemble(members, views=["sagittal", "volume"], mirror_check=False)(volume)
    assert torch.equal(labels == 1, truth) and torch.equal(labels[1], labels[0].flip(0))
    # unchecked, the 3D member vetoes the mirrored crop where the sagittal one is unsure: its probability halves
    assert torch.allclose(unchecked[1].softmax(0)[1][truth[1]], torch.tensor(0.5), atol=0.02)
    # beside a coronal member, the 3D one runs once, in the orientation picked for the coronal one
    seen.clear()
    three = [_Threshold(), _Threshold(left_only=True), members[1]]
    with torch.no_grad():
        labels = ProbabilityEnsemble(three, views=["sagittal", "coronal", "volume"], volume_roi_size=(32, 64, 64))(
            volume
        ).argmax(dim=1)
    assert seen == [(32, 64, 64)] and torch.equal(labels == 1, truth)
    outside = ProbabilityEnsemble([_Threshold()], views=["volume"], volume_roi_size=(32, 64, 64))(volume)
    assert torch.equal(outside.argmax(dim=1)[:, :8], torch.zeros(2, 8, 64, 64, dtype=torch.long))


def test_ensemble_stacks_each_members_sagittal_context():
    """``contexts``: a 2.5D sagittal member (3 channels: planes x - 1, x, x + 1) beside a 1-channel coronal one, as
    each would run alone on its own input."""
    from hippogan.networks import ProbabilityEnsemble
    from hippogan.transforms import SagittalContext, plane_inferer

    torch.manual_seed(0)
    members = [torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(1, 3, 3, padding=1)]
    volume = torch.randn(2, 1, 8, 16, 16)
    views = ["sagittal", "coronal"]
    with torch.no_grad():
        out = ProbabilityEnsemble(members, views=views, roi_size=(16, 16), mirror_check=False, contexts=[1, 0])(volume)
        inputs = [SagittalContext(1)(volume), volume]
        expected = [torch.as_tensor(plane_inferer((16, 16), view=v)(x, m)).softmax(1)
                    for v, m, x in zip(views, members, inputs)]  # fmt: skip
    torch.testing.assert_close(out.softmax(1), torch.stack(expected).mean(0))
    with pytest.raises(ValueError, match="one context per member"):
        ProbabilityEnsemble(members, views=views, contexts=[1])
    with pytest.raises(ValueError, match="need views"):
        ProbabilityEnsemble(members, contexts=[1, 0])
    with pytest.raises(ValueError, match="non-negative integer"):
        ProbabilityEnsemble(members, views=views, contexts=[-1, 0])


def test_multi_view_ensemble_segments_a_mirrored_crop_as_its_mirror():
    from hippogan.networks import ProbabilityEnsemble

    volume = torch.zeros(2, 1, 48, 64, 64)
    volume[0, :, 8:20, 20:40, 24:36] = 1.0  # a structure in the left half of x, as the training crops
    volume[1] = volume[0].flip(1)  # its mirror: a right hippocampus's crop
    members = [_Threshold(), _Threshold(left_only=True)]
    with torch.no_grad():
        labels = ProbabilityEnsemble(members, views=["sagittal", "coronal"]).eval()(volume).argmax(dim=1)
        unchecked = ProbabilityEnsemble(members, views=["sagittal", "coronal"], mirror_check=False)(volume)
    truth = volume[:, 0] > 0.5
    assert torch.equal(labels == 1, truth)  # both orientations segmented
    assert torch.equal(labels[1], labels[0].flip(0))
    assert torch.equal(unchecked.argmax(dim=1)[0] == 1, truth[0])
    assert not (unchecked.argmax(dim=1)[1] == 1).any()  # unchecked, the coronal member vetoes the mirrored crop
