"""Inspection helpers for networks built with :class:`~xattnres_monai.networks.blocks.XAttnRes`, and strict weight
loading: :func:`format_key_mismatch` is the one description of weights that do not match a network (used by
:func:`state_dict_mismatch`, :func:`strict_network`, the checkpoint handlers and the PVTv2 pretrained loader)."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Set, Tuple

import torch
from torch import nn

from xattnres_monai.networks.blocks.xattnres import XAttnRes
from xattnres_monai.utils.options import as_bool

__all__ = [
    "parse_pruned_connections",
    "pool_stage_names",
    "capture_attention",
    "check_input",
    "compile_network",
    "count_parameters",
    "format_key_mismatch",
    "state_dict_differences",
    "state_dict_mismatch",
    "strict_network",
]


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


def pool_stage_names(num_encoder: int, num_decoder: int) -> List[str]:
    """The names of a network's stages in pool order, as routing reports and ``pruned_connections`` use them.

    Args:
        num_encoder: encoder stages (``e1 .. eS``, finest first).
        num_decoder: decoder stages (``d1 ..``, coarsest first).

    Example::

        >>> pool_stage_names(3, 2)
        ['e1', 'e2', 'e3', 'd1', 'd2']
    """
    return [f"e{i + 1}" for i in range(num_encoder)] + [f"d{j + 1}" for j in range(num_decoder)]


def parse_pruned_connections(value: Any, names: Sequence[str], owner: str) -> Set[Tuple[str, str]]:
    """``["d4:e5", ...]`` (or one comma-separated string) as a set of ``(block, entry)`` stage-name pairs.

    Args:
        value: the ``pruned_connections`` option: ``None``, a sequence of ``"block:entry"`` strings or one string
            with comma-separated entries.
        names: the stage names of the network (``e1 .. eS``, ``d1 ..``).
        owner: the network's name for the error message.

    Raises:
        ValueError: an entry that is not ``block:entry`` with both parts in ``names`` (one line, naming it).

    Example::

        >>> sorted(parse_pruned_connections("d4:e5, d1:e2", ["e1", "e2", "e5", "d1", "d4"], "Net"))
        [('d1', 'e2'), ('d4', 'e5')]
    """
    if value is None:
        return set()
    items = value.split(",") if isinstance(value, str) else list(value)
    known = set(names)
    pairs = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        parts = text.split(":")
        if len(parts) != 2 or parts[0] not in known or parts[1] not in known:
            raise ValueError(
                f"{owner}: pruned_connections entries are 'block:entry' stage names ({', '.join(sorted(known))}), "
                f"got {item!r}."
            )
        pairs.add((parts[0], parts[1]))
    return pairs


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


def _shown(keys: Sequence[str], limit: int) -> str:
    keys = [str(k) for k in keys]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def format_key_mismatch(
    missing: Sequence[str] = (), unexpected: Sequence[str] = (), shapes: Sequence[str] = (), limit: int = 5
) -> str:
    """How weights differ from the module they are loaded into, naming the first keys of each kind (``""``: none).

    The one formatter of key mismatches: checkpoint loading, strict loading (:func:`strict_network`) and the
    PVTv2 pretrained loader all describe a mismatch with it.

    Args:
        missing: keys of the module that the weights lack.
        unexpected: keys of the weights that the module lacks.
        shapes: shape mismatches, already described (see :func:`state_dict_differences`).
        limit: how many keys to name per kind.

    Example::

        >>> format_key_mismatch(["a.weight", "a.bias", "b.weight"], ["c"], limit=2)
        'missing keys: a.weight, a.bias (+1 more); unexpected keys: c'
    """
    parts = []
    if missing:
        parts.append(f"missing keys: {_shown(missing, limit)}")
    if unexpected:
        parts.append(f"unexpected keys: {_shown(unexpected, limit)}")
    if shapes:
        parts.append(f"shape mismatch: {_shown(shapes, limit)}")
    return "; ".join(parts)


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
    ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through (checkpoints hold the bare module). A
    network whose key names changed between versions provides ``upgrade_state_dict(state_dict)`` (as
    :class:`~xattnres_monai.networks.nets.EMCADNet` does), and the keys of an older checkpoint are compared after it.

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
    upgrade = getattr(network, "upgrade_state_dict", None)  # a network whose key names changed renames old ones
    if callable(upgrade):
        state_dict = upgrade(state_dict)
    missing, unexpected, shapes = state_dict_differences(network.state_dict(), state_dict, ("checkpoint", "network"))
    return format_key_mismatch(missing, unexpected, shapes, limit)


def _refuse_partial_load(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: a load that left keys missing or unexpected is an error, whatever ``strict``."""
    mismatch = format_key_mismatch(list(incompatible_keys.missing_keys), list(incompatible_keys.unexpected_keys))
    if mismatch:
        raise RuntimeError(
            f"the weights do not match this {type(module).__name__} ({mismatch}): refusing a partial load, "
            "which would leave the missing layers with random weights"
        )


def strict_network(target: str, **kwargs: Any) -> nn.Module:
    """``target(**kwargs)`` (a network class given by its dotted path) whose ``load_state_dict`` is always strict.

    MONAI Label 0.8.5 loads a bundle's ``models/model.pt`` with ``load_state_dict(strict=False)`` and only logs a
    warning for mismatched keys, so the weights of another network configuration would be served with random
    layers. The network returned here carries a ``load_state_dict`` post-hook that raises on missing or unexpected
    keys (size mismatches raise in PyTorch anyway); it is otherwise the plain network (same state dict keys,
    scriptable, exportable). The Synapse bundle's ``inference.json`` builds its ``network_def`` with it.

    Args:
        target: dotted path of the network class, e.g. ``"xattnres_monai.networks.nets.XAttnResUNet"``.
        kwargs: the constructor arguments.

    Example (``inference.json``)::

        "network_def": {"_target_": "xattnres_monai.networks.utils.strict_network",
                        "target": "xattnres_monai.networks.nets.XAttnResUNet", "spatial_dims": 2, ...}
    """
    module_name, _, name = str(target).rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    network = cls(**kwargs)
    network.register_load_state_dict_post_hook(_refuse_partial_load)
    return network


def compile_network(network: nn.Module, enabled: Any = True, fullgraph: bool = True) -> nn.Module:
    """``network`` with its forward compiled by ``torch.compile`` when ``enabled`` (the bundles' ``--compile true``).

    ``nn.Module.compile`` compiles in place: the module, its parameter names and its state dict stay those of the
    eager network, so checkpoints, ``DistributedDataParallel``, ``ckpt_export`` and forward hooks on submodules work
    as without it. ``fullgraph=True`` (the default) makes any graph break an error instead of a silent slowdown; the
    XAttnRes kernels are ``torch.library`` custom operators, so the whole network is one graph.

    Args:
        network: the network (already on its device).
        enabled: compile or not (a bool, or a config string such as ``"true"``).
        fullgraph: refuse graph breaks.

    Example::

        >>> net = compile_network(XAttnResUNet(2, 1, 2), enabled=True)
        >>> sorted(net.state_dict()) == sorted(XAttnResUNet(2, 1, 2).state_dict())
        True
    """
    if as_bool(enabled, "compile"):
        network.compile(fullgraph=as_bool(fullgraph, "fullgraph"))
    return network
