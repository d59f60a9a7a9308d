"""RoIAlign for small feature maps on a CPU, as two matrix products (used by ``cxr_small``).

torchvision's CPU ``roi_align`` computes one bilinear sample at a time, on one
thread, and its backward scatters every sample's gradient the same way. For
``cxr_small`` at 128 px that backward was 45 % of a training step; without it a step
is 2.3x faster at 128 px, 1.7x at 256 px and 1.3x at 384 px. Because
RoIAlign's bins sit on a regular grid, its bilinear weights factor into a row
matrix and a column matrix per box, so pooling box ``r`` of feature map ``F`` is
``Wy[r] @ F @ Wx[r].T``: dense products whose forward and backward run on every
core. The output equals torchvision's up to float rounding (tested), including its
edge rules (samples up to one pixel outside the map are clamped, farther ones are
zero). The cost grows with the map's area, so larger maps, and every GPU, keep
torchvision's kernel (:data:`MAX_DENSE_AREA`).

Only torchvision's public API is used: the two helpers of its pooler that the
multi-scale forward needs (the boxes as RoI rows, the scale and FPN level of each
map) are rewritten here with the same results (:func:`rois_from_boxes`,
:func:`setup_scales`), so a torchvision release that renames its private helpers
does not break the model.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, box_area
from torchvision.ops import roi_align as torchvision_roi_align

from cxrkit.errors import ConfigError

# Largest feature map (rows x columns) pooled with the matrix products. Measured on
# 2 CPU threads (AMD EPYC), 1024 boxes, 64 channels, forward + backward: 5.2x faster
# than torchvision at 4x4, 4.8x at 32x32, 3.0x at 48x48, 1.9x at 64x64
# (benchmarks/bench_roi_align.py); the products' cost grows with the area, torchvision's
# does not. Larger maps were not measured.
MAX_DENSE_AREA = 64 * 64


def _axis_weights(start: Tensor, length: Tensor, bins: int, samples: int, size: int) -> Tensor:
    """``(boxes, bins, size)``: each bin's mean of its bilinear samples along one axis.

    ``start`` and ``length`` are the boxes' first coordinate and extent in feature-map
    cells. The edge rules are torchvision's: a sample below -1 or above ``size`` adds
    nothing, one in ``[-1, 0)`` reads cell 0, one at or past ``size - 1`` reads the
    last cell.
    """

    dtype = start.dtype
    offsets = (torch.arange(bins * samples, dtype=dtype, device=start.device) + 0.5) / samples
    pos = start[:, None] + offsets[None] * (length / bins)[:, None]  # boxes, bins*samples
    inside = ((pos >= -1) & (pos <= size)).to(dtype)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.zeros(*pos.shape, size, dtype=dtype, device=start.device)
    weights.scatter_add_(2, low[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * inside)[..., None])
    return weights.reshape(len(start), bins, samples, size).mean(2)


def separable_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """torchvision's ``roi_align`` (``aligned=False``, fixed ``sampling_ratio > 0``) as matrix products.

    ``features`` is ``(N, C, H, W)``, ``rois`` is ``(K, 5)`` rows of
    ``(image index, x1, y1, x2, y2)`` in image pixels; the result is
    ``(K, C, output_size, output_size)``. Gradients flow to ``features`` only (the
    boxes are proposals, not learned through this op).
    """

    if sampling_ratio <= 0:
        raise ConfigError(
            f"sampling_ratio must be a positive number of samples, not {sampling_ratio}"
        )
    n_images, channels, height, width = features.shape
    boxes = rois.detach().to(features.dtype)
    x1, y1 = boxes[:, 1] * spatial_scale, boxes[:, 2] * spatial_scale
    box_w = (boxes[:, 3] * spatial_scale - x1).clamp(min=1.0)  # torchvision's minimum of 1 cell
    box_h = (boxes[:, 4] * spatial_scale - y1).clamp(min=1.0)
    w_cols = _axis_weights(x1, box_w, output_size, sampling_ratio, width)  # K, out, W
    w_rows = _axis_weights(y1, box_h, output_size, sampling_ratio, height)  # K, out, H
    image_of_box = boxes[:, 0].long()
    pooled = features.new_zeros(len(boxes), channels, output_size, output_size)
    for image in range(n_images):
        idx = torch.where(image_of_box == image)[0]
        if len(idx) == 0:
            continue
        k = len(idx)
        # one GEMM over all boxes of the image pools the rows: (k*out, H) @ (H, C*W)
        rows = w_rows[idx].reshape(k * output_size, height) @ features[image].transpose(
            0, 1
        ).reshape(height, channels * width)
        # then each box's columns: (out*C, W) @ (W, out). The large intermediate stays in
        # the layout the GEMM wrote, so neither pass copies it (2 permutes cost 1/5 of
        # a training step at 384 px when the columns went first).
        out = torch.bmm(rows.reshape(k, output_size * channels, width), w_cols[idx].transpose(1, 2))
        pooled = pooled.index_copy(
            0, idx, out.reshape(k, output_size, channels, output_size).transpose(1, 2)
        )
    return pooled


def roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """The faster of the two for this map: matrix products on small CPU maps, else torchvision."""

    height, width = features.shape[-2:]
    if (
        features.device.type == "cpu"
        and height * width <= MAX_DENSE_AREA
        and min(height, width) > 1
        and sampling_ratio > 0
    ):
        return separable_roi_align(features, rois, output_size, spatial_scale, sampling_ratio)
    return torchvision_roi_align(
        features, rois, (output_size, output_size), spatial_scale, sampling_ratio
    )


# ------------------------------------------- the pooler's bookkeeping (as torchvision's)
def rois_from_boxes(boxes: list[Tensor]) -> Tensor:
    """``(K, 5)`` rows of ``(image index, x1, y1, x2, y2)`` from one ``(n, 4)`` tensor per image.

    The layout :func:`roi_align` takes; the index has the boxes' dtype and device.
    """
    concat = torch.cat(boxes, dim=0)
    ids = torch.cat(
        [
            torch.full_like(
                b[:, :1], i, dtype=concat.dtype, layout=torch.strided, device=concat.device
            )
            for i, b in enumerate(boxes)
        ],
        dim=0,
    )
    return torch.cat([ids, concat], dim=1)


def infer_scale(feature: Tensor, image_size: tuple[int, int]) -> float:
    """A feature map's size over the (padded) input's, rounded to a power of two.

    The network halves the resolution from level to level, so the ratio of the
    heights is ``2 ** -k`` up to padding; torchvision reads it from the heights.
    """
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


class FpnLevelMapper:
    """The FPN level that pools each box (eq. 1 of the FPN paper, as torchvision).

    A box of side ``canonical_scale`` pixels pools from ``canonical_level``; each
    doubling of the side moves one level up, clamped to the levels there are.
    Called with one ``(n, 4)`` box tensor per image, it returns each box's level
    index counted from ``k_min`` (0 is the finest map given).
    """

    def __init__(
        self,
        k_min: int,
        k_max: int,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        side = torch.sqrt(torch.cat([box_area(boxes) for boxes in boxlists]))
        eps = torch.tensor(self.eps, dtype=side.dtype)
        target = torch.floor(self.lvl0 + torch.log2(side / self.s0) + eps)
        target = torch.clamp(target, min=self.k_min, max=self.k_max)
        return (target.to(torch.int64) - self.k_min).to(torch.int64)


def setup_scales(
    features: list[Tensor],
    image_shapes: list[tuple[int, int]],
    canonical_scale: int,
    canonical_level: int,
) -> tuple[list[float], FpnLevelMapper]:
    """Each map's scale and the level rule, from the maps and the batch's image sizes.

    The scales are measured against the largest height and width of the batch (the
    size the images were padded to); the finest and coarsest scale give the range of
    FPN levels (``2 ** -k`` is level ``k``).
    """
    if not image_shapes:
        raise ConfigError(
            "image_shapes is empty: the pooler needs the (height, width) of each image "
            "of the batch to infer the feature maps' scales"
        )
    padded = (max(shape[0] for shape in image_shapes), max(shape[1] for shape in image_shapes))
    scales = [infer_scale(feature, padded) for feature in features]
    lvl_min = -torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item()
    lvl_max = -torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item()
    mapper = FpnLevelMapper(
        int(lvl_min), int(lvl_max), canonical_scale=canonical_scale, canonical_level=canonical_level
    )
    return scales, mapper


class CpuMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same levels, same output) with :func:`roi_align`.

    It keeps the parent's FPN level rule (a box of side 224 px pools from level
    ``canonical_level``) and has no weights, so checkpoints are unchanged.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__(
            featmap_names,
            output_size,
            sampling_ratio,
            canonical_scale=canonical_scale,
            canonical_level=canonical_level,
        )
        if not isinstance(output_size, int) or sampling_ratio <= 0:
            raise ConfigError(
                "CpuMultiScaleRoIAlign pools square bins with a fixed number of samples: "
                f"output_size must be an int and sampling_ratio > 0, not {output_size!r}, "
                f"{sampling_ratio!r}"
            )

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        maps = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = setup_scales(
                maps, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = rois_from_boxes(boxes)
        size = self.output_size[0]
        if len(maps) == 1:
            return roi_align(maps[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        pooled = maps[0].new_zeros(len(rois), maps[0].shape[1], *self.output_size)
        for level, (feature_map, scale) in enumerate(zip(maps, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                part = roi_align(feature_map, rois[idx], size, scale, self.sampling_ratio)
                pooled = pooled.index_copy(0, idx, part.to(pooled.dtype))
        return pooled
