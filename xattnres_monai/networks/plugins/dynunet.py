"""MONAI's ``DynUNet`` (nnU-Net's network) with Cross-Stage Attention Residuals, as a plug-in (not a fork)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet
from torch import nn

from xattnres_monai.networks.definition import record_definition
from xattnres_monai.networks.plugins.base import Stage, XAttnResPlugin
from xattnres_monai.networks.utils import check_input
from xattnres_monai.utils.options import as_bool, as_int, as_int_sequence

__all__ = ["XAttnResDynUNet"]

KernelOrStride = Sequence[Union[Sequence[int], int]]


def _layer(value: Any) -> Any:
    """A ``(name, {arguments})`` layer option as JSON gives it (a list) turned into MONAI's tuple form."""
    return tuple(value) if isinstance(value, list) else value


class XAttnResDynUNet(XAttnResPlugin, DynUNet):
    """``monai.networks.nets.DynUNet`` whose stages read from a global history pool through XAttnRes.

    The DynUNet is built by MONAI's own constructor (any depth, kernel sizes, strides including anisotropic ones
    such as ``(1, 2, 2)``, residual blocks, deep supervision) and keeps its modules and parameter names
    (``input_block``, ``downsamples.k``, ``bottleneck``, ``upsamples.j``, ``output_block``,
    ``deep_supervision_heads.k``, and the ``skip_layers.*`` aliases MONAI registers for the same modules). The
    plug-in adds ``routing.*`` (see :mod:`xattnres_monai.networks.plugins.base`) and runs those modules itself:

    * pool: the outputs of ``input_block``, each ``downsamples.k``, ``bottleneck`` (``e_1 .. e_S``), then of each
      ``upsamples.j`` (``d_1 ..``, deepest first);
    * encoder (Eq. 10): a DynUNet stage downsamples with the stride of its first convolution, so ``Down`` and
      ``f_i`` are one module; the block ``routing.downsamples.k`` / ``routing.bottleneck`` aggregates the
      stage's *input* (the previous stage output, at its resolution and width) with every earlier stage output,
      and the stage then runs on the result. As in the paper's U-Net, where the aligned ``e_{i-1}`` equals
      ``Down(e_{i-1})``, the previous stage output is one of the entries as well as ``x``. Before the second
      stage (``downsamples.0``) the pool is ``[e_1]`` and ``x = e_1``: a block there would return ``e_1`` whatever
      its weights, so none is built (``routing.downsamples.0`` is the identity in every placement);
    * decoder (Eq. 11): ``routing.upsamples.j`` aggregates the output of the stage's transposed convolution
      (``Up``) with the whole pool, before the concatenation with the skip tensor and ``conv_block``; the
      resolution-matched encoder output enters without resizing;
    * ``skip=False``: zeros in place of the skip tensor (channel counts and weights unchanged, see the module
      docstring of :mod:`~xattnres_monai.networks.plugins.base`);
    * deep supervision (training mode, ``deep_supervision=True``): as DynUNet, the output stacked with the heads
      of the ``deep_supr_num`` next-finest decoder outputs, interpolated (nearest) to the output size:
      ``(B, 1 + deep_supr_num, C, *S)``; in eval mode the output only.

    With ``xattnres="none"`` and ``skip=True`` it computes exactly what ``DynUNet`` computes with the same weights.
    Every stage input size must be divisible by the product of the strides (as for DynUNet).

    Args:
        spatial_dims, in_channels, out_channels, kernel_size, strides, upsample_kernel_size, filters, dropout,
            norm_name, act_name, deep_supervision, deep_supr_num, res_block, trans_bias: those of
            ``monai.networks.nets.DynUNet`` (``spatial_dims`` 2 or 3).
        xattnres: where XAttnRes is applied: ``"none"``, ``"encoder"``, ``"decoder"`` or ``"full"`` (default).
        skip: keep DynUNet's skip connections (default); ``False``: zeros in their place.
        query_init: pseudo-query initialisation (Table 5): ``"zero"`` (default: each block starts as the mean of
            its aligned entries), ``"normal"``, ``"kaiming_uniform"``, ``"xavier_uniform"``.
        pruned_connections: history connections not read, ``"block:entry"`` stage names as the routing report
            shows them (``e1 .. eS``, ``d1 ..``; ``"d4:e5"``): no projection, no weight (see
            :func:`~xattnres_monai.networks.plugins.build_routing`).

    Example::

        >>> net = XAttnResDynUNet(3, 1, 9, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, [2, 2, 1]],
        ...                       upsample_kernel_size=[2, 2, [2, 2, 1]], filters=[16, 32, 64, 128])
        >>> net(torch.randn(1, 1, 32, 32, 16)).shape
        torch.Size([1, 9, 32, 32, 16])
        >>> replace = XAttnResDynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], skip=False)
        >>> baseline = XAttnResDynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], xattnres="none")  # == DynUNet
    """

    # DynUNet's recursive ``skip_layers`` (aliases of the same modules, for its own forward) is not used here, and it
    # does not compile with deep supervision in recent TorchScript: leave it out of the scripted module
    __jit_ignored_attributes__ = ["skip_layers"]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: KernelOrStride,
        strides: KernelOrStride,
        upsample_kernel_size: KernelOrStride,
        filters: Optional[Sequence[int]] = None,
        dropout: Optional[Union[Tuple, str, float]] = None,
        norm_name: Union[Tuple, str] = ("INSTANCE", {"affine": True}),
        act_name: Union[Tuple, str] = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        res_block: bool = False,
        trans_bias: bool = False,
        xattnres: str = "full",
        skip: bool = True,
        query_init: str = "zero",
        pruned_connections: Sequence[str] = (),
    ) -> None:
        name = "XAttnResDynUNet"
        spatial_dims = as_int(spatial_dims, f"{name}: spatial_dims")
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        in_channels = as_int(in_channels, f"{name}: in_channels", min=1)
        out_channels = as_int(out_channels, f"{name}: out_channels", min=1)
        if filters is not None:
            filters = as_int_sequence(filters, f"{name}: filters", min=1)
        deep_supervision = as_bool(deep_supervision, f"{name}: deep_supervision")
        deep_supr_num = as_int(deep_supr_num, f"{name}: deep_supr_num")
        res_block = as_bool(res_block, f"{name}: res_block")
        trans_bias = as_bool(trans_bias, f"{name}: trans_bias")
        norm_name, act_name = _layer(norm_name), _layer(act_name)
        super().__init__(
            spatial_dims, in_channels, out_channels, kernel_size, strides, upsample_kernel_size, filters=filters,
            dropout=dropout, norm_name=norm_name, act_name=act_name, deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num, res_block=res_block, trans_bias=trans_bias,
        )  # fmt: skip
        if not hasattr(self, "deep_supervision_heads"):
            # (no parameters, no state dict keys) so that forward's loop over the heads compiles in TorchScript
            self.deep_supervision_heads = nn.ModuleList()
        self.setup_xattnres(spatial_dims, xattnres, skip, query_init, pruned_connections)
        record_definition(
            self, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
            kernel_size=kernel_size, strides=strides, upsample_kernel_size=upsample_kernel_size, filters=filters,
            dropout=dropout, norm_name=norm_name, act_name=act_name, deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num, res_block=res_block, trans_bias=trans_bias, xattnres=self.xattnres,
            skip=self.skip, query_init=self.query_init,
            **({"pruned_connections": self.pruned_connections} if self.pruned_connections else {}),
        )  # fmt: skip

    def xattnres_stages(self) -> List[Stage]:
        """``input_block``, ``downsamples.k``, ``bottleneck`` (encoder), ``upsamples.j`` (decoder, deepest first).

        A DynUNet stage's input has the previous stage's width (``filters[i - 1]``); a decoder block aggregates
        the output of ``upsamples.j.transp_conv``, which has the decoder stage's width.
        """
        filters = [int(f) for f in self.filters]
        depth = len(filters)
        stages = [Stage("input_block", "encoder", self.in_channels, filters[0])]
        # before downsamples.0 the block would read [e_1] into x = e_1: the identity, whatever its weights
        stages += [Stage(f"downsamples.{k}", "encoder", filters[k], filters[k + 1], k > 0) for k in range(depth - 2)]
        stages.append(Stage("bottleneck", "encoder", filters[-2], filters[-1]))
        for j, up in enumerate(self.upsamples):
            width = int(up.transp_conv.conv.out_channels)  # Up's output: the width of decoder level depth-2-j
            stages.append(Stage(f"upsamples.{j}", "decoder", width, width))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "XAttnResDynUNet", self.spatial_dims, self.in_channels)
        history: List[torch.Tensor] = []  # the global feature history pool (Eq. 3), this forward pass only
        cache: Dict[str, torch.Tensor] = {}  # pooled / channels-last entries, shared by the blocks
        x = self.input_block(x)
        history.append(x)
        for stage, routing in zip(self.downsamples, self.routing.downsamples):
            x = stage(routing(x, history, cache))  # Eq. 10 (Down is the stride of the stage's first conv)
            history.append(x)
        x = self.bottleneck(self.routing.bottleneck(x, history, cache))
        history.append(x)
        num_encoder = len(history)
        j = 0
        for stage, routing in zip(self.upsamples, self.routing.upsamples):
            skip = history[num_encoder - 2 - j]  # the resolution-matched encoder output
            x = routing(stage.transp_conv(x), history, cache)  # Eq. 11
            x = stage.conv_block(torch.cat((x, self.skip_input(skip)), dim=1))  # as UnetUpBlock: [up; skip]
            history.append(x)
            j += 1
        out = self.output_block(x)
        if self.training and self.deep_supervision:
            out_all = [out]
            for k, head in enumerate(self.deep_supervision_heads):  # head k: decoder output k + 1 above the last
                out_all.append(F.interpolate(head(history[len(history) - 2 - k]), out.shape[2:]))
            return torch.stack(out_all, dim=1)
        return out
