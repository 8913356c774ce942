"""U-Net with Cross-Stage Attention Residuals (the paper's "U-Net + XAttnRes", Sections 3.2-3.3)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Act, Conv, Norm, Pool, split_args
from monai.utils import InterpolateMode
from torch import nn

from xattnres_monai.networks.blocks.dca import DualCrossAttention
from xattnres_monai.networks.blocks.xattnres import QUERY_INITS, XAttnRes
from xattnres_monai.networks.definition import record_definition
from xattnres_monai.networks.utils import check_input, parse_pruned_connections, pool_stage_names
from xattnres_monai.utils.options import as_bool, as_choice, as_int, as_int_sequence

__all__ = ["XAttnResUNet", "DoubleConv", "EncoderStage", "DecoderStage", "XATTNRES_PLACEMENTS"]

#: where XAttnRes aggregation is applied (Table 4): nowhere, encoder stages, decoder stages, or both.
XATTNRES_PLACEMENTS = ("none", "encoder", "decoder", "full")


def _spatial_dims(value: object, owner: str) -> int:
    """``spatial_dims`` checked to be 2 or 3 (``"2"`` is parsed), as one line naming ``owner``."""
    dims = as_int(value, f"{owner}: spatial_dims")
    if dims not in (2, 3):
        raise ValueError(f"{owner}: spatial_dims must be 2 or 3, got {value!r}.")
    return dims


#: a layer given MONAI's way: a name (``"relu"``) or a ``(name, {arguments})`` pair (``("leakyrelu", {"negative_slope": 0.1})``).
LayerOption = Optional[Union[str, Tuple[str, Dict[str, Any]]]]


def _layer_option(value: Any, owner: str, option: str, factory: Any, spatial_dims: int) -> LayerOption:
    """``act`` / ``norm`` checked with MONAI's factory look-up (``Act`` / ``Norm``), as one line naming the option.

    Returns ``value`` unchanged (a list from a JSON config becomes a tuple): :class:`~monai.networks.blocks.Convolution`
    does the construction.
    """
    if value is None:  # no such layer (as MONAI's Convolution takes it)
        return None
    if isinstance(value, list):
        value = tuple(value)
    try:
        name, args = split_args(value)
        if not isinstance(name, str) or not isinstance(args, dict):
            raise TypeError
        if factory is Norm:
            factory[name, spatial_dims]
        else:
            factory[name]
    except Exception:
        choices = ", ".join(sorted(n.lower() for n in factory.names))
        raise ValueError(
            f"{owner}: {option} must be a layer name or a (name, {{arguments}}) pair, the name one of {choices}; "
            f"got {value!r}."
        ) from None
    return value


class DoubleConv(nn.Sequential):
    """Two (3x3 conv without bias, normalisation, activation) layers: the classic U-Net block.

    Like MONAI's ``BasicUNet`` ``TwoConv``: each layer is a :class:`~monai.networks.blocks.Convolution`
    (named ``conv_0``, ``conv_1``) whose ``act`` and ``norm`` are given MONAI's way; the defaults (batch norm,
    ReLU) are the classic block.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        mid_channels: channels between the two convolutions (default ``out_channels``).
        act: activation, a name or ``(name, {arguments})``: ``"relu"`` (default), ``("leakyrelu",
            {"negative_slope": 0.1})``, ``"prelu"`` ... (MONAI's ``Act`` factory); ``None``: none.
        norm: normalisation, a name or ``(name, {arguments})``: ``"batch"`` (default), ``("instance",
            {"affine": True})``, ``("group", {"num_groups": 4})`` ... (MONAI's ``Norm`` factory); ``None``: none.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        mid_channels: Optional[int] = None,
        act: LayerOption = "RELU",
        norm: LayerOption = "BATCH",
    ):
        super().__init__()
        spatial_dims = _spatial_dims(spatial_dims, "DoubleConv")
        in_channels = as_int(in_channels, "DoubleConv: in_channels", min=1)
        out_channels = as_int(out_channels, "DoubleConv: out_channels", min=1)
        if mid_channels is not None:
            mid_channels = as_int(mid_channels, "DoubleConv: mid_channels", min=1)
        act = _layer_option(act, "DoubleConv", "act", Act, spatial_dims)
        norm = _layer_option(norm, "DoubleConv", "norm", Norm, spatial_dims)
        mid_channels = out_channels if mid_channels is None else mid_channels
        for name, (cin, cout) in (("conv_0", (in_channels, mid_channels)), ("conv_1", (mid_channels, out_channels))):
            self.add_module(name, Convolution(spatial_dims, cin, cout, kernel_size=3, act=act, norm=norm, bias=False))


class EncoderStage(nn.Module):
    """Encoder stage ``x_i = f_i(XAttnRes(H, Down(x_{i-1})))`` (Eq. 10); the first stage has no ``Down``.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the previous stage output (or of the image for the first stage).
        out_channels: channels of this stage's output.
        downsample: whether to max-pool by 2 first (all stages but the first).
        routing: the XAttnRes block over the history pool, or ``None`` for plain routing.
        act, norm: activation and normalisation of the :class:`DoubleConv` (MONAI's way; ReLU, batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        downsample: bool,
        routing: Optional[XAttnRes],
        act: LayerOption = "RELU",
        norm: LayerOption = "BATCH",
    ):
        super().__init__()
        spatial_dims = _spatial_dims(spatial_dims, "EncoderStage")
        in_channels = as_int(in_channels, "EncoderStage: in_channels", min=1)
        out_channels = as_int(out_channels, "EncoderStage: out_channels", min=1)
        downsample = as_bool(downsample, "EncoderStage: downsample")
        if routing is not None and not isinstance(routing, XAttnRes):
            raise ValueError(
                f"EncoderStage: routing must be an XAttnRes block or None, got {type(routing).__name__}."
            )
        self.down = Pool[Pool.MAX, spatial_dims](kernel_size=2) if downsample else None
        self.routing = routing
        self.conv = DoubleConv(spatial_dims, in_channels, out_channels, act=act, norm=norm)

    def forward(self, x: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        if self.routing is not None:
            x = self.routing(x, history, cache)
        return self.conv(x)


class DecoderStage(nn.Module):
    """Decoder stage ``x_j = f_j([XAttnRes(H, Up(x_{j+1})); e_j])`` (Eq. 9 and 11).

    ``Up`` is bilinear (trilinear) interpolation to the skip's spatial size, so odd sizes work.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the previous (coarser) stage output.
        skip_channels: channels of the resolution-matched encoder output; 0 for no skip connection.
        out_channels: channels of this stage's output.
        routing: the XAttnRes block over the history pool, or ``None`` for plain routing.
        act, norm: activation and normalisation of the :class:`DoubleConv` (MONAI's way; ReLU, batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        routing: Optional[XAttnRes],
        act: LayerOption = "RELU",
        norm: LayerOption = "BATCH",
    ):
        super().__init__()
        spatial_dims = _spatial_dims(spatial_dims, "DecoderStage")
        in_channels = as_int(in_channels, "DecoderStage: in_channels", min=1)
        skip_channels = as_int(skip_channels, "DecoderStage: skip_channels", min=0)
        out_channels = as_int(out_channels, "DecoderStage: out_channels", min=1)
        if routing is not None and not isinstance(routing, XAttnRes):
            raise ValueError(
                f"DecoderStage: routing must be an XAttnRes block or None, got {type(routing).__name__}."
            )
        self.use_skip = skip_channels > 0
        self.upsample_mode: str = (InterpolateMode.BILINEAR if spatial_dims == 2 else InterpolateMode.TRILINEAR).value
        self.routing = routing
        cat_channels = in_channels + skip_channels
        self.conv = DoubleConv(
            spatial_dims, cat_channels, out_channels, mid_channels=max(cat_channels // 2, out_channels), act=act, norm=norm
        )

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, history: List[torch.Tensor], cache: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode=self.upsample_mode, align_corners=False)
        if self.routing is not None:
            x = self.routing(x, history, cache)
        if self.use_skip:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class XAttnResUNet(nn.Module):
    """U-Net whose stages read from a global history pool through XAttnRes (arXiv 2604.03297).

    A classic U-Net (DoubleConv blocks, max-pool down, bilinear up, one downsampling per encoder
    stage after the first) with an optional XAttnRes block before every encoder stage but the first
    (Eq. 10) and/or every decoder stage (Eq. 11). Every stage output is appended to the history
    pool, which lives only for one forward pass. The routing configurations of Tables 3-4, and
    Dual Cross-Attention on the skip connections for comparison:

    ==============================  ========  ===============================  =========
    configuration                   ``skip``  ``xattnres``                     ``dca``
    ==============================  ========  ===============================  =========
    U-Net baseline                  True      ``"none"``                       False
    U-Net, no skip                  False     ``"none"``                       False
    XAttnRes replaces skips         False     ``"full"``                       False
    XAttnRes + skips (default)      True      ``"full"``                       False
    encoder only / decoder only     either    ``"encoder"`` / ``"decoder"``    False
    U-Net + DCA skips               True      ``"none"``                       True
    DCA skips + XAttnRes            True      any but ``"none"``               True
    ==============================  ========  ===============================  =========

    With ``dca=True`` a :class:`~xattnres_monai.networks.blocks.DualCrossAttention` block refines
    the encoder outputs ``e_1 .. e_{S-1}`` that the decoder concatenates (all but the bottleneck)
    before the decoder reads them; the history pool that XAttnRes reads keeps the raw stage
    outputs. On the default widths DCA adds 33,520 parameters (skips of 16, 32, 64, 128 channels:
    patch size 8, 4 spatial heads, at most 784 tokens); the spatial heads must divide every skip's
    channel count.

    The default widths (16, 32, 64, 128, 128 / 64, 32, 16, 16; decoder blocks with
    ``max((up + skip) // 2, out)`` middle channels) give a 1.08M-parameter baseline, the
    paper's 1.06M within 2%.

    Every option is checked when the network is built: a wrong type or value raises a one-line ``ValueError``
    naming the option, the value and what is expected. Strings as a command line passes them are parsed
    (``skip="false"``, ``dca="TRUE"``, ``xattnres="Full"``, ``out_channels="9"``), never taken for their
    truthiness, so ``python -m monai.bundle run ... --network_def#skip false`` builds the "no skip" network.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input image channels.
        out_channels: output channels (classes, logits).
        encoder_channels: output channels of each encoder stage; ``len - 1`` downsamplings.
        decoder_channels: output channels of each decoder stage, coarse to fine; one fewer than
            ``encoder_channels``.
        skip: keep the U-Net skip connections (concatenation with the matching encoder output).
        xattnres: where XAttnRes is applied: ``"none"``, ``"encoder"``, ``"decoder"`` or ``"full"``.
        query_init: pseudo-query initialisation (Table 5): ``"zero"``, ``"normal"``,
            ``"kaiming_uniform"`` or ``"xavier_uniform"``.
        dca: refine the skip connections with Dual Cross-Attention before the decoder
            concatenates them; requires ``skip=True``.
        act: activation of every :class:`DoubleConv`, MONAI's way (as in ``BasicUNet``): a name or
            ``(name, {arguments})``, e.g. ``("leakyrelu", {"negative_slope": 0.1})``; default ReLU.
        norm: normalisation of every :class:`DoubleConv`, MONAI's way: e.g. ``("instance", {"affine": True})``;
            default batch norm.
        pruned_connections: history connections not read, as ``"block:entry"`` stage names: encoder outputs
            ``e1 .. eS`` (finest first), decoder outputs ``d1 .. d(S-1)`` (``d1`` next to the bottleneck); a block
            is named by the stage it precedes (``e2 .. eS``, ``d1 .. d(S-1)``), e.g. ``["d4:e5", "d4:d1"]``: the
            names of a routing report (:func:`xattnres_monai.routing.weak_connections`). Each pruned connection
            removes that block's 1x1 projection of the entry and its attention weight.

    Example::

        >>> net = XAttnResUNet(spatial_dims=2, in_channels=1, out_channels=9)
        >>> net(torch.randn(2, 1, 224, 224)).shape
        torch.Size([2, 9, 224, 224])
        >>> replace = XAttnResUNet(spatial_dims=3, in_channels=1, out_channels=2, skip=False, xattnres="full")
        >>> dca = XAttnResUNet(spatial_dims=2, in_channels=1, out_channels=9, xattnres="none", dca=True)
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        encoder_channels: Sequence[int] = (16, 32, 64, 128, 128),
        decoder_channels: Sequence[int] = (64, 32, 16, 16),
        skip: bool = True,
        xattnres: str = "full",
        query_init: str = "zero",
        dca: bool = False,
        act: LayerOption = "RELU",
        norm: LayerOption = "BATCH",
        pruned_connections: Sequence[str] = (),
    ) -> None:
        super().__init__()
        # every option is checked (and parsed from the strings a command line gives) first: one-line ValueError
        spatial_dims = _spatial_dims(spatial_dims, "XAttnResUNet")
        in_channels = as_int(in_channels, "XAttnResUNet: in_channels", min=1)
        out_channels = as_int(out_channels, "XAttnResUNet: out_channels", min=1)
        encoder_channels = as_int_sequence(encoder_channels, "XAttnResUNet: encoder_channels", min=1)
        decoder_channels = as_int_sequence(decoder_channels, "XAttnResUNet: decoder_channels", min=1)
        skip = as_bool(skip, "XAttnResUNet: skip")
        xattnres = as_choice(xattnres, "XAttnResUNet: xattnres", XATTNRES_PLACEMENTS)
        query_init = as_choice(query_init, "XAttnResUNet: query_init", QUERY_INITS)
        dca = as_bool(dca, "XAttnResUNet: dca")
        pool_names = pool_stage_names(len(encoder_channels), len(encoder_channels) - 1)
        pruned = parse_pruned_connections(pruned_connections, pool_names, "XAttnResUNet")
        act = _layer_option(act, "XAttnResUNet", "act", Act, spatial_dims)
        norm = _layer_option(norm, "XAttnResUNet", "norm", Norm, spatial_dims)
        if len(encoder_channels) < 2:
            raise ValueError(
                f"XAttnResUNet: encoder_channels needs at least 2 entries (one downsampling), got {encoder_channels}."
            )
        if len(decoder_channels) != len(encoder_channels) - 1:
            raise ValueError(
                f"XAttnResUNet: decoder_channels must have len(encoder_channels) - 1 = {len(encoder_channels) - 1} "
                f"entries, got {len(decoder_channels)} ({decoder_channels})."
            )
        if min(encoder_channels + decoder_channels + [in_channels, out_channels]) < 1:
            raise ValueError("XAttnResUNet: all channel counts must be positive.")
        if dca and not skip:
            raise ValueError(
                "XAttnResUNet: dca=True refines the skip connections, so it needs skip=True (got skip=False)."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.skip = skip
        self.xattnres = xattnres
        record_definition(
            self, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            encoder_channels=encoder_channels, decoder_channels=decoder_channels, skip=skip, xattnres=xattnres,
            query_init=query_init, dca=dca, act=act, norm=norm,
            **({"pruned_connections": sorted(f"{b}:{e}" for b, e in pruned)} if pruned else {}),
        )  # fmt: skip
        unused = set(pruned)

        def routing(name: str, channels: int, history: List[int], enabled: bool) -> Optional[XAttnRes]:
            if not enabled or not history:
                return None
            dropped = [k for k in range(len(history)) if (name, pool_names[k]) in pruned]
            unused.difference_update((name, pool_names[k]) for k in dropped)
            return XAttnRes(spatial_dims, channels, history, query_init=query_init, dropped=dropped)

        pool: List[int] = []  # channel layout of the history pool, in the order stages append to it
        self.encoder = nn.ModuleList()
        previous = in_channels
        for i, channels in enumerate(encoder_channels):
            block = routing(f"e{i + 1}", previous, pool, enabled=xattnres in ("encoder", "full") and i > 0)
            self.encoder.append(
                EncoderStage(spatial_dims, previous, channels, downsample=i > 0, routing=block, act=act, norm=norm)
            )
            pool.append(channels)
            previous = channels
        self.decoder = nn.ModuleList()
        for j, channels in enumerate(decoder_channels):
            skip_channels = encoder_channels[-2 - j] if skip else 0
            block = routing(f"d{j + 1}", previous, pool, enabled=xattnres in ("decoder", "full"))
            self.decoder.append(
                DecoderStage(spatial_dims, previous, skip_channels, channels, routing=block, act=act, norm=norm)
            )
            pool.append(channels)
            previous = channels
        if unused:
            raise ValueError(
                f"XAttnResUNet: pruned_connections {sorted(f'{b}:{e}' for b, e in unused)} are not connections of this "
                f"network (xattnres={xattnres!r}; a block 'eI'/'dJ' reads the stage outputs produced before it)."
            )
        self.head = Conv[Conv.CONV, spatial_dims](previous, out_channels, kernel_size=1)
        # Dual Cross-Attention over the skip maps e_1 .. e_{S-1}, finest first
        self.dca: Optional[DualCrossAttention] = (
            DualCrossAttention(spatial_dims, encoder_channels[:-1]) if dca else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "XAttnResUNet", self.spatial_dims, self.in_channels)
        history: List[torch.Tensor] = []  # the global feature history pool (Eq. 3), one forward pass only
        cache: Dict[str, torch.Tensor] = {}  # resized history entries, shared by all XAttnRes blocks
        for stage in self.encoder:
            x = stage(x, history, cache)
            history.append(x)
        num_encoder = len(self.encoder)
        skips = history[: num_encoder - 1]  # the raw encoder outputs stay in the history pool
        dca = self.dca
        if dca is not None:
            skips = dca(skips)
        for j, stage in enumerate(self.decoder):
            x = stage(x, skips[num_encoder - 2 - j], history, cache)
            history.append(x)
        return self.head(x)
