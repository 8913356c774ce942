"""Inspection helpers for networks built with :class:`~xattnres_monai.networks.blocks.XAttnRes`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import torch
from torch import nn

from xattnres_monai.networks.blocks.xattnres import XAttnRes

__all__ = ["capture_attention", "check_input", "count_parameters", "state_dict_differences", "state_dict_mismatch"]


@contextmanager
def capture_attention(network: nn.Module) -> Iterator[Dict[str, torch.Tensor]]:
    """Record the attention weights of every XAttnRes block during forward passes (eager mode only).

    Yields a dict filled on each forward pass: block name -> weights ``(B, K+1, *S)``, where entry
    ``n < K`` is history entry ``n`` and the last entry is the stage's own input. The weights are
    recomputed by forward hooks outside autograd, so the network's forward path (and its scripted
    form) is unchanged and pays nothing when this is not used.

    Example::

        >>> net = XAttnResUNet(spatial_dims=2, in_channels=1, out_channels=2).eval()
        >>> with capture_attention(net) as weights:
        ...     net(torch.randn(1, 1, 64, 64))
        >>> weights["decoder.3.routing"].shape  # 8 history entries + the stage input
        torch.Size([1, 9, 64, 64])
    """
    weights: Dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: XAttnRes, args, output) -> None:
            with torch.no_grad():
                weights[name] = module.attention_weights(args[0], args[1]).detach()

        return hook

    for name, module in network.named_modules():
        if isinstance(module, XAttnRes):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


def count_parameters(network: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``network``."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)


def check_input(x: torch.Tensor, network: str, spatial_dims: int, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(batch, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

    TorchScript-compatible, so networks call it at the top of ``forward``; the message names the network, what
    was expected and what was given.
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            network
            + ": expected a "
            + str(spatial_dims + 2)
            + "D input (batch, channel, spatial...), got shape "
            + str(list(x.shape))
            + "."
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            network
            + ": expected input with "
            + str(in_channels)
            + " channels, got "
            + str(x.shape[1])
            + " (input shape "
            + str(list(x.shape))
            + ")."
        )


def _shown(keys: List[str], limit: int) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def state_dict_differences(
    expected: Mapping[str, Any], given: Mapping[str, Any], names: Tuple[str, str] = ("given", "expected")
) -> Tuple[List[str], List[str], List[str]]:
    """The missing keys, the unexpected keys and the shape mismatches (described) of ``given`` against ``expected``.

    Args:
        expected: the state dict of the module to load into.
        given: the weights read from a file.
        names: how the shape descriptions call ``given`` and ``expected``, e.g. ``("file", "encoder")``.
    """
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} ({names[0]} {list(given[k].shape)}, {names[1]} {list(v.shape)})"
        for k, v in expected.items()
        if k in given and isinstance(given[k], torch.Tensor) and given[k].shape != v.shape
    ]
    return missing, unexpected, shapes


def state_dict_mismatch(network: nn.Module, state_dict: Mapping[str, Any], limit: int = 5) -> str:
    """Why ``state_dict`` cannot be loaded strictly into ``network``, naming the first mismatched keys (``""``: it can).

    Compares key sets (missing / unexpected) and tensor shapes, without modifying ``network``. A
    ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through (checkpoints hold the bare module).

    Args:
        network: the network the weights are meant for.
        state_dict: the weights read from a checkpoint.
        limit: how many keys to name per kind of mismatch.

    Example::

        >>> baseline = XAttnResUNet(2, 1, 9, xattnres="none").state_dict()
        >>> state_dict_mismatch(XAttnResUNet(2, 1, 9), baseline, limit=2)
        'missing keys: encoder.1.routing.query, encoder.1.routing.gain (+38 more)'
    """
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    if not isinstance(state_dict, Mapping):
        return f"expected a state dict (mapping of names to tensors), got {type(state_dict).__name__}"
    missing, unexpected, shapes = state_dict_differences(network.state_dict(), state_dict, ("checkpoint", "network"))
    parts = []
    if missing:
        parts.append(f"missing keys: {_shown(missing, limit)}")
    if unexpected:
        parts.append(f"unexpected keys: {_shown(unexpected, limit)}")
    if shapes:
        parts.append(f"shape mismatch: {_shown(shapes, limit)}")
    return "; ".join(parts)
