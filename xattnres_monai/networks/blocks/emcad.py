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
* :class:`EMCADStage` one decoder stage's blocks (``EUCB``, XAttnRes, ``LGAG``, ``CAB``, ``MSCB``).
* :class:`EMCADDecoder` the four-stage cascade (see its docstring), optionally with XAttnRes.

All convolutions of the decoder are initialised with ``normal(std=0.02)`` weights and zero biases,
batch norms with unit weight and zero bias, as in the reference implementation.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, MutableMapping, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.utils import InterpolateMode
from torch import nn

from xattnres_monai.networks.blocks.xattnres import QUERY_INITS, XAttnRes
from xattnres_monai.utils.options import as_bool, as_choice, as_int, as_int_sequence

__all__ = [
    "CAB",
    "SAB",
    "MSCB",
    "EUCB",
    "LGAG",
    "EMCADStage",
    "EMCADDecoder",
    "channel_shuffle",
    "init_emcad_weights",
    "upgrade_emcad_decoder_key",
]


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
        self.upsample_mode: str = InterpolateMode.NEAREST.value
        init_emcad_weights(self)

    def forward(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode=self.upsample_mode)
        else:
            x = F.interpolate(x, size=size, mode=self.upsample_mode)
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


#: state-dict names of the decoder before its stages became an ``nn.ModuleList`` (``cab4``, ``eucb3``, ...):
#: ``<block><stage number>`` with stage numbers 4 (coarsest) .. 1; the stage with number ``n`` is ``stages[4 - n]``.
_LEGACY_DECODER_KEY = re.compile(r"(?:(cab|mscb|routing)([1-4])|(eucb|lgag)([1-3]))\.(.+)", re.DOTALL)
_LEGACY_BLOCK_NAMES = {"cab": "cab", "mscb": "mscb", "routing": "routing", "eucb": "up", "lgag": "gate"}


def upgrade_emcad_decoder_key(name: str) -> str:
    """The current name of an :class:`EMCADDecoder` state-dict key (relative to the decoder) saved by an older version.

    Older versions named the blocks of decoder stage ``n`` (4 = coarsest .. 1 = finest) ``cab<n>``, ``mscb<n>``,
    ``eucb<n>``, ``lgag<n>`` and ``routing<n>``; they now live in ``stages[4 - n]`` as ``cab``, ``mscb``, ``up``,
    ``gate`` and ``routing``. Every other name (current names included) is returned unchanged::

        >>> upgrade_emcad_decoder_key("eucb3.pwconv.weight")
        'stages.1.up.pwconv.weight'
        >>> upgrade_emcad_decoder_key("routing4.query")
        'stages.0.routing.query'
        >>> upgrade_emcad_decoder_key("sab.conv.weight")
        'sab.conv.weight'
    """
    match = _LEGACY_DECODER_KEY.fullmatch(name)
    if match is None:
        return name
    block, number = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return f"stages.{4 - int(number)}.{_LEGACY_BLOCK_NAMES[block]}.{match.group(5)}"


def _upgrade_keys_in_place(state_dict: MutableMapping[str, Any], prefix: str, upgrade: Any) -> None:
    """Rename, in place, the keys under ``prefix`` whose part after it ``upgrade`` maps to a new name."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + upgrade(key[len(prefix) :])
        if new != key and new not in state_dict:
            state_dict[new] = state_dict.pop(key)


class EMCADStage(nn.Module):
    """The blocks of one EMCAD decoder stage, applied by :class:`EMCADDecoder` (which holds the shared ``SAB``).

    ``enter(x, skip, history, cache)`` computes the stage input ``r_j``: ``up`` (``EUCB``, to ``skip``'s size),
    then ``routing`` (XAttnRes over the history pool), then ``r_j + gate(r_j, skip)`` (``LGAG``), each only where
    present; the decoder then applies ``cab``, the shared ``SAB`` and ``mscb``.

    Args:
        cab: the stage's channel attention.
        mscb: the stage's multi-scale convolution block.
        up: the ``EUCB`` from the previous (coarser) stage; ``None`` for the first stage.
        gate: the ``LGAG`` skip gate; ``None`` for the first stage and without skips.
        routing: the XAttnRes block; ``None`` without XAttnRes.

    The blocks are built by the caller (so that :class:`EMCADDecoder` creates, and randomly initialises, them in
    the same order as before the stages were a list) and registered in forward order.
    """

    def __init__(
        self,
        cab: CAB,
        mscb: MSCB,
        up: Optional[EUCB] = None,
        gate: Optional[LGAG] = None,
        routing: Optional[XAttnRes] = None,
    ) -> None:
        super().__init__()
        for name, block, kind in (("cab", cab, CAB), ("mscb", mscb, MSCB), ("up", up, EUCB), ("gate", gate, LGAG)):
            if (block is not None or name in ("cab", "mscb")) and not isinstance(block, kind):
                raise ValueError(f"EMCADStage: {name} must be a {kind.__name__}, got {type(block).__name__}.")
        if routing is not None and not isinstance(routing, XAttnRes):
            raise ValueError(f"EMCADStage: routing must be an XAttnRes block or None, got {type(routing).__name__}.")
        self.up = up
        self.routing = routing
        self.gate = gate
        self.cab = cab
        self.mscb = mscb

    def enter(
        self, x: torch.Tensor, skip: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The stage input: ``x`` (the previous stage's output) upsampled, routed and gated with ``skip``."""
        up = self.up
        if up is not None:
            x = up(x, [skip.shape[2], skip.shape[3]])
        routing = self.routing
        if routing is not None:
            x = routing(x, history, cache)
        gate = self.gate
        if gate is not None:
            x = x + gate(x, skip)
        return x


class EMCADDecoder(nn.Module):
    """The EMCAD decoder cascade, optionally with XAttnRes routing over a global history pool.

    With encoder maps ``[e1, e2, e3, e4]`` (finest first) and channels ``C4 > C3 > C2 > C1``::

        stage 4:  u4 = e4                        [r4 = XAttnRes(H, u4) if xattnres else u4]
                  d4 = MSCB4(SA(CA4(r4)))        with CA(x) = CAB(x) * x, SA(x) = SAB(x) * x
        stage j:  u_j = EUCB_j(d_{j+1})          (upsampled to e_j's size), j = 3, 2, 1
                  r_j = XAttnRes(H, u_j) if xattnres else u_j
                  r_j = r_j + LGAG_j(g=r_j, x=e_j)        if skip
                  d_j = MSCB_j(SA(CA_j(r_j)))

    The blocks of stage ``j`` are ``stages[4 - j]`` (:class:`EMCADStage`: ``up`` = ``EUCB_j``, ``routing``,
    ``gate`` = ``LGAG_j``, ``cab`` = ``CA_j``, ``mscb`` = ``MSCB_j``), coarse to fine like the outputs;
    ``SAB`` is one module shared by the four stages (``sab``). The history pool ``H`` starts as
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

    State dicts saved by older versions (blocks named ``cab4``, ``eucb3``, ``lgag3``, ``routing4`` ...) are
    renamed when loaded (see :func:`upgrade_emcad_decoder_key`), so they load strictly.

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

        # the blocks are created in the order of the original hand-unrolled decoder (stage 4's CAB and MSCB, then
        # EUCB, CAB, MSCB of stages 3, 2, 1; the shared SAB; the LGAGs; the XAttnRes blocks), so that a given seed
        # initialises them exactly as before
        ups: List[Optional[EUCB]] = [None]
        cabs: List[CAB] = []
        mscbs: List[MSCB] = []
        for i, c in enumerate(channels):
            if i > 0:
                ups.append(EUCB(spatial_dims, channels[i - 1], c))
            cabs.append(CAB(spatial_dims, c))
            mscbs.append(MSCB(spatial_dims, c, kernel_sizes, expansion_factor))
        sab = SAB(spatial_dims)  # shared by the four stages
        gates: List[Optional[LGAG]] = [None] + [
            LGAG(spatial_dims, c, lgag_kernel_size) if skip else None for c in channels[1:]
        ]
        # history pool layout: encoder maps (fine to coarse), then decoder outputs (coarse to fine)
        pool = list(channels[::-1])
        routings: List[Optional[XAttnRes]] = []
        for c in channels:
            routings.append(XAttnRes(spatial_dims, c, list(pool), query_init=query_init) if xattnres else None)
            pool.append(c)
        self.stages = nn.ModuleList(
            [EMCADStage(cabs[i], mscbs[i], up=ups[i], gate=gates[i], routing=routings[i]) for i in range(4)]
        )
        self.sab = sab

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints of older versions: cab4 -> stages.0.cab, eucb3 -> stages.1.up, ...
        _upgrade_keys_in_place(state_dict, prefix, upgrade_emcad_decoder_key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Args:
        features: the encoder maps ``[e1, e2, e3, e4]``, finest first, with channels
            ``channels[::-1]``.

        Returns:
            ``[d4, d3, d2, d1]``, the decoder stage outputs, coarse to fine.
        """
        if len(features) != 4:
            raise ValueError("EMCADDecoder: expected 4 encoder maps [e1, e2, e3, e4], got " + str(len(features)) + ".")
        history: List[torch.Tensor] = [features[0], features[1], features[2], features[3]]  # global pool (Eq. 3)
        cache: Dict[str, torch.Tensor] = {}  # resized history entries shared by the XAttnRes blocks
        outputs: List[torch.Tensor] = []
        d = features[3]
        for i, stage in enumerate(self.stages):  # stage 4 (e4 as its input) .. stage 1
            d = stage.enter(d, features[3 - i], history, cache)
            d = stage.cab(d) * d
            d = self.sab(d) * d
            d = stage.mscb(d)
            history.append(d)  # (d1 too, read by no one)
            outputs.append(d)
        return outputs
