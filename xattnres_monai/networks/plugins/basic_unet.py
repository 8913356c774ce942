"""MONAI's ``BasicUNet`` with Cross-Stage Attention Residuals, as a plug-in (not a fork)."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from xattnres_monai.networks.definition import record_definition
from xattnres_monai.networks.plugins.base import Stage, XAttnResPlugin
from xattnres_monai.networks.utils import check_input
from xattnres_monai.utils.options import as_bool, as_int, as_int_sequence

__all__ = ["XAttnResBasicUNet"]


def _pad_like_upcat(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``UpCat``'s ``is_pad``: replicate-pad ``x`` by one voxel at the end of every axis whose size differs from
    ``reference`` (odd sizes halved by max pooling come back one short)."""
    pads: List[int] = []
    for i in range(x.dim() - 1, 1, -1):  # F.pad: the last axis first
        pads += [0, 1 if x.shape[i] != reference.shape[i] else 0]
    if max(pads) == 0:
        return x
    return F.pad(x, pads, mode="replicate")


class XAttnResBasicUNet(XAttnResPlugin, BasicUNet):
    """``monai.networks.nets.BasicUNet`` whose stages read from a global history pool through XAttnRes.

    Built by MONAI's own constructor; the modules and parameter names stay ``conv_0``, ``down_1`` ..
    ``down_4``, ``upcat_4`` .. ``upcat_1``, ``final_conv``. The plug-in adds ``routing.*`` (see
    :mod:`xattnres_monai.networks.plugins.base`) and runs the modules itself:

    * pool: ``x0`` .. ``x4`` (``conv_0``, ``down_1`` .. ``down_4``), then ``u4`` .. ``u1``;
    * encoder (Eq. 10): ``routing.down_i`` sits between ``down_i.max_pooling`` (``Down``) and ``down_i.convs``;
    * decoder (Eq. 11): ``routing.upcat_i`` sits after ``upcat_i.upsample`` (``Up``, padded as ``UpCat`` pads
      odd sizes) and before the concatenation ``[skip; up]`` and ``upcat_i.convs``;
    * ``skip=False``: zeros in place of the encoder feature (channel counts and weights unchanged).

    With ``xattnres="none"`` and ``skip=True`` it computes exactly what ``BasicUNet`` computes with the same
    weights.

    Args:
        spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout, upsample: those of
            ``monai.networks.nets.BasicUNet`` (``spatial_dims`` 2 or 3).
        xattnres: where XAttnRes is applied: ``"none"``, ``"encoder"``, ``"decoder"`` or ``"full"`` (default).
        skip: keep BasicUNet's skip connections (default); ``False``: zeros in their place.
        query_init: pseudo-query initialisation (Table 5), ``"zero"`` by default.
        pruned_connections: history connections not read, ``"block:entry"`` stage names as the routing report
            shows them (``e1 .. e5``, ``d1 .. d4``; ``"d4:e5"``): no projection, no weight (see
            :func:`~xattnres_monai.networks.plugins.build_routing`).

    Example::

        >>> net = XAttnResBasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=(8, 8, 16, 32, 64, 8))
        >>> net(torch.randn(2, 1, 64, 48)).shape
        torch.Size([2, 9, 64, 48])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: Union[str, Tuple] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: Union[str, Tuple] = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: Union[float, Tuple] = 0.0,
        upsample: str = "deconv",
        xattnres: str = "full",
        skip: bool = True,
        query_init: str = "zero",
        pruned_connections: Sequence[str] = (),
    ) -> None:
        name = "XAttnResBasicUNet"
        spatial_dims = as_int(spatial_dims, f"{name}: spatial_dims")
        if spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        in_channels = as_int(in_channels, f"{name}: in_channels", min=1)
        out_channels = as_int(out_channels, f"{name}: out_channels", min=1)
        features = as_int_sequence(features, f"{name}: features", min=1)
        if len(features) != 6:
            raise ValueError(f"{name}: features must have 6 entries (5 encoder levels + the last decoder), got {features}.")
        bias = as_bool(bias, f"{name}: bias")
        act = tuple(act) if isinstance(act, list) else act
        norm = tuple(norm) if isinstance(norm, list) else norm
        super().__init__(spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout, upsample)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = list(features)
        self.setup_xattnres(spatial_dims, xattnres, skip, query_init, pruned_connections)
        record_definition(
            self, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features,
            act=act, norm=norm, bias=bias, dropout=dropout, upsample=upsample, xattnres=self.xattnres,
            skip=self.skip, query_init=self.query_init,
            **({"pruned_connections": self.pruned_connections} if self.pruned_connections else {}),
        )  # fmt: skip

    def xattnres_stages(self) -> List[Stage]:
        """``conv_0``, ``down_1`` .. ``down_4`` (encoder), ``upcat_4`` .. ``upcat_1`` (decoder).

        A decoder block aggregates ``upcat_i.upsample``'s output, whose width is read from the built module:
        ``convs`` takes ``skip + up`` channels.
        """
        fea = self.features
        stages = [Stage("conv_0", "encoder", self.in_channels, fea[0])]
        stages += [Stage(f"down_{i}", "encoder", fea[i - 1], fea[i]) for i in range(1, 5)]
        for i, out in ((4, fea[3]), (3, fea[2]), (2, fea[1]), (1, fea[5])):
            upcat = getattr(self, f"upcat_{i}")
            up = int(upcat.convs.conv_0.conv.in_channels) - fea[i - 1]  # skip x_{i-1} has fea[i-1] channels
            stages.append(Stage(f"upcat_{i}", "decoder", up, out))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, "XAttnResBasicUNet", self.spatial_dims, self.in_channels)
        history: List[torch.Tensor] = []  # the global feature history pool (Eq. 3), this forward pass only
        cache: Dict[str, torch.Tensor] = {}
        x0 = self.conv_0(x)
        history.append(x0)
        # encoder (Eq. 10): Down, XAttnRes, f_i
        x1 = self.down_1.convs(self.routing.down_1(self.down_1.max_pooling(x0), history, cache))
        history.append(x1)
        x2 = self.down_2.convs(self.routing.down_2(self.down_2.max_pooling(x1), history, cache))
        history.append(x2)
        x3 = self.down_3.convs(self.routing.down_3(self.down_3.max_pooling(x2), history, cache))
        history.append(x3)
        x4 = self.down_4.convs(self.routing.down_4(self.down_4.max_pooling(x3), history, cache))
        history.append(x4)
        # decoder (Eq. 11): Up, XAttnRes, [skip; up], f_j
        u = self.upcat_4.upsample(x4)
        u = _pad_like_upcat(u, x3) if self.upcat_4.is_pad else u
        u4 = self.upcat_4.convs(torch.cat([self.skip_input(x3), self.routing.upcat_4(u, history, cache)], dim=1))
        history.append(u4)
        u = self.upcat_3.upsample(u4)
        u = _pad_like_upcat(u, x2) if self.upcat_3.is_pad else u
        u3 = self.upcat_3.convs(torch.cat([self.skip_input(x2), self.routing.upcat_3(u, history, cache)], dim=1))
        history.append(u3)
        u = self.upcat_2.upsample(u3)
        u = _pad_like_upcat(u, x1) if self.upcat_2.is_pad else u
        u2 = self.upcat_2.convs(torch.cat([self.skip_input(x1), self.routing.upcat_2(u, history, cache)], dim=1))
        history.append(u2)
        u = self.upcat_1.upsample(u2)
        u = _pad_like_upcat(u, x0) if self.upcat_1.is_pad else u
        u1 = self.upcat_1.convs(torch.cat([self.skip_input(x0), self.routing.upcat_1(u, history, cache)], dim=1))
        return self.final_conv(u1)
