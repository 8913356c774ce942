"""EMCAD (PVTv2 encoder + EMCAD decoder) with optional XAttnRes routing (the paper's "EMCAD + XAttnRes").

EMCAD (Rahman et al., CVPR 2024) decodes the four PVTv2 stage maps with a cascade of attention and
multi-scale convolution blocks (:class:`~xattnres_monai.networks.blocks.EMCADDecoder`) and predicts
from every decoder stage. Following Section 3.3 of the XAttnRes paper (arXiv 2604.03297), XAttnRes is
applied on the decoder side only, with a history pool holding the encoder maps ``e1 .. e4`` and then
the decoder outputs ``d4, d3, d2``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.utils import InterpolateMode
from torch import nn

from xattnres_monai.networks.blocks.emcad import EMCADDecoder, _upgrade_keys_in_place, upgrade_emcad_decoder_key
from xattnres_monai.networks.blocks.xattnres import QUERY_INITS
from xattnres_monai.networks.definition import record_definition
from xattnres_monai.networks.nets.pvt import PVT_V2_CONFIGS, PVTv2, _normalise_variant
from xattnres_monai.networks.utils import check_input
from xattnres_monai.utils.options import as_bool, as_choice, as_float, as_int, as_optional_path

__all__ = ["EMCADNet", "emcad_summary", "convert_emcad_state_dict", "EMCAD_CONFIGURATIONS", "EMCAD_PAPER_PARAMS"]

#: the EMCAD routing configurations of the ablation (Table 4 of the XAttnRes paper).
EMCAD_CONFIGURATIONS: Dict[str, Dict[str, bool]] = {
    "baseline": {"skip": True, "xattnres": False},
    "no_skip": {"skip": False, "xattnres": False},
    "replace": {"skip": False, "xattnres": True},
    "both": {"skip": True, "xattnres": True},
}

#: parameter counts reported in the XAttnRes paper (Table 2) for EMCAD-B2, binary task.
EMCAD_PAPER_PARAMS: Dict[str, float] = {"baseline": 26.76e6, "both": 28.09e6}

#: the prediction heads before they became an ``nn.ModuleList``: ``head<n>`` (4 = coarsest) is now ``heads.<4 - n>``.
_LEGACY_HEAD_KEY = re.compile(r"head([1-4])\.(.+)", re.DOTALL)


def _upgrade_key(name: str) -> str:
    """The current name of an :class:`EMCADNet` state-dict key (relative to the network) of an older version."""
    if name.startswith("decoder."):
        return "decoder." + upgrade_emcad_decoder_key(name[len("decoder.") :])
    match = _LEGACY_HEAD_KEY.fullmatch(name)
    if match is not None:
        return f"heads.{4 - int(match.group(1))}.{match.group(2)}"
    return name


def convert_emcad_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> "OrderedDict[str, Any]":
    """An :class:`EMCADNet` state dict saved by an older version, with the current key names.

    The decoder stages and the prediction heads used to be attributes per stage; they are now
    ``nn.ModuleList`` s, coarse to fine. Keys are renamed (values and order kept, the ``_metadata`` of the
    state dict too); current names and keys of other modules are left as they are, so converting twice is
    harmless:

    =====================================  ==========================================
    older name                             current name
    =====================================  ==========================================
    ``decoder.cab<n>.*``  (n = 4 .. 1)     ``decoder.stages.<4-n>.cab.*``
    ``decoder.mscb<n>.*`` (n = 4 .. 1)     ``decoder.stages.<4-n>.mscb.*``
    ``decoder.eucb<n>.*`` (n = 3 .. 1)     ``decoder.stages.<4-n>.up.*``
    ``decoder.lgag<n>.*`` (n = 3 .. 1)     ``decoder.stages.<4-n>.gate.*``
    ``decoder.routing<n>.*`` (n = 4 .. 1)  ``decoder.stages.<4-n>.routing.*``
    ``head<n>.*`` (n = 4 .. 1)             ``heads.<4-n>.*``
    ``stem.*``, ``encoder.*``, ``decoder.sab.*``  unchanged
    =====================================  ==========================================

    :meth:`EMCADNet.load_state_dict` applies the same renaming itself (also when the network is a submodule),
    so older checkpoints load strictly without calling this; it is for tools that compare key names first.

    Args:
        state_dict: the state dict (a checkpoint's ``"model"`` / ``"network"`` entry).
        prefix: the network's prefix in ``state_dict`` (``"module."`` for a ``DataParallel`` checkpoint).

    Example::

        >>> list(convert_emcad_state_dict({"decoder.eucb3.pwconv.bias": 0, "head1.weight": 1}))
        ['decoder.stages.1.up.pwconv.bias', 'heads.3.weight']
    """

    def rename(key: str) -> str:
        return prefix + _upgrade_key(key[len(prefix) :]) if key.startswith(prefix) else key

    converted: "OrderedDict[str, Any]" = OrderedDict((rename(k), v) for k, v in state_dict.items())
    if len(converted) != len(state_dict):
        raise ValueError("convert_emcad_state_dict: the state dict holds both older and current names of a key.")
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # per-module versions, keyed by module name ("decoder.cab4", "head1", ...)
        converted._metadata = OrderedDict(  # type: ignore[attr-defined]
            ((rename(k + ".#")[:-2] if k else k), v) for k, v in metadata.items()
        )
    return converted


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

    The heads are ``heads[0..3]`` and the decoder stages ``decoder.stages[0..3]``, coarse to fine. Checkpoints
    of older versions (``head4`` ... ``head1``, ``decoder.cab4`` ...) load strictly: their keys are renamed
    on loading (:func:`convert_emcad_state_dict` does the same for a state dict).

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
        # pretrained_path only initialises a training run's encoder: not part of what the trained weights need
        record_definition(
            self, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, encoder=variant,
            skip=skip, xattnres=xattnres, query_init=query_init, deep_supervision=deep_supervision,
            drop_path_rate=drop_path_rate,
        )  # fmt: skip

        self.stem = None
        if in_channels != 3:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 3, kernel_size=1), nn.BatchNorm2d(3), nn.ReLU(inplace=True)
            )
        self.encoder = PVTv2(variant, in_channels=3, drop_path_rate=drop_path_rate, pretrained_path=pretrained_path)
        channels = list(PVT_V2_CONFIGS[variant]["embed_dims"])[::-1]  # coarse to fine
        self.decoder = EMCADDecoder(spatial_dims, channels, skip=skip, xattnres=xattnres, query_init=query_init)
        self.heads = nn.ModuleList([nn.Conv2d(c, out_channels, kernel_size=1) for c in channels])  # coarse to fine
        self.upsample_mode: str = InterpolateMode.BILINEAR.value

    @staticmethod
    def upgrade_state_dict(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
        """``state_dict`` with the key names of older versions renamed (:func:`convert_emcad_state_dict`); used by
        the strict checkpoint checks (:func:`xattnres_monai.networks.utils.state_dict_mismatch`)."""
        return convert_emcad_state_dict(state_dict)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints of older versions: head4 -> heads.0, ... (the decoder renames its own keys)
        _upgrade_keys_in_place(state_dict, prefix, _upgrade_key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
            logits: List[torch.Tensor] = []
            for i, head in enumerate(self.heads):
                logits.append(F.interpolate(head(decoded[i]), size=size, mode=self.upsample_mode, align_corners=False))
            return logits
        return F.interpolate(self.heads[-1](decoded[-1]), size=size, mode=self.upsample_mode, align_corners=False)


def emcad_summary(input_sizes: Sequence[int] = (224, 352), in_channels: int = 1, out_channels: int = 1) -> str:
    """Parameter counts and forward FLOPs of the EMCAD-B2 configurations, as a printable table.

    Computed by :func:`xattnres_monai.networks.sizes.emcad_summary` (where the counting conventions are
    described); this is that function, kept here for ``from xattnres_monai.networks.nets import emcad_summary``.
    """
    from xattnres_monai.networks.sizes import emcad_summary as _emcad_summary  # sizes imports this module

    return _emcad_summary(input_sizes=input_sizes, in_channels=in_channels, out_channels=out_channels)
