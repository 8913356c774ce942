"""Pyramid Vision Transformer v2 (PVTv2) encoder, B0-B5, with local pretrained-weight loading.

A 2D hierarchical transformer encoder (Wang et al., "PVT v2: Improved Baselines with Pyramid
Vision Transformer", CVMJ 2022) returning the four stage maps at strides 4, 8, 16 and 32. It is the
backbone of EMCAD (:class:`~xattnres_monai.networks.nets.EMCADNet`) and is registered as a MONAI
:class:`~monai.networks.nets.FlexibleUNet` backbone (names ``"pvt_v2_b0"`` ... ``"pvt_v2_b5"``).

Each stage is an overlapping patch embedding (a strided convolution then LayerNorm), a stack of
transformer blocks with spatial-reduction attention (keys and values computed on a ``sr x sr``
strided-convolution reduction of the tokens) and a convolutional feed-forward network
(``fc1 -> depthwise 3x3 conv -> GELU -> fc2``), then a LayerNorm. Spatial sizes are read from the
tensors at run time: inputs need not be multiples of 32 (every strided convolution is padded, so a
side ``s`` becomes ``ceil(s / 4)``, then ``ceil(. / 2)`` per later stage).

Parameter names follow the official ``pvt_v2_b*.pth`` ImageNet checkpoints (``patch_embed1.proj``,
``block1.0.attn.kv``, ``block1.0.mlp.dwconv.dwconv``, ``norm1`` ...), which therefore load directly
with :func:`load_pvt_pretrained` (the classification ``head.*`` of those files is ignored). As in the
official implementation, the LayerNorms of the transformer blocks and after each stage use
``eps=1e-6`` while those of the patch embeddings and of the spatial reduction keep PyTorch's default
``eps=1e-5``. Nothing is ever downloaded: weights come from a local file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from xattnres_monai.networks.utils import check_input, format_key_mismatch, state_dict_differences
from xattnres_monai.utils.options import as_bool, as_float, as_int, as_optional_path

__all__ = ["PVTv2", "PVTv2Encoder", "PVT_V2_CONFIGS", "load_pvt_pretrained"]

logger = logging.getLogger(__name__)

#: architecture of each PVTv2 variant (the official ``pvt_v2_b0`` ... ``pvt_v2_b5``).
PVT_V2_CONFIGS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "b0": {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "mlp_ratios": (8, 8, 4, 4)},
    "b1": {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "mlp_ratios": (8, 8, 4, 4)},
    "b2": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "mlp_ratios": (8, 8, 4, 4)},
    "b3": {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "mlp_ratios": (8, 8, 4, 4)},
    "b4": {"embed_dims": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "mlp_ratios": (8, 8, 4, 4)},
    "b5": {"embed_dims": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "mlp_ratios": (4, 4, 4, 4)},
}
_NUM_HEADS = (1, 2, 5, 8)
_SR_RATIOS = (8, 4, 2, 1)
_BLOCK_NORM_EPS = 1e-6


def _normalise_variant(variant: str) -> str:
    """``"b2"``, ``"B2"``, ``"pvt_v2_b2"`` -> ``"b2"``; ValueError for anything else."""
    if not isinstance(variant, str):
        raise ValueError(
            f"PVTv2: variant must be one of {sorted(PVT_V2_CONFIGS)} (or 'pvt_v2_<v>'), got {variant!r}."
        )
    name = variant.strip().lower()
    if name.startswith("pvt_v2_"):
        name = name[len("pvt_v2_") :]
    if name not in PVT_V2_CONFIGS:
        raise ValueError(f"PVTv2: variant must be one of {sorted(PVT_V2_CONFIGS)} (or 'pvt_v2_<v>'), got {variant!r}.")
    return name


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob`` (training only)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        drop_prob = as_float(drop_prob, "DropPath: drop_prob", min=0.0, max=1.0, max_open=True)
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = torch.empty([x.shape[0]] + [1] * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``k x k`` convolution with stride ``s`` and padding ``k // 2``, then LayerNorm.

    Returns the tokens ``(B, H*W, C)`` and the token grid size ``H, W``.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        in_channels = as_int(in_channels, "OverlapPatchEmbed: in_channels", min=1)
        embed_dim = as_int(embed_dim, "OverlapPatchEmbed: embed_dim", min=1)
        patch_size = as_int(patch_size, "OverlapPatchEmbed: patch_size", min=1)
        stride = as_int(stride, "OverlapPatchEmbed: stride", min=1)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)  # official: default eps (1e-5)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, height, width


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr x sr`` strided-conv reduction of the tokens.

    Parameter names ``q``, ``kv``, ``sr``, ``norm``, ``proj`` follow the official checkpoints; ``sr``
    and ``norm`` exist only when ``sr_ratio > 1``.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        dim = as_int(dim, "SpatialReductionAttention: dim", min=1)
        num_heads = as_int(num_heads, "SpatialReductionAttention: num_heads", min=1)
        sr_ratio = as_int(sr_ratio, "SpatialReductionAttention: sr_ratio", min=1)
        qkv_bias = as_bool(qkv_bias, "SpatialReductionAttention: qkv_bias")
        if dim % num_heads != 0:
            raise ValueError(f"SpatialReductionAttention: dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # official: default eps (1e-5)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q = self.q(x).reshape(batch, tokens, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            reduced = x.transpose(1, 2).reshape(batch, channels, height, width)
            reduced = self.norm(self.sr(reduced).flatten(2).transpose(1, 2))
        else:
            reduced = x
        kv = self.kv(reduced).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        # explicit products (as the reference): numerically the published model, and counted by FlopCounterMode
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj(out)


class DWConv(nn.Module):
    """Depthwise 3x3 convolution on a token sequence (reshaped to its ``H x W`` grid)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        dim = as_int(dim, "DWConv: dim", min=1)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, channels, height, width))
        return x.flatten(2).transpose(1, 2)


class ConvFFN(nn.Module):
    """PVTv2 feed-forward network: ``fc1 -> depthwise 3x3 conv -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        dim = as_int(dim, "ConvFFN: dim", min=1)
        hidden_dim = as_int(hidden_dim, "ConvFFN: hidden_dim", min=1)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class PVTBlock(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(FFN(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = as_int(dim, "PVTBlock: dim", min=1)
        mlp_ratio = as_float(mlp_ratio, "PVTBlock: mlp_ratio", min=0.0, min_open=True)
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias=True)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2).contiguous()


class PVTv2(nn.Module):
    """PVTv2 encoder (B0-B5) returning the four stage maps, finest first.

    For B1-B5 (``embed_dims`` 64, 128, 320, 512) an ``H x W`` input gives maps of
    ``(64, H/4)``, ``(128, H/8)``, ``(320, H/16)`` and ``(512, H/32)`` (sides rounded up); B0 has
    ``32, 64, 160, 256`` channels. Without the classification head, B2 has 24,849,856 parameters.
    All variants use ``num_heads = (1, 2, 5, 8)``, ``sr_ratios = (8, 4, 2, 1)`` and ``qkv_bias``.

    Weights are initialised as in the official implementation (truncated normal std 0.02 for linear
    layers, He-normal on fan-out for convolutions, zero biases, unit LayerNorms).

    Args:
        variant: ``"b0"`` ... ``"b5"`` (``"pvt_v2_b2"`` also accepted).
        in_channels: input image channels (pretrained ImageNet weights need 3).
        drop_path_rate: stochastic-depth rate of the last block, increasing linearly from 0 over
            all blocks (0.1 in EMCAD).
        pretrained_path: local ``pvt_v2_b*.pth`` file to load with :func:`load_pvt_pretrained`;
            ``None`` keeps the random initialisation. Nothing is downloaded.

    Example::

        >>> encoder = PVTv2("b2")
        >>> [f.shape[1:] for f in encoder(torch.randn(1, 3, 224, 224))]
        [torch.Size([64, 56, 56]), torch.Size([128, 28, 28]), torch.Size([320, 14, 14]), torch.Size([512, 7, 7])]
    """

    def __init__(
        self,
        variant: str = "b2",
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
        pretrained_path: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        super().__init__()
        self.variant = _normalise_variant(variant)
        in_channels = as_int(in_channels, "PVTv2: in_channels", min=1)
        drop_path_rate = as_float(drop_path_rate, "PVTv2: drop_path_rate", min=0.0, max=1.0, max_open=True)
        pretrained_path = as_optional_path(pretrained_path, "PVTv2: pretrained_path")
        config = PVT_V2_CONFIGS[self.variant]
        self.in_channels = in_channels
        self.embed_dims: List[int] = list(config["embed_dims"])
        depths = list(config["depths"])
        mlp_ratios = list(config["mlp_ratios"])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule

        start = 0
        previous = in_channels
        for i in range(4):
            dim = self.embed_dims[i]
            patch_embed = OverlapPatchEmbed(previous, dim, patch_size=7 if i == 0 else 3, stride=4 if i == 0 else 2)
            blocks = nn.ModuleList(
                [
                    PVTBlock(dim, _NUM_HEADS[i], mlp_ratios[i], _SR_RATIOS[i], drop_path=rates[start + j])
                    for j in range(depths[i])
                ]
            )
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=_BLOCK_NORM_EPS))
            start += depths[i]
            previous = dim
        self.apply(self._init_weights)
        if pretrained_path is not None:
            load_pvt_pretrained(self, pretrained_path)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The four stage maps ``[e1, e2, e3, e4]`` (strides 4, 8, 16, 32)."""
        check_input(x, "PVTv2", 2, self.in_channels)
        # unrolled over the four stages so that the module is TorchScript-compatible
        outputs: List[torch.Tensor] = []
        x, height, width = self.patch_embed1(x)
        for block in self.block1:
            x = block(x, height, width)
        x = _tokens_to_map(self.norm1(x), height, width)
        outputs.append(x)
        x, height, width = self.patch_embed2(x)
        for block in self.block2:
            x = block(x, height, width)
        x = _tokens_to_map(self.norm2(x), height, width)
        outputs.append(x)
        x, height, width = self.patch_embed3(x)
        for block in self.block3:
            x = block(x, height, width)
        x = _tokens_to_map(self.norm3(x), height, width)
        outputs.append(x)
        x, height, width = self.patch_embed4(x)
        for block in self.block4:
            x = block(x, height, width)
        x = _tokens_to_map(self.norm4(x), height, width)
        outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Args:
        x: images ``(B, in_channels, H, W)``, any ``H, W``.

        Returns:
            ``[e1, e2, e3, e4]``, the stage maps at strides 4, 8, 16 and 32.
        """
        return self.forward_features(x)


class PVTv2Encoder(PVTv2, BaseEncoder):
    """PVTv2 as a MONAI :class:`~monai.networks.nets.FlexibleUNet` backbone (``"pvt_v2_b0"`` ... ``"pvt_v2_b5"``).

    FlexibleUNet's decoder upsamples by 2 once more than the number of skip maps it receives,
    so to produce full-resolution logits it needs five maps at strides 2, 4, 8, 16, 32 (as
    EfficientNet gives). PVTv2 has no stride-2 stage, so this encoder returns
    ``[Up2(e1), e1, e2, e3, e4]``, where ``Up2(e1)`` is the stage-1 map bilinearly upsampled by 2
    (no parameters; the state dict is exactly :class:`PVTv2`'s). Because FlexibleUNet pads
    upsampled maps by at most one pixel, inputs to the FlexibleUNet must be multiples of 32
    (:class:`~xattnres_monai.networks.nets.EMCADNet` has no such restriction).

    Args:
        variant: ``"b0"`` ... ``"b5"``.
        spatial_dims: must be 2.
        in_channels: input image channels.
        pretrained: must be False: FlexibleUNet cannot pass a weights file and nothing is
            downloaded. Load local weights afterwards with
            ``load_pvt_pretrained(flexible_unet.encoder, path)``, or give ``pretrained_path``.
        pretrained_path: local checkpoint to load (see :func:`load_pvt_pretrained`).
        drop_path_rate: stochastic-depth rate (see :class:`PVTv2`).

    Example::

        >>> from monai.networks.nets import FlexibleUNet
        >>> import xattnres_monai.networks.nets  # registers the backbones
        >>> net = FlexibleUNet(in_channels=3, out_channels=2, backbone="pvt_v2_b2")
        >>> net(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 2, 224, 224])
    """

    backbone_names = tuple(f"pvt_v2_{v}" for v in PVT_V2_CONFIGS)

    def __init__(
        self,
        variant: str = "b2",
        spatial_dims: int = 2,
        in_channels: int = 3,
        pretrained: bool = False,
        pretrained_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        drop_path_rate: float = 0.1,
    ) -> None:
        if as_int(spatial_dims, "PVTv2Encoder: spatial_dims") != 2:
            raise ValueError(f"PVTv2Encoder: only spatial_dims=2 is supported, got {spatial_dims!r}.")
        if as_bool(pretrained, "PVTv2Encoder: pretrained"):
            raise ValueError(
                "PVTv2Encoder: pretrained=True is not supported because nothing is downloaded; build with "
                "pretrained=False and load a local file with load_pvt_pretrained(net.encoder, path)."
            )
        super().__init__(
            variant, in_channels=in_channels, drop_path_rate=drop_path_rate, pretrained_path=pretrained_path
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``[Up2(e1), e1, e2, e3, e4]``: five maps at strides 2, 4, 8, 16, 32."""
        features = self.forward_features(x)
        finest = F.interpolate(features[0], scale_factor=2.0, mode="bilinear", align_corners=False)
        return [finest] + features

    @classmethod
    def get_encoder_parameters(cls) -> List[Dict]:
        return [
            {"variant": name[len("pvt_v2_") :], "spatial_dims": 2, "in_channels": 3, "pretrained": False}
            for name in cls.backbone_names
        ]

    @classmethod
    def num_channels_per_output(cls) -> List[Tuple[int, ...]]:
        channels = []
        for name in cls.backbone_names:
            dims = PVT_V2_CONFIGS[name[len("pvt_v2_") :]]["embed_dims"]
            channels.append((dims[0],) + tuple(dims))
        return channels

    @classmethod
    def num_outputs(cls) -> List[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> List[str]:
        return list(cls.backbone_names)


FLEXUNET_BACKBONE.register_class(PVTv2Encoder)


def _describe(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_pvt_pretrained(encoder: nn.Module, path: Union[str, "os.PathLike[str]"]) -> int:
    """Load a local PVTv2 checkpoint (e.g. the official ImageNet ``pvt_v2_b2.pth``) into ``encoder``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``. It may hold a
    plain state dict or one under a ``"model"`` or ``"state_dict"`` key; a leading ``"module."``
    (DataParallel) is stripped. Keys under ``head.`` (the ImageNet classifier) are ignored. Every
    other tensor must match the encoder's state dict exactly (same keys, same shapes): otherwise
    nothing is loaded and a ValueError names the file and the first mismatches. Nothing is
    downloaded.

    Args:
        encoder: a :class:`PVTv2` (or any module with the same state-dict layout).
        path: the checkpoint file.

    Returns:
        The number of tensors loaded (also logged at INFO level).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a readable checkpoint, holds no state dict, no key
            matches, or any non-``head.*`` key is missing, unexpected or of the wrong shape.

    Example::

        >>> encoder = PVTv2("b2")
        >>> load_pvt_pretrained(encoder, "/data/weights/pvt_v2_b2.pth")
        484
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_pvt_pretrained: no checkpoint file at '{path}'.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a valid checkpoint"
        raise ValueError(
            f"load_pvt_pretrained: '{path}' is not a valid PyTorch checkpoint ({type(error).__name__}: {error})."
        ) from error
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        for container in ("model", "state_dict"):
            if isinstance(checkpoint.get(container), Mapping):
                state = checkpoint[container]
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(
            f"load_pvt_pretrained: '{path}' does not hold a state dict (expected a mapping of parameter names to "
            f"tensors, possibly under 'model' or 'state_dict'; got {type(state).__name__})."
        )
    non_tensor = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise ValueError(
            f"load_pvt_pretrained: '{path}' is not a state dict: entries without a tensor value: "
            f"{_describe(non_tensor)}."
        )
    weights: Dict[str, torch.Tensor] = {}
    ignored = 0
    for key, value in state.items():
        name = str(key)
        if name.startswith("module."):
            name = name[len("module.") :]
        if name.startswith("head."):
            ignored += 1
            continue
        weights[name] = value
    expected = encoder.state_dict()
    missing, unexpected, wrong_shape = state_dict_differences(expected, weights, ("file", "encoder"))
    matched = len(expected) - len(missing) - len(wrong_shape)
    problems = []
    if matched == 0:
        problems.append(f"no key matches the encoder (file keys: {_describe([str(k) for k in state])})")
    mismatch = format_key_mismatch(missing, unexpected, wrong_shape)
    if mismatch:
        problems.append(mismatch)
    if problems:
        raise ValueError(
            f"load_pvt_pretrained: '{path}' does not match the {type(encoder).__name__} encoder "
            f"({matched}/{len(expected)} tensors match); " + "; ".join(problems) + "."
        )
    encoder.load_state_dict(weights, strict=True)
    logger.info(
        "load_pvt_pretrained: loaded %d/%d tensors from %s (ignored %d head tensors).",
        matched,
        len(expected),
        path,
        ignored,
    )
    return matched
