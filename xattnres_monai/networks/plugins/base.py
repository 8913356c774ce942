"""XAttnRes as a plug-in for existing encoder-decoder networks: the history pool and the routing blocks.

A plug-in network is the original network class (MONAI's own ``DynUNet``, ``BasicUNet``) subclassed with
:class:`XAttnResPlugin`: the original constructor builds the original modules under their original names, the
plug-in adds one module, ``routing``, that holds an :class:`~xattnres_monai.networks.blocks.XAttnRes` block per
stage, and a new ``forward`` runs the original modules in their original order with the routing of the paper
around them (arXiv 2604.03297, Eq. 3 and 10-11):

* every stage output (encoder ``e_1 .. e_S``, then decoder ``d_1, d_2 ...``) is appended to a history pool that
  lives for one forward pass;
* before each encoder stage but the first, ``x = XAttnRes(H, Down(x))`` (Eq. 10); before each decoder stage,
  ``x = XAttnRes(H, Up(x))`` (Eq. 11): the block aggregates ``x`` with *all* pool entries so far, each aligned
  to ``x`` (Eq. 4: adaptive max pooling along the axes where the entry is larger, bilinear / trilinear
  interpolation along those where it is smaller, a 1x1 projection where the channels differ);
* ``skip=False`` ("replace" / "no skip" of Table 3) feeds zeros in place of the network's own skip tensor.

No module of the original network is copied, renamed or rebuilt, so its state dict keys stay those of the plain
network and the plug-in adds ``routing.*`` keys only: :func:`load_plain_state_dict` loads a plain network's
weights and reports exactly the ``routing.*`` keys as missing. With zero-initialised pseudo-queries (the default)
each block starts as the plain mean of its aligned entries; with ``xattnres="none"`` and ``skip=True`` the
plug-in network computes exactly what the plain network computes.

``routing`` mirrors the names of the stages it sits before: the block before ``downsamples.1`` of a DynUNet is
``routing.downsamples.1``, the one before ``upcat_4`` of a BasicUNet is ``routing.upcat_4``. Where a placement
(``xattnres="encoder"`` / ``"decoder"`` / ``"none"``) puts no block, a parameter-free :class:`NoRouting`
(the identity) stands in, so the forward pass is one code path (TorchScript unrolls loops over module lists and
needs every entry to exist).

Why zeros for ``skip=False``: the network keeps its modules, channel counts and parameter names, so a plain
network's weights load into every routing configuration and one checkpoint format serves all rows of Table 3. A
convolution over ``[up; 0]`` is exactly a convolution over ``up`` with the weight slice of the skip channels
removed (those weights get zero gradient and stay as initialised or loaded), so the network computes what the
narrower "no skip" network computes; the cost is those unused weights (counted by ``parameters()``) and their
multiply-adds with zeros. Building narrower decoder convolutions instead would change parameter shapes (no plain
weights would load) and would mean rebuilding the original blocks, i.e. copying the network.

How to add another network (the hooks one implements)
-------------------------------------------------------
1. Subclass the original network together with :class:`XAttnResPlugin` (the mixin first) and, in ``__init__``,
   call the original constructor, then :meth:`XAttnResPlugin.setup_xattnres` with the placement, the skip option
   and the pseudo-query initialisation, and :func:`~xattnres_monai.networks.definition.record_definition` with all
   checked constructor arguments.
2. Implement :meth:`XAttnResPlugin.xattnres_stages`: the stages in the order they run (= pool order), each a
   :class:`Stage` naming the original module (``"downsamples.0"``, ``"upcat_4"``), its side (``"encoder"`` /
   ``"decoder"``), the channels of the tensor the block aggregates into (the stage input after ``Down`` / ``Up``)
   and the channels of the stage output it appends to the pool. Read them from the built modules.
3. Write ``forward``: run the original modules in order; before a stage's own convolutions call
   ``x = self.routing.<name>(x, history, cache)``; after the stage ``history.append(x)``; pass
   ``self.skip_input(skip)`` where the stage takes its skip tensor. ``history`` (``List[Tensor]``) and ``cache``
   (``Dict[str, Tensor]``, shared so each entry is pooled once per resolution) are local to the forward pass.
   Where ``Down`` / ``Up`` is a separate module (max pooling, a transposed convolution) run it, then the block, then
   the rest of the stage; where it is fused into the stage's first convolution (a strided convolution), call the
   block on the stage input (see :class:`~xattnres_monai.networks.plugins.XAttnResDynUNet`).
4. Loop over the original module lists with ``zip(self.<list>, self.routing.<list>)`` (TorchScript unrolls it).

:class:`~xattnres_monai.networks.plugins.XAttnResDynUNet` and :class:`~xattnres_monai.networks.plugins.XAttnResBasicUNet`
are the two examples, about 60 lines each.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from xattnres_monai.networks.blocks.xattnres import QUERY_INITS, XAttnRes
from xattnres_monai.networks.nets.xattnres_unet import XATTNRES_PLACEMENTS
from xattnres_monai.networks.utils import (
    format_key_mismatch,
    parse_pruned_connections,
    pool_stage_names,
    state_dict_differences,
)
from xattnres_monai.utils.options import as_bool, as_choice, as_int

__all__ = [
    "ROUTING_PREFIX",
    "XATTNRES_PLACEMENTS",
    "NoRouting",
    "Stage",
    "XAttnResPlugin",
    "build_routing",
    "stage_names",
    "load_plain_state_dict",
]

#: the state dict prefix of every parameter the plug-in adds.
ROUTING_PREFIX = "routing."


class Stage(NamedTuple):
    """One stage of the wrapped network, as the history pool sees it.

    Attributes:
        name: the original module of the stage, as ``named_modules`` names it (``"input_block"``,
            ``"downsamples.0"``, ``"upcat_4"``); at most one ``.<index>`` for an entry of a module list.
        side: ``"encoder"`` (Eq. 10) or ``"decoder"`` (Eq. 11).
        in_channels: channels of the tensor the XAttnRes block before the stage aggregates into.
        out_channels: channels of the stage output (appended to the pool).
        routed: ``False``: no block before this stage whatever the placement, for a stage whose block could only
            aggregate its input with itself (a DynUNet's second stage: input and pool are both ``e_1``; the
            softmax-weighted mean of identical entries is that entry, whatever the weights).
    """

    name: str
    side: str
    in_channels: int
    out_channels: int
    routed: bool = True


class NoRouting(nn.Module):
    """The identity with the signature of :class:`XAttnRes`: stands where a placement puts no block.

    Example::

        >>> NoRouting()(torch.ones(1, 2, 4, 4), []).shape
        torch.Size([1, 2, 4, 4])
    """

    def forward(
        self, x: torch.Tensor, history: List[torch.Tensor], cache: Optional[Dict[str, torch.Tensor]] = None
    ) -> torch.Tensor:
        return x


def stage_names(stages: Sequence[Stage]) -> List[str]:
    """The pool names of ``stages`` as a routing report shows them: ``e1 .. eS`` (encoder), then ``d1 ..``."""
    encoder = sum(1 for s in stages if s.side == "encoder")
    return pool_stage_names(encoder, len(stages) - encoder)


def build_routing(
    spatial_dims: int,
    stages: Sequence[Stage],
    xattnres: str = "full",
    query_init: str = "zero",
    pruned_connections: Optional[Sequence[str]] = None,
    owner: str = "build_routing",
) -> nn.Module:
    """The ``routing`` module of a plug-in network: one block per stage but the first, named after the stage.

    Stage ``n`` (in pool order) gets ``XAttnRes(spatial_dims, stages[n].in_channels, [out_channels of stages
    0 .. n-1])`` where ``xattnres`` places a block on its side (and the stage is ``routed``), else
    :class:`NoRouting`. A stage named
    ``"<list>.<k>"`` becomes entry ``k`` of a module list ``<list>`` (the indices of a list must be 0, 1, ...).
    The first stage reads an empty pool and gets no entry.

    Args:
        spatial_dims: 2 or 3.
        stages: the stages in the order they run (:meth:`XAttnResPlugin.xattnres_stages`).
        xattnres: ``"none"``, ``"encoder"``, ``"decoder"`` or ``"full"``.
        query_init: pseudo-query initialisation (Table 5), one of :data:`~xattnres_monai.networks.blocks.QUERY_INITS`.
        pruned_connections: history connections not read, ``"block:entry"`` in the names of :func:`stage_names`
            (``"d4:e5"``: the block before decoder stage 4 does not read encoder output 5): no projection, no
            weight. Each must be a connection a built block has (one-line ``ValueError`` otherwise).
        owner: the name the error messages start with (the network's class name).

    Example::

        >>> stages = [Stage("conv_0", "encoder", 1, 8), Stage("down.0", "encoder", 8, 16),
        ...           Stage("up.0", "decoder", 8, 8)]
        >>> routing = build_routing(2, stages, "full")
        >>> routing.up[0].history_channels
        [8, 16]
    """
    xattnres = as_choice(xattnres, "build_routing: xattnres", XATTNRES_PLACEMENTS)
    query_init = as_choice(query_init, "build_routing: query_init", QUERY_INITS)
    names = stage_names(stages)
    pruned = parse_pruned_connections(pruned_connections, names, owner)
    unused = set(pruned)
    routing = nn.Module()
    lists: Dict[str, List[nn.Module]] = {}
    pool: List[int] = []
    for n, stage in enumerate(stages):
        if stage.side not in ("encoder", "decoder"):
            raise ValueError(f"build_routing: stage {stage.name!r} has side {stage.side!r}, not 'encoder' or 'decoder'.")
        if n > 0:
            enabled = (xattnres == "full" or xattnres == stage.side) and stage.routed
            dropped = [k for k in range(n) if (names[n], names[k]) in pruned] if enabled else []
            unused.difference_update((names[n], names[k]) for k in dropped)
            block: nn.Module = (
                XAttnRes(spatial_dims, stage.in_channels, list(pool), query_init=query_init, dropped=dropped)
                if enabled
                else NoRouting()
            )
            parts = stage.name.split(".")
            if len(parts) == 1:
                routing.add_module(parts[0], block)
            elif len(parts) == 2 and parts[1].isdigit():
                entries = lists.setdefault(parts[0], [])
                if int(parts[1]) != len(entries):
                    raise ValueError(f"build_routing: stage {stage.name!r} is out of order in its list.")
                entries.append(block)
            else:
                raise ValueError(f"build_routing: stage names are '<module>' or '<list>.<index>', got {stage.name!r}.")
        pool.append(int(stage.out_channels))
    if unused:
        raise ValueError(
            f"{owner}: pruned_connections {sorted(f'{b}:{e}' for b, e in unused)} are not connections of this "
            f"network (xattnres={xattnres!r}; a routed block reads the stage outputs produced before it)."
        )
    for name, entries in lists.items():
        routing.add_module(name, nn.ModuleList(entries))
    return routing


class XAttnResPlugin:
    """Mixin that turns an encoder-decoder network class into its XAttnRes plug-in version.

    Subclass as ``class XAttnResNet(XAttnResPlugin, Net)``; see the module docstring for the hooks
    (:meth:`xattnres_stages`, a ``forward`` that runs the original modules with ``self.routing``) and
    :class:`~xattnres_monai.networks.plugins.XAttnResDynUNet` for an example.

    Attributes set by :meth:`setup_xattnres`: ``xattnres`` (placement), ``skip``, ``query_init``, ``routing``
    (the blocks), ``xattnres_stage_names`` (pool order).
    """

    def xattnres_stages(self) -> List[Stage]:
        """The stages in the order they run (pool order), read from the built original modules (hook)."""
        raise NotImplementedError(f"{type(self).__name__} must implement xattnres_stages().")

    def setup_xattnres(
        self,
        spatial_dims: int,
        xattnres: str,
        skip: bool,
        query_init: str,
        pruned_connections: Optional[Sequence[str]] = None,
    ) -> None:
        """Build ``self.routing`` for :meth:`xattnres_stages` (call at the end of ``__init__``).

        Args:
            spatial_dims: 2 or 3.
            xattnres: ``"none"``, ``"encoder"``, ``"decoder"`` or ``"full"``.
            skip: keep the network's own skip connections (``False``: zeros in their place).
            query_init: pseudo-query initialisation.
            pruned_connections: ``"block:entry"`` connections not read (see :func:`build_routing`); sorted into
                ``self.pruned_connections``.
        """
        name = type(self).__name__
        self.xattnres = as_choice(xattnres, f"{name}: xattnres", XATTNRES_PLACEMENTS)
        self.skip = as_bool(skip, f"{name}: skip")
        self.query_init = as_choice(query_init, f"{name}: query_init", QUERY_INITS)
        stages = self.xattnres_stages()
        self.xattnres_stage_names = [s.name for s in stages]
        self.routing = build_routing(
            as_int(spatial_dims, f"{name}: spatial_dims"), stages, self.xattnres, self.query_init,
            pruned_connections, owner=name,
        )  # fmt: skip
        pruned = parse_pruned_connections(pruned_connections, stage_names(stages), name)  # (checked just above)
        self.pruned_connections = sorted(f"{b}:{e}" for b, e in pruned)

    def skip_input(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip tensor the stage is given: ``skip`` itself, or zeros of its shape when ``skip=False``."""
        if self.skip:
            return skip
        return torch.zeros_like(skip)


def _bare(network: nn.Module) -> nn.Module:
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return network.module
    return network


def load_plain_state_dict(network: nn.Module, state_dict: Mapping[str, Any]) -> List[str]:
    """Load the weights of the plain network into its plug-in version; returns the keys missing from them.

    Every key of ``state_dict`` must be a key of ``network`` with the same shape, and every key of ``network``
    outside ``routing.*`` must be in ``state_dict`` (strict for the original network); otherwise nothing is loaded
    and a ``RuntimeError`` names the mismatched keys. The ``routing.*`` parameters keep their current values
    (zero pseudo-queries: each block starts as the mean of its aligned entries). Works on a
    :func:`~xattnres_monai.networks.utils.strict_network` too (the full state dict is loaded strictly).

    Args:
        network: the plug-in network (or a ``DataParallel`` / ``DistributedDataParallel`` wrapper of it).
        state_dict: the plain network's ``state_dict()`` (a checkpoint's ``{"model": ...}`` entry).

    Returns:
        The sorted keys of ``network`` that ``state_dict`` lacks: exactly its ``routing.*`` keys when the weights
        belong to the same plain network.

    Example::

        >>> plain = DynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2])
        >>> net = XAttnResDynUNet(3, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2])
        >>> load_plain_state_dict(net, plain.state_dict())[:2]
        ['routing.bottleneck.gain', 'routing.bottleneck.projections.0.weight']
    """
    network = _bare(network)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_plain_state_dict: expected a state dict (a mapping), got {type(state_dict).__name__}.")
    own = network.state_dict()
    missing, unexpected, shapes = state_dict_differences(own, state_dict, ("given", "network"))
    wrong = [k for k in missing if not k.startswith(ROUTING_PREFIX)]
    if wrong or unexpected or shapes:
        raise RuntimeError(
            f"load_plain_state_dict: the weights do not belong to the plain {type(network).__name__} "
            f"({format_key_mismatch(wrong, unexpected, shapes)})"
        )
    merged = dict(own)
    merged.update(state_dict)
    network.load_state_dict(merged, strict=True)
    return sorted(missing)
