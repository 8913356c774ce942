"""EMCAD decoder blocks (Rahman et al., "EMCAD: Efficient Multi-scale Convolutional Attention Decoding
for Medical Image Segmentation", CVPR 2024), with optional XAttnRes routing on the decoder side.

Blocks (2D only):

* :class:`CAB`  channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, MLP = 1x1 conv
  ``C -> C/r`` (no bias), ReLU, 1x1 conv ``C/r -> C`` (no bias); ``r = 16``, or ``C`` when ``C < 16``.
* :class:`SAB`  spatial attention: ``sigmoid(Conv7x7([mean_c(x), max_c(x)]))`` (2 -> 1, no bias).
* :class:`MSCB` multi-scale convolution block: 1x1 conv ``C -> 2C`` + BN + ReLU6; parallel depthwise
  ``k x k`` convs (k = 1, 3, 5), each + BN + ReLU6, summed; channel shuffle; 1x1 conv ``2C -> C`` + BN;
  identity residual (stride 1, same channels).
* :class:`EUCB` efficient up-convolution block: nearest x2 upsample (or to a given size), depthwise
  3x3 conv + BN + ReLU, 1x1 conv ``C_in -> C_out`` (with bias).
* :class:`LGAG` large-kernel grouped attention gate: ``x * sigmoid(BN(Conv1x1(ReLU(W_g g + W_x x))))``
  with ``W_g``, ``W_x`` = grouped 3x3 conv ``C -> C/2`` (``C/2`` groups, bias) + BN.
* :class:`EMCADDecoder` the four-stage cascade (see its docstring), optionally with XAttnRes.

All convolutions of the decoder are initialised with ``normal(std=0.02)`` weights and zero biases,
batch norms with unit weight and zero bias, as in the reference implementation.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xattnres_monai.networks.blocks.xattnres import QUERY_INITS, XAttnRes
from xattnres_monai.utils.options import as_bool, as_choice, as_int, as_int_sequence

__all__ = ["CAB", "SAB", "MSCB", "EUCB", "LGAG", "EMCADDecoder", "channel_shuffle", "init_emcad_weights"]


def _check_2d(name: str, spatial_dims: int) -> None:
    if as_int(spatial_dims, f"{name}: spatial_dims") != 2:
        raise ValueError(f"{name}: only spatial_dims=2 is supported (EMCAD is a 2D decoder), got {spatial_dims!r}.")


def _odd_kernel(value: object, name: str) -> int:
    """A positive odd kernel size (``"3"`` is parsed), as one line naming the option."""
    size = as_int(value, name, min=1)
    if size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {value!r}.")
    return size


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view ``(B, g*c, H, W)`` as ``(B, g, c, H, W)``, swap ``g`` and ``c``, flatten back."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def init_emcad_weights(module: nn.Module) -> None:
    """EMCAD initialisation: convolutions ``normal(0, 0.02)`` with zero bias; batch norms weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CAB(nn.Module):
    """Channel attention block; returns the attention map ``(B, C, 1, 1)`` (the caller multiplies).

    Args:
        spatial_dims: must be 2.
        channels: channels ``C`` of the input.
        ratio: reduction ratio ``r`` (16); ``C`` is used instead when ``C < r``.

    Example::

        >>> cab = CAB(2, 64)
        >>> cab(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 1, 1])
    """

    def __init__(self, spatial_dims: int, channels: int, ratio: int = 16) -> None:
        super().__init__()
        _check_2d("CAB", spatial_dims)
        channels = as_int(channels, "CAB: channels", min=1)
        ratio = as_int(ratio, "CAB: ratio", min=1)
        if channels < 1 or ratio < 1:
            raise ValueError(f"CAB: channels and ratio must be positive, got channels={channels}, ratio={ratio}.")
        ratio = min(ratio, channels)
        reduced = channels // ratio
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)
        init_emcad_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        peak = self.fc2(self.act(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + peak)


class SAB(nn.Module):
    """Spatial attention block; returns the attention map ``(B, 1, H, W)`` (the caller multiplies).

    Args:
        spatial_dims: must be 2.
        kernel_size: odd size of the convolution over ``[mean_c, max_c]`` (7).

    Example::

        >>> SAB(2)(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 7) -> None:
        super().__init__()
        _check_2d("SAB", spatial_dims)
        kernel_size = _odd_kernel(kernel_size, "SAB: kernel_size")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SAB: kernel_size must be a positive odd number, got {kernel_size}.")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        init_emcad_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.mean(x, dim=1, keepdim=True)
        peak = torch.amax(x, dim=1, keepdim=True)
        return torch.sigmoid(self.conv(torch.cat([mean, peak], dim=1)))


class MSCB(nn.Module):
    """Multi-scale convolution block (stride 1, ``in_channels == out_channels``, parallel depthwise branches summed).

    Args:
        spatial_dims: must be 2.
        channels: input and output channels ``C``.
        kernel_sizes: kernel sizes of the parallel depthwise convolutions (1, 3, 5).
        expansion_factor: width of the expanded representation, ``expansion_factor * C`` (2).

    Example::

        >>> MSCB(2, 64)(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(
        self, spatial_dims: int, channels: int, kernel_sizes: Sequence[int] = (1, 3, 5), expansion_factor: int = 2
    ) -> None:
        super().__init__()
        _check_2d("MSCB", spatial_dims)
        channels = as_int(channels, "MSCB: channels", min=1)
        kernel_sizes = as_int_sequence(kernel_sizes, "MSCB: kernel_sizes", min=1, min_length=1)
        kernel_sizes = [_odd_kernel(k, f"MSCB: kernel_sizes[{i}]") for i, k in enumerate(kernel_sizes)]
        expansion_factor = as_int(expansion_factor, "MSCB: expansion_factor", min=1)
        if channels < 1 or expansion_factor < 1 or not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(
                f"MSCB: expected positive channels/expansion_factor and odd kernel sizes, got channels={channels}, "
                f"expansion_factor={expansion_factor}, kernel_sizes={list(kernel_sizes)}."
            )
        expanded = channels * expansion_factor
        self.pconv1 = nn.Sequential(
            nn.Conv2d(channels, expanded, kernel_size=1, bias=False), nn.BatchNorm2d(expanded), nn.ReLU6(inplace=True)
        )
        self.dwconvs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(expanded, expanded, k, padding=k // 2, groups=expanded, bias=False),
                    nn.BatchNorm2d(expanded),
                    nn.ReLU6(inplace=True),
                )
                for k in kernel_sizes
            ]
        )
        # shuffle groups = gcd(expanded, channels) = channels, i.e. 2 channels per group for factor 2
        self.shuffle_groups = channels
        self.pconv2 = nn.Sequential(nn.Conv2d(expanded, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels))
        init_emcad_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expanded = self.pconv1(x)
        branches: List[torch.Tensor] = []
        for branch in self.dwconvs:
            branches.append(branch(expanded))
        summed = branches[0]
        for i in range(1, len(branches)):
            summed = summed + branches[i]
        return x + self.pconv2(channel_shuffle(summed, self.shuffle_groups))


class EUCB(nn.Module):
    """Efficient up-convolution block: upsample (nearest), depthwise 3x3 + BN + ReLU, 1x1 conv to ``out_channels``.

    Args:
        spatial_dims: must be 2.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size (3).

    ``forward(x, size)`` upsamples to ``size`` when given (so odd skip sizes work), else by 2.

    Example::

        >>> EUCB(2, 512, 320)(torch.randn(1, 512, 7, 7)).shape
        torch.Size([1, 320, 14, 14])
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        _check_2d("EUCB", spatial_dims)
        in_channels = as_int(in_channels, "EUCB: in_channels", min=1)
        out_channels = as_int(out_channels, "EUCB: out_channels", min=1)
        kernel_size = _odd_kernel(kernel_size, "EUCB: kernel_size")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"EUCB: channels must be positive, got in={in_channels}, out={out_channels}.")
        self.dwconv = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        # (the reference shuffles with groups = in_channels here, which is the identity)
        self.pwconv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)
        init_emcad_weights(self)

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.pwconv(self.dwconv(x))


class LGAG(nn.Module):
    """Large-kernel grouped attention gate: ``x * sigmoid(BN(Conv1x1(ReLU(W_g g + W_x x))))``.

    Args:
        spatial_dims: must be 2.
        channels: channels ``C`` of both the gating signal ``g`` and the skip ``x``.
        kernel_size: kernel of ``W_g`` and ``W_x`` (3), grouped convolutions ``C -> C/2`` with
            ``C/2`` groups.

    Example::

        >>> gate = LGAG(2, 64)
        >>> gate(torch.randn(1, 64, 8, 8), torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        _check_2d("LGAG", spatial_dims)
        channels = as_int(channels, "LGAG: channels")
        kernel_size = _odd_kernel(kernel_size, "LGAG: kernel_size")
        if channels < 2 or channels % 2:
            raise ValueError(f"LGAG: channels must be an even number >= 2, got {channels}.")
        inter = channels // 2
        groups = inter if kernel_size > 1 else 1
        self.W_g = nn.Sequential(
            nn.Conv2d(channels, inter, kernel_size, padding=kernel_size // 2, groups=groups, bias=True),
            nn.BatchNorm2d(inter),
        )
        self.W_x = nn.Sequential(
            nn.Conv2d(channels, inter, kernel_size, padding=kernel_size // 2, groups=groups, bias=True),
            nn.BatchNorm2d(inter),
        )
        self.act = nn.ReLU(inplace=True)
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, kernel_size=1, bias=True), nn.BatchNorm2d(1), nn.Sigmoid())
        init_emcad_weights(self)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        psi = self.psi(self.act(self.W_g(g) + self.W_x(x)))
        return x * psi


class EMCADDecoder(nn.Module):
    """The EMCAD decoder cascade, optionally with XAttnRes routing over a global history pool.

    With encoder maps ``[e1, e2, e3, e4]`` (finest first) and channels ``C4 > C3 > C2 > C1``::

        stage 4:  u4 = e4                        [r4 = XAttnRes(H, u4) if xattnres else u4]
                  d4 = MSCB4(SA(CA4(r4)))        with CA(x) = CAB(x) * x, SA(x) = SAB(x) * x
        stage j:  u_j = EUCB_j(d_{j+1})          (upsampled to e_j's size), j = 3, 2, 1
                  r_j = XAttnRes(H, u_j) if xattnres else u_j
                  r_j = r_j + LGAG_j(g=r_j, x=e_j)        if skip
                  d_j = MSCB_j(SA(CA_j(r_j)))

    ``SAB`` is one module shared by the four stages. The history pool ``H`` starts as
    ``[e1, e2, e3, e4]`` and every decoder output is appended (``d4``, then ``d3``, ``d2``), so the
    XAttnRes block of stage 4 reads 4 entries, of stage 3 five, of stage 2 six and of stage 1 seven
    (plus the stage input itself as the last value, Eq. 5). This is Eq. 11 of the XAttnRes paper with
    EMCAD's ``EUCB`` as ``Up``; for stage 4, which has no ``Up``, the block reads ``e4`` as its input
    (so ``e4`` enters twice: once as history entry, once as the current feature).

    Args:
        spatial_dims: must be 2.
        channels: decoder channels, coarse to fine (the encoder's ``[C4, C3, C2, C1]``;
            ``(512, 320, 128, 64)`` for PVTv2-B1..B5).
        skip: keep the LGAG skip path (off: ``r_j = u_j``, the "no skip" / "replace" ablations).
        xattnres: add an XAttnRes block at the input of every stage.
        query_init: pseudo-query initialisation of the XAttnRes blocks.
        kernel_sizes: MSCB depthwise kernel sizes (1, 3, 5).
        expansion_factor: MSCB expansion factor (2).
        lgag_kernel_size: LGAG kernel size (3).

    ``forward([e1, e2, e3, e4])`` returns ``[d4, d3, d2, d1]`` (coarse to fine). The decoder with
    ``channels=(512, 320, 128, 64)``, skips and no XAttnRes has 1,913,515 parameters.

    Example::

        >>> decoder = EMCADDecoder(2, (512, 320, 128, 64))
        >>> feats = [torch.randn(1, c, 56 // 2**i, 56 // 2**i) for i, c in enumerate((64, 128, 320, 512))]
        >>> [d.shape[1] for d in decoder(feats)]
        [512, 320, 128, 64]
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int] = (512, 320, 128, 64),
        skip: bool = True,
        xattnres: bool = False,
        query_init: str = "zero",
        kernel_sizes: Sequence[int] = (1, 3, 5),
        expansion_factor: int = 2,
        lgag_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        _check_2d("EMCADDecoder", spatial_dims)
        channels = as_int_sequence(channels, "EMCADDecoder: channels")
        skip = as_bool(skip, "EMCADDecoder: skip")
        xattnres = as_bool(xattnres, "EMCADDecoder: xattnres")
        query_init = as_choice(query_init, "EMCADDecoder: query_init", QUERY_INITS)
        kernel_sizes = as_int_sequence(kernel_sizes, "EMCADDecoder: kernel_sizes", min=1, min_length=1)
        expansion_factor = as_int(expansion_factor, "EMCADDecoder: expansion_factor", min=1)
        lgag_kernel_size = _odd_kernel(lgag_kernel_size, "EMCADDecoder: lgag_kernel_size")
        if len(channels) != 4:
            raise ValueError(
                f"EMCADDecoder: expected 4 channel counts (coarse to fine), got {len(channels)} ({channels})."
            )
        if min(channels) < 2:
            raise ValueError(f"EMCADDecoder: channel counts must be >= 2, got {channels}.")
        self.channels = channels
        self.skip = skip
        self.xattnres = xattnres
        c4, c3, c2, c1 = channels

        self.cab4 = CAB(spatial_dims, c4)
        self.mscb4 = MSCB(spatial_dims, c4, kernel_sizes, expansion_factor)
        self.eucb3 = EUCB(spatial_dims, c4, c3)
        self.cab3 = CAB(spatial_dims, c3)
        self.mscb3 = MSCB(spatial_dims, c3, kernel_sizes, expansion_factor)
        self.eucb2 = EUCB(spatial_dims, c3, c2)
        self.cab2 = CAB(spatial_dims, c2)
        self.mscb2 = MSCB(spatial_dims, c2, kernel_sizes, expansion_factor)
        self.eucb1 = EUCB(spatial_dims, c2, c1)
        self.cab1 = CAB(spatial_dims, c1)
        self.mscb1 = MSCB(spatial_dims, c1, kernel_sizes, expansion_factor)
        self.sab = SAB(spatial_dims)  # shared by the four stages

        self.lgag3 = LGAG(spatial_dims, c3, lgag_kernel_size) if skip else None
        self.lgag2 = LGAG(spatial_dims, c2, lgag_kernel_size) if skip else None
        self.lgag1 = LGAG(spatial_dims, c1, lgag_kernel_size) if skip else None

        # history pool layout: encoder maps (fine to coarse), then decoder outputs (coarse to fine)
        pool = [c1, c2, c3, c4]
        routings: List[Optional[XAttnRes]] = []
        for c in channels:
            routings.append(XAttnRes(spatial_dims, c, list(pool), query_init=query_init) if xattnres else None)
            pool.append(c)
        self.routing4 = routings[0]
        self.routing3 = routings[1]
        self.routing2 = routings[2]
        self.routing1 = routings[3]

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Args:
        features: the encoder maps ``[e1, e2, e3, e4]``, finest first, with channels
            ``channels[::-1]``.

        Returns:
            ``[d4, d3, d2, d1]``, the decoder stage outputs, coarse to fine.
        """
        if len(features) != 4:
            raise ValueError("EMCADDecoder: expected 4 encoder maps [e1, e2, e3, e4], got " + str(len(features)) + ".")
        e1, e2, e3, e4 = features[0], features[1], features[2], features[3]
        history: List[torch.Tensor] = [e1, e2, e3, e4]  # global feature history pool (XAttnRes Eq. 3)
        cache: Dict[str, torch.Tensor] = {}  # resized history entries shared by the XAttnRes blocks

        # stage 4
        d = e4
        if self.routing4 is not None:
            d = self.routing4(d, history, cache)
        d = self.cab4(d) * d
        d = self.sab(d) * d
        d = self.mscb4(d)
        history.append(d)
        outputs: List[torch.Tensor] = [d]

        # stage 3
        d = self.eucb3(d, [e3.shape[2], e3.shape[3]])
        if self.routing3 is not None:
            d = self.routing3(d, history, cache)
        if self.lgag3 is not None:
            d = d + self.lgag3(d, e3)
        d = self.cab3(d) * d
        d = self.sab(d) * d
        d = self.mscb3(d)
        history.append(d)
        outputs.append(d)

        # stage 2
        d = self.eucb2(d, [e2.shape[2], e2.shape[3]])
        if self.routing2 is not None:
            d = self.routing2(d, history, cache)
        if self.lgag2 is not None:
            d = d + self.lgag2(d, e2)
        d = self.cab2(d) * d
        d = self.sab(d) * d
        d = self.mscb2(d)
        history.append(d)
        outputs.append(d)

        # stage 1
        d = self.eucb1(d, [e1.shape[2], e1.shape[3]])
        if self.routing1 is not None:
            d = self.routing1(d, history, cache)
        if self.lgag1 is not None:
            d = d + self.lgag1(d, e1)
        d = self.cab1(d) * d
        d = self.sab(d) * d
        d = self.mscb1(d)
        outputs.append(d)
        return outputs
