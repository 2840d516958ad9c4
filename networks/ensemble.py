"""Several segmentation networks as one: the mean of their class probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import CenterSpatialCrop

from hippogan.transforms.context import SagittalContext
from hippogan.transforms.slicing import VOLUME_VIEW, as_plain_tensor, plane_inferer, view_axis

from .empty_planes import EmptyPlaneSkipper

__all__ = ["ProbabilityEnsemble", "MIRROR_CHECK_STRIDE", "mirror_margin"]

MIRROR_CHECK_STRIDE = 4  # the orientation check runs on every 4th plane of a view (16 of the ROI's 64 coronal)


class ProbabilityEnsemble(torch.nn.Module):
    """Average the softmax probabilities of networks that map one input to the same classes.

    Args:
        members: networks ``(B, Cin, *S) -> (B, C, *S)`` logits, ``C >= 2`` classes (e.g. generators trained with
            different seeds or folds).
        views: None: every member sees the input as it is (2D planes under the bundle's plane inferer, or 3D
            volumes). Else one view per member (``sagittal``, ``coronal``, ``axial``, or ``volume``): the input is
            a 3D ROI batch ``(B, Cin, X, Y, Z)``; a 2D member runs over the planes of its own view
            (:func:`~hippogan.transforms.slicing.plane_inferer`), a ``volume`` member (a 3D network) on the whole
            batch: a multi-view ensemble. The members of one view share one pass over its planes; in eval mode
            all-zero planes (the ROI's padding) skip the networks (:class:`~hippogan.networks.EmptyPlaneSkipper`).
        roi_size: with ``views``, the 2D window the members' planes are padded to (voxels).
        sw_batch_size: with ``views``, planes per member call.
        mirror_check: with ``views`` that include ``sagittal`` and another view: pick each sample's left-right
            orientation for the members of the other views (see below). False: they see the ROI as it is.
        volume_roi_size: ``volume`` members run on the centred window of this size (voxels; e.g. the 32x64x64
            ROI a 3D generator trained on, inside the 48x64x64 one that whole-brain boxes need); outside it
            they give background. None: the whole ROI.
        contexts: with ``views``, one per member: the sagittal neighbours on each side stacked as its input channels
            (:class:`~hippogan.transforms.SagittalContext`; a 2.5D generator trained with that ``context`` beside
            1-channel ones). None: every member takes the input as it is.

    Orientation check: a coronal or axial plane holds the left-right (x) axis, so a generator trained on them
    learns the training crops' orientation (the MSD crops all have the left hippocampus's) and fails on a mirrored
    one, e.g. a crop of a right hippocampus (the 200 CV scans mirrored: coronal binary DSC 0.54, not 0.90). A
    sagittal plane does not (mirroring only reverses the planes' order). With ``mirror_check``, the members of
    the other views first run on every :data:`MIRROR_CHECK_STRIDE`-th of their planes of the ROI as given and
    x-mirrored, and per sample the orientation whose hippocampus probability ``1 - p(background)`` agrees better
    (soft Dice) with the sagittal members' there is the one their full pass runs in (``benchmarks/results/
    mirrored_crops.md``: on the 200 CV scans, as given and mirrored, 400 of 400 orientations picked right, the
    closest by 0.15 soft Dice). It costs half a pass of those members more. ``volume`` members (3D generators,
    as orientation-bound as coronal ones) run in the orientation picked for the coronal (or axial) members; without
    such members, on the ROI as given and x-mirrored, and per sample the orientation that agrees better with the
    sagittal members' is kept: one pass of those members more.

    ``forward``: ``(B, Cin, *S)`` -> ``(B, C, *S)``, the log of the members' mean probability, so that it can stand
    where one network's logits do: its softmax is the mean probability and its argmax the ensemble's labels.

    Raises:
        ValueError: no members, or as many views as members not given (or an unknown view).
    """

    def __init__(
        self,
        members: Sequence[torch.nn.Module],
        views: Sequence[str] | None = None,
        roi_size: Sequence[int] = (64, 64),
        sw_batch_size: int = 128,
        mirror_check: bool = True,
        volume_roi_size: Sequence[int] | None = None,
        contexts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("ProbabilityEnsemble: give at least one member network.")
        if views is not None and len(views) != len(members):
            raise ValueError(f"ProbabilityEnsemble: {len(members)} members but {len(views)} views {list(views)}.")
        if contexts is not None and (views is None or len(contexts) != len(members)):
            raise ValueError(
                f"ProbabilityEnsemble: contexts {list(contexts)} need views and one context per member "
                f"({len(members)})."
            )
        self.members = torch.nn.ModuleList(members)
        self.views = None if views is None else tuple(views)
        contexts = [0] * len(members) if contexts is None else contexts
        self._stackers = {c: SagittalContext(c) for c in contexts}  # validates them
        # members sharing a view and a context share one pass: member indices per (view, context)
        groups = {}
        for i, (view, context) in enumerate(zip(self.views or (), contexts)):
            groups.setdefault((view, context), []).append(i)
        self._volume_groups = [(c, ix) for (v, c), ix in groups.items() if v == VOLUME_VIEW]
        self._volume_window = None if volume_roi_size is None else CenterSpatialCrop(tuple(volume_roi_size))
        planes = [v for v in self.views or () if v != VOLUME_VIEW]
        # the check needs sagittal members (the reference) and members of another view
        others = any(view_axis(v) != 0 for v in planes) or bool(self._volume_groups)
        self.mirror_check = mirror_check and others and any(view_axis(v) == 0 for v in planes)
        # per plane view and context, sagittal first (the orientation check's reference): (its axis, context,
        # inferer, member indices, empty-plane skipper)
        self._passes = []
        plane_groups = [(g, ix) for g, ix in groups.items() if g[0] != VOLUME_VIEW]
        for (view, context), indices in sorted(plane_groups, key=lambda group: view_axis(group[0][0]) != 0):
            self._passes.append((view_axis(view), context, plane_inferer(roi_size, sw_batch_size, view=view),
                                 indices, EmptyPlaneSkipper(lambda p, ix=indices: self._mean_probability(p, ix))))

    def _mean_probability(self, x: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([as_plain_tensor(self.members[i](x)).float().softmax(dim=1) for i in indices]).mean(dim=0)

    def _volume_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The ``volume`` members' summed probabilities on ``x`` ``(B, Cin, X, Y, Z)``, within ``volume_roi_size``."""
        window = (slice(None), slice(None))
        if self._volume_window is not None:
            window += tuple(self._volume_window.compute_slices(x.shape[2:]))
        inner = sum(len(ix) * self._mean_probability(self._stackers[c](x[window]), ix) for c, ix in self._volume_groups)
        if self._volume_window is None:
            return inner
        out = inner.new_zeros((x.shape[0], inner.shape[1], *x.shape[2:]))
        out[:, 0] = sum(len(ix) for _, ix in self._volume_groups)  # background outside the window
        out[window] = inner
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            mean = self._mean_probability(x, range(len(self.members)))
            return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()
        total, sagittal, picked = 0.0, 0.0, None  # picked: (B, 1, 1, 1, 1) the orientation check's first verdict
        for axis, context, inferer, indices, skipper in self._passes:
            per_plane = skipper.network if self.training else skipper  # training: no cached zero-plane output

            def run(volume: torch.Tensor) -> torch.Tensor:  # the group's members' summed probabilities
                return len(indices) * as_plain_tensor(inferer(self._stackers[context](volume), per_plane)).float()

            if axis != 0 and self.mirror_check:
                mirrored = (mirror_margin(x, run, sagittal, 2 + axis) > 0).view(-1, *[1] * (x.ndim - 1))
                picked = mirrored if picked is None else picked
                probabilities = _in_orientation(run, x, mirrored)
            else:
                probabilities = run(x)
                if axis == 0:
                    sagittal = sagittal + probabilities
            total = total + probabilities
        if self._volume_groups:
            if not self.mirror_check:
                volume = self._volume_probability(x)
            elif picked is not None:  # the orientation picked for the coronal (or axial) members
                volume = _in_orientation(self._volume_probability, x, picked)
            else:  # both orientations, the one agreeing better with the sagittal members kept
                as_given, flipped = self._volume_probability(x), self._volume_probability(x.flip(2)).flip(2)
                mirrored = _soft_dice(sagittal, flipped) > _soft_dice(sagittal, as_given)
                volume = torch.where(mirrored.view(-1, *[1] * (x.ndim - 1)), flipped, as_given)
            total = total + volume
        mean = total / len(self.members)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def _in_orientation(run, x: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """``run`` (volume -> probabilities) on each sample of ``x`` ``(B, Cin, X, Y, Z)`` x-mirrored where ``mirrored``
    ``(B, 1, 1, 1, 1)`` is true, its output mirrored back: the probabilities on ``x``'s own grid."""
    probabilities = run(torch.where(mirrored, x.flip(2), x))
    return torch.where(mirrored, probabilities.flip(2), probabilities)


def mirror_margin(x: torch.Tensor, run, sagittal: torch.Tensor, plane_dim: int) -> torch.Tensor:
    """Per sample ``(B,)``: how much better a view's members agree with the sagittal members on the x-mirrored ROI
    than on the ROI as given (difference of soft Dice of the hippocampus probability; > 0: mirror it).

    Judged on every :data:`MIRROR_CHECK_STRIDE`-th of the view's planes (dim ``plane_dim`` of ``x``).
    ``x``: ``(B, Cin, X, Y, Z)`` ROI batch; ``run``: volume -> the view's members' summed probabilities;
    ``sagittal``: the sagittal members' summed probabilities on ``x``, ``(B, C, X, Y, Z)``.
    """
    planes = [slice(None)] * x.ndim
    planes[plane_dim] = slice(None, None, MIRROR_CHECK_STRIDE)
    reference, sample = sagittal[tuple(planes)], x[tuple(planes)]
    return _soft_dice(reference, run(sample.flip(2)).flip(2)) - _soft_dice(reference, run(sample))


def _soft_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample ``(B,)``, the soft Dice of the hippocampus probability ``1 - p(background)`` of two ``(B, C, *S)``
    sums of member probabilities (each divided by its class sum, the member count)."""
    fa = 1.0 - a[:, 0] / a.sum(dim=1)
    fb = 1.0 - b[:, 0] / b.sum(dim=1)
    return 2.0 * (fa * fb).flatten(1).sum(1) / (fa.flatten(1).sum(1) + fb.flatten(1).sum(1)).clamp_min(1e-6)
