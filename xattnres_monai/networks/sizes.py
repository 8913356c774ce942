"""Sizes of the networks: parameter and FLOP counts, and the tables of the paper's configurations.

The one place where the package counts parameters and FLOPs (library functions; the command line is
:mod:`xattnres_monai.networks.summary`):

* :func:`count_parameters` and :func:`count_flops` / :func:`count_flops_with_attention` for any network;
* :func:`summary_rows` / :func:`format_rows` with :func:`unet_builders`: the U-Net configurations of
  Tables 3-4 (:data:`UNET_CONFIGURATIONS`) side by side;
* :func:`emcad_summary`: the EMCAD-B2 configurations and their FLOPs.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions,
matrix products and attention; element-wise operations, pooling and interpolation are not counted).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xattnres_monai.networks.blocks import DualCrossAttention
from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.nets.emcad import EMCAD_CONFIGURATIONS, EMCAD_PAPER_PARAMS, EMCADNet
from xattnres_monai.networks.nets.pvt import PVTv2
from xattnres_monai.networks.utils import count_parameters

__all__ = [
    "UNET_CONFIGURATIONS",
    "PAPER_PARAMS",
    "DCA_PAPER_SKIPS",
    "DCA_PAPER_OVERHEAD",
    "count_parameters",
    "count_flops",
    "count_flops_with_attention",
    "summary_rows",
    "unet_builders",
    "format_rows",
    "dca_paper_summary",
    "emcad_summary",
]

#: the U-Net routing configurations of Tables 3-4, and Dual Cross-Attention skips (alone and with
#: XAttnRes) for comparison: name -> constructor arguments.
UNET_CONFIGURATIONS: Dict[str, Dict[str, object]] = {
    "baseline": {"skip": True, "xattnres": "none"},
    "no_skip": {"skip": False, "xattnres": "none"},
    "replace": {"skip": False, "xattnres": "full"},
    "both": {"skip": True, "xattnres": "full"},
    "encoder_only": {"skip": True, "xattnres": "encoder"},
    "decoder_only": {"skip": True, "xattnres": "decoder"},
    "dca": {"skip": True, "xattnres": "none", "dca": True},
    "dca_both": {"skip": True, "xattnres": "full", "dca": True},
}

#: the DCA paper's U-Net skip widths and its published DCA overhead (8.64M -> 8.75M parameters).
DCA_PAPER_SKIPS = (32, 64, 128, 256)
DCA_PAPER_OVERHEAD = 0.11e6

#: the paper's reported sizes (Table 2), for comparison.
PAPER_PARAMS = {"baseline": 1.06e6, "both": 1.28e6}


def count_flops_with_attention(network: nn.Module, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """(total FLOPs, FLOPs of the batched matrix products) of one forward of ``network`` on a zero tensor.

    The batched matrix products (``bmm``) are the attention products ``QK^T`` and ``AV``. Eval mode, no
    gradient; the network's training mode is restored afterwards.
    """
    was_training = network.training
    network.eval()
    counter = FlopCounterMode(display=False)
    device = next(network.parameters()).device
    try:
        with torch.no_grad(), counter:
            network(torch.zeros(input_shape, device=device))
    finally:
        network.train(was_training)
    per_op = counter.get_flop_counts().get("Global", {})
    attention = sum(int(v) for k, v in per_op.items() if "bmm" in str(k))
    return int(counter.get_total_flops()), attention


def count_flops(network: nn.Module, input_shape: Tuple[int, ...]) -> int:
    """Forward FLOPs of ``network`` on a zero tensor of ``input_shape`` (eval mode, no grad)."""
    return count_flops_with_attention(network, input_shape)[0]


def summary_rows(
    builders: Dict[str, Callable[[], nn.Module]], reference: str, input_shape: Optional[Tuple[int, ...]] = None
) -> List[Dict[str, object]]:
    """Parameters (and FLOPs for ``input_shape``) of each built network, with the overhead vs ``reference``."""
    rows = []
    for name, build in builders.items():
        net = build()
        row: Dict[str, object] = {"name": name, "params": count_parameters(net)}
        if input_shape is not None:
            row["flops"] = count_flops(net, input_shape)
        rows.append(row)
    base = next(r for r in rows if r["name"] == reference)
    for row in rows:
        row["params_delta"] = int(row["params"]) - int(base["params"])
        if input_shape is not None:
            row["flops_ratio"] = float(row["flops"]) / float(base["flops"])
    return rows


def unet_builders(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1) -> Dict[str, Callable[[], nn.Module]]:
    """name -> builder of the :class:`XAttnResUNet` of each of :data:`UNET_CONFIGURATIONS`."""
    return {
        name: (lambda kw=kw: XAttnResUNet(spatial_dims, in_channels, out_channels, **kw))
        for name, kw in UNET_CONFIGURATIONS.items()
    }


def format_rows(rows: List[Dict[str, object]], paper: Dict[str, float]) -> str:
    """:func:`summary_rows` as a table, with the paper's numbers (``paper``: name -> parameters) where given."""
    has_flops = "flops" in rows[0]
    header = f"{'configuration':<16}{'params':>12}{'vs base':>10}{'paper':>9}"
    if has_flops:
        header += f"{'GFLOPs':>9}{'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        ref = paper.get(str(row["name"]))
        line = (
            f"{row['name']:<16}{row['params']:>12,}{row['params_delta']:>+10,}"
            f"{(f'{ref / 1e6:.2f}M' if ref else '-'):>9}"
        )
        if has_flops:
            line += f"{float(row['flops']) / 1e9:>9.3f}{float(row['flops_ratio']):>8.3f}"
        lines.append(line)
    return "\n".join(lines)


def dca_paper_summary(spatial_dims: int = 2) -> str:
    """One line: the parameters of the DCA block on the DCA paper's U-Net skips, vs the published overhead."""
    dca_paper = count_parameters(DualCrossAttention(spatial_dims, DCA_PAPER_SKIPS))
    return (
        f"DCA block alone on the DCA paper's U-Net skips {list(DCA_PAPER_SKIPS)}: {dca_paper:,} parameters "
        f"(paper: 8.64M -> 8.75M, +{DCA_PAPER_OVERHEAD / 1e6:.2f}M)"
    )


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
    encoder_params = count_parameters(PVTv2("b2"), trainable_only=False)
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
        counts[key] = count_parameters(net, trainable_only=False)
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
                total, attention = count_flops_with_attention(net, (1, in_channels, size, size))
                lines.append(
                    f"{name:<30}{size:>6}{total / 1e9:>10.3f}{attention / 1e9:>13.3f}{(total - attention) / 2e9:>16.3f}"
                )
        total, attention = count_flops_with_attention(baseline, (1, in_channels, 256, 256))
        lines.append(
            f"paper's convention: EMCAD at 256x256, MACs without the attention products = "
            f"{(total - attention) / 2e9:.2f}G (paper: 5.60G; EMCAD + XAttnRes 5.76G)"
        )
    return "\n".join(lines)
