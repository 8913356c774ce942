"""EMCAD (PVTv2 encoder + EMCAD decoder) with optional XAttnRes routing (the paper's "EMCAD + XAttnRes").

EMCAD (Rahman et al., CVPR 2024) decodes the four PVTv2 stage maps with a cascade of attention and
multi-scale convolution blocks (:class:`~xattnres_monai.networks.blocks.EMCADDecoder`) and predicts
from every decoder stage. Following Section 3.3 of the XAttnRes paper (arXiv 2604.03297), XAttnRes is
applied on the decoder side only, with a history pool holding the encoder maps ``e1 .. e4`` and then
the decoder outputs ``d4, d3, d2``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xattnres_monai.networks.blocks.emcad import EMCADDecoder
from xattnres_monai.networks.blocks.xattnres import QUERY_INITS
from xattnres_monai.networks.nets.pvt import PVT_V2_CONFIGS, PVTv2, _normalise_variant
from xattnres_monai.networks.utils import check_input
from xattnres_monai.utils.options import as_bool, as_choice, as_float, as_int, as_optional_path

__all__ = ["EMCADNet", "emcad_summary", "EMCAD_CONFIGURATIONS", "EMCAD_PAPER_PARAMS"]

#: the EMCAD routing configurations of the ablation (Table 4 of the XAttnRes paper).
EMCAD_CONFIGURATIONS: Dict[str, Dict[str, bool]] = {
    "baseline": {"skip": True, "xattnres": False},
    "no_skip": {"skip": False, "xattnres": False},
    "replace": {"skip": False, "xattnres": True},
    "both": {"skip": True, "xattnres": True},
}

#: parameter counts reported in the XAttnRes paper (Table 2) for EMCAD-B2, binary task.
EMCAD_PAPER_PARAMS: Dict[str, float] = {"baseline": 26.76e6, "both": 28.09e6}


class EMCADNet(nn.Module):
    """EMCAD segmentation network: PVTv2 encoder, EMCAD decoder, four 1x1 prediction heads.

    The four decoder stage outputs (coarse to fine) each go through a 1x1 convolution to
    ``out_channels`` logits and are bilinearly upsampled to the input size. In eval mode (and in
    training without ``deep_supervision``) only the finest head is computed and returned as one
    tensor ``(N, out_channels, H, W)``; in training mode with ``deep_supervision=True`` the four heads
    are returned as a list, coarse to fine (for :class:`~xattnres_monai.losses.MutationLoss`).

    A 1-channel input first passes a learned ``Conv1x1(1 -> 3) + BN + ReLU`` so that the RGB
    (ImageNet) encoder can be used. Any input size works (no multiple-of-32 requirement): the
    decoder upsamples each stage to the size of the next encoder map.

    XAttnRes (``xattnres=True``) adds one block at the input of each decoder stage, see
    :class:`~xattnres_monai.networks.blocks.EMCADDecoder`: stage 4 aggregates over
    ``H = [e1, e2, e3, e4]`` with ``e4`` as its current feature; stages 3, 2, 1 aggregate over
    ``H = [e1, e2, e3, e4, d4, ...]`` with ``EUCB(d_prev)`` (EMCAD's ``Up``) as the current feature,
    before the LGAG skip gate. The routing configurations of the paper's ablation:

    =====================  ========  ============
    configuration          ``skip``  ``xattnres``
    =====================  ========  ============
    EMCAD (baseline)       True      False
    EMCAD, no skip         False     False
    XAttnRes replaces LGAG False     True
    XAttnRes + LGAG        True      True
    =====================  ========  ============

    With PVTv2-B2, a 1-channel input and one output class the baseline has 26,764,411 parameters
    (24,849,856 encoder + 1,913,515 decoder + 1,028 heads + 12 stem), the paper's 26.76M; see
    :func:`emcad_summary` for the other configurations.

    Args:
        spatial_dims: must be 2.
        in_channels: 1 (grey-level, with the learned 1 -> 3 stem) or 3 (RGB, no stem).
        out_channels: number of output channels (classes, logits).
        encoder: PVTv2 variant, ``"b0"`` ... ``"b5"`` (``"pvt_v2_b2"`` also accepted).
        pretrained_path: local PVTv2 ImageNet checkpoint (e.g. ``pvt_v2_b2.pth``) for the encoder,
            loaded with :func:`~xattnres_monai.networks.nets.pvt.load_pvt_pretrained`; nothing is
            downloaded.
        skip: keep EMCAD's LGAG skip path.
        xattnres: add XAttnRes routing to the decoder stages (a bool: ``"false"`` / ``"true"`` as a command line
            gives them are parsed; every option is checked, a wrong one raises a one-line ``ValueError``).
        query_init: pseudo-query initialisation of the XAttnRes blocks (``"zero"``, ``"normal"``,
            ``"kaiming_uniform"``, ``"xavier_uniform"``).
        deep_supervision: in training mode, return the four heads (coarse to fine).
        drop_path_rate: stochastic depth of the encoder (0.1 in EMCAD).

    Example::

        >>> net = EMCADNet(in_channels=1, out_channels=9, deep_supervision=True)
        >>> [p.shape for p in net.train()(torch.randn(2, 1, 224, 224))]  # doctest: +ELLIPSIS
        [torch.Size([2, 9, 224, 224]), ...]
        >>> net.eval()(torch.randn(1, 1, 200, 232)).shape
        torch.Size([1, 9, 200, 232])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        encoder: str = "b2",
        pretrained_path: Optional[str] = None,
        skip: bool = True,
        xattnres: bool = False,
        query_init: str = "zero",
        deep_supervision: bool = False,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        # every option is checked (and parsed from the strings a command line gives) first: one-line ValueError
        if as_int(spatial_dims, "EMCADNet: spatial_dims") != 2:
            raise ValueError(f"EMCADNet: only spatial_dims=2 is supported (PVTv2/EMCAD are 2D), got {spatial_dims!r}.")
        spatial_dims = 2
        in_channels = as_int(in_channels, "EMCADNet: in_channels")
        if in_channels not in (1, 3):
            raise ValueError(
                f"EMCADNet: in_channels must be 1 (grey, learned 1->3 stem) or 3 (RGB), got {in_channels!r}."
            )
        out_channels = as_int(out_channels, "EMCADNet: out_channels", min=1)
        try:
            variant = _normalise_variant(encoder)
        except ValueError:
            raise ValueError(
                f"EMCADNet: encoder must be a PVTv2 variant, one of {sorted(PVT_V2_CONFIGS)} (or 'pvt_v2_<v>'), "
                f"got {encoder!r}."
            ) from None
        pretrained_path = as_optional_path(pretrained_path, "EMCADNet: pretrained_path")
        skip = as_bool(skip, "EMCADNet: skip")
        xattnres = as_bool(xattnres, "EMCADNet: xattnres")
        query_init = as_choice(query_init, "EMCADNet: query_init", QUERY_INITS)
        deep_supervision = as_bool(deep_supervision, "EMCADNet: deep_supervision")
        drop_path_rate = as_float(drop_path_rate, "EMCADNet: drop_path_rate", min=0.0, max=1.0, max_open=True)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.skip = skip
        self.xattnres = xattnres
        self.deep_supervision = deep_supervision

        self.stem = None
        if in_channels != 3:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 3, kernel_size=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True)
            )
        self.encoder = PVTv2(variant, in_channels=3, drop_path_rate=drop_path_rate, pretrained_path=pretrained_path)
        channels = list(PVT_V2_CONFIGS[variant]["embed_dims"])[::-1]  # coarse to fine
        self.decoder = EMCADDecoder(spatial_dims, channels, skip=skip, xattnres=xattnres, query_init=query_init)
        self.head4 = nn.Conv2d(channels[0], out_channels, kernel_size=1)
        self.head3 = nn.Conv2d(channels[1], out_channels, kernel_size=1)
        self.head2 = nn.Conv2d(channels[2], out_channels, kernel_size=1)
        self.head1 = nn.Conv2d(channels[3], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Args:
        x: images ``(N, in_channels, H, W)``, any ``H, W``.

        Returns:
            the finest head's logits ``(N, out_channels, H, W)``, or in training mode with
            ``deep_supervision`` the four heads' logits, coarse to fine, each at ``H x W``.
        """
        check_input(x, "EMCADNet", 2, self.in_channels)
        size = [x.shape[2], x.shape[3]]
        if self.stem is not None:
            x = self.stem(x)
        decoded = self.decoder(self.encoder(x))
        if self.training and self.deep_supervision:
            return [
                F.interpolate(self.head4(decoded[0]), size=size, mode="bilinear", align_corners=False),
                F.interpolate(self.head3(decoded[1]), size=size, mode="bilinear", align_corners=False),
                F.interpolate(self.head2(decoded[2]), size=size, mode="bilinear", align_corners=False),
                F.interpolate(self.head1(decoded[3]), size=size, mode="bilinear", align_corners=False),
            ]
        return F.interpolate(self.head1(decoded[3]), size=size, mode="bilinear", align_corners=False)


def _count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(network: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(total FLOPs, FLOPs of batched matrix products = the attention ``QK^T`` and ``AV``) of one eval forward."""
    counter = FlopCounterMode(display=False)
    network.eval()
    with torch.no_grad(), counter:
        network(torch.zeros(input_shape))
    per_op = counter.get_flop_counts().get("Global", {})
    attention = sum(int(v) for k, v in per_op.items() if "bmm" in str(k))
    return int(counter.get_total_flops()), attention


def emcad_summary(input_sizes: Sequence[int] = (224, 352), in_channels: int = 1, out_channels: int = 1) -> str:
    """Parameter counts of the EMCAD-B2 configurations and forward FLOPs, as a printable table.

    Parameters: PVTv2-B2 encoder alone (no classification head), EMCAD (baseline), EMCAD without
    skips, EMCAD + XAttnRes replacing the LGAG skips, and EMCAD + XAttnRes alongside them (the
    paper's "EMCAD + XAttnRes"), with the paper's numbers (26.76M, 28.09M) where it gives them.

    FLOPs: one ``1 x in_channels x S x S`` image, eval mode (only the finest head), counted with
    ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-accumulate of convolutions
    and matrix products (linear layers and the attention products ``QK^T``, ``AV``); element-wise
    operations, normalisation, softmax, pooling and interpolation are not counted (so XAttnRes adds
    only its 1x1 projections there). The paper's 5.60G for EMCAD matches a multiply-accumulate
    count at 256 x 256 that leaves out the attention products (the convention of hook-based counters
    such as ``thop``, which see only modules, not the functional ``q @ k``): 5.55 GMACs here, within
    1%; it is printed as the last line for comparison. At 224 x 224 the same convention gives 4.25
    GMACs (8.78 GFLOPs as counted here, attention included).

    Why EMCAD + XAttnRes has fewer parameters than the paper's 28.09M: this implementation follows
    the paper's description exactly (Section 3.3, Eq. 4-8 and 11): one XAttnRes block per decoder
    stage (4 blocks), each with a pseudo-query and an RMSNorm gain of ``C`` parameters and a bias-free
    1x1 projection for every history entry whose channel count differs from the stage's (identity
    when equal). That is ``+997,376`` parameters (27.76M), not the paper's ``+1.33M``. The paper's
    code is not public and the difference cannot be pinned down from the text; e.g. giving every
    entry a projection, even when the channels match, would give ``+1,382,400`` (28.15M), and
    placing the blocks before ``EUCB`` (at the previous stage's width) ``+1,137,536`` (27.90M);
    neither reproduces 1.33M either.

    Args:
        input_sizes: square input sizes at which to count FLOPs (empty: parameters only).
        in_channels: input channels of the counted networks (1: with the 1 -> 3 stem, as the paper's
            26.76M).
        out_channels: output classes (1: the paper's binary count).
    """
    rows: List[Tuple[str, int, str]] = []
    encoder_params = _count_parameters(PVTv2("b2"))
    rows.append(("PVTv2-B2 encoder (no head)", encoder_params, "-"))
    names = {
        "baseline": "EMCAD",
        "no_skip": "EMCAD (no skip)",
        "replace": "EMCAD + XAttnRes (replace)",
        "both": "EMCAD + XAttnRes (both)",
    }
    counts: Dict[str, int] = {}
    for key, kwargs in EMCAD_CONFIGURATIONS.items():
        net = EMCADNet(in_channels=in_channels, out_channels=out_channels, encoder="b2", **kwargs)
        counts[key] = _count_parameters(net)
        paper = EMCAD_PAPER_PARAMS.get(key)
        rows.append((names[key], counts[key], f"{paper / 1e6:.2f}M" if paper else "-"))
    lines = [
        f"EMCAD-B2 ({in_channels} input channel(s), {out_channels} output class(es))",
        f"{'configuration':<30}{'params':>14}{'vs EMCAD':>12}{'paper':>9}",
        "-" * 65,
    ]
    for name, params, paper in rows:
        delta = f"{params - counts['baseline']:+,}" if name.startswith("EMCAD") else ""
        lines.append(f"{name:<30}{params:>14,}{delta:>12}{paper:>9}")
    if input_sizes:
        lines.append("")
        lines.append("forward FLOPs, 1 image, eval (FlopCounterMode: 2 per MAC of conv/linear/matmul incl. attention)")
        lines.append(f"{'network':<30}{'size':>6}{'GFLOPs':>10}{'attn GFLOPs':>13}{'GMACs w/o attn':>16}")
        baseline = EMCADNet(in_channels=in_channels, out_channels=out_channels, encoder="b2")
        both = EMCADNet(in_channels=in_channels, out_channels=out_channels, encoder="b2", skip=True, xattnres=True)
        for size in input_sizes:
            for name, net in (("EMCAD", baseline), ("EMCAD + XAttnRes (both)", both)):
                total, attention = _flops(net, (1, in_channels, size, size))
                lines.append(
                    f"{name:<30}{size:>6}{total / 1e9:>10.3f}{attention / 1e9:>13.3f}{(total - attention) / 2e9:>16.3f}"
                )
        total, attention = _flops(baseline, (1, in_channels, 256, 256))
        lines.append(
            f"paper's convention: EMCAD at 256x256, MACs without the attention products = "
            f"{(total - attention) / 2e9:.2f}G (paper: 5.60G; EMCAD + XAttnRes 5.76G)"
        )
    return "\n".join(lines)
