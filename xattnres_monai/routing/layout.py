"""Who reads whom: the XAttnRes blocks of a network named by stage, their history entries, and the fixed topology.

Names (the paper's Eq. 3 pool order, Section 3.2):

- :class:`~xattnres_monai.networks.nets.XAttnResUNet` with ``S`` encoder stages: encoder outputs ``e1 .. eS``
  (finest first), decoder outputs ``d1 .. d(S-1)`` in the order the decoder produces them (``d1`` the coarsest, next
  to the bottleneck, ``d(S-1)`` the finest), as the history pool holds them. A block is named by the stage it
  precedes: ``e2 .. eS`` (``encoder.1.routing`` ...), ``d1 .. d(S-1)`` (``decoder.0.routing`` ...). Its entries are
  the pool it reads, then ``"input"``, its own stage input (``Down(e(i-1))`` / ``Up(previous stage)``).
- :class:`~xattnres_monai.networks.nets.EMCADNet` (``xattnres=True``): EMCAD's own stage names, where ``e1 .. e4`` are
  the PVTv2 maps (finest first) and decoder stage ``j`` produces ``dj`` from the coarsest, ``d4``, to the finest,
  ``d1``. Blocks ``d4, d3, d2, d1`` (``decoder.stages.0.routing`` ...); the pool is ``e1 .. e4`` then ``d4, d3, d2``;
  the input of block ``d4`` is ``e4`` itself, that of block ``dj`` is ``EUCB(d(j+1))``.
- A plug-in network (:class:`~xattnres_monai.networks.plugins.XAttnResDynUNet`, ``XAttnResBasicUNet``): its stages
  in pool order, ``e1 .. eS`` then ``d1 ..`` (coarsest decoder stage first); block ``routing.<stage module>`` is named
  by the stage it precedes; the input of an encoder block of a DynUNet is the previous stage output itself (its
  ``Down`` is the stride of the stage's first convolution).
- Any other network with XAttnRes blocks: blocks by module name, entries ``h1 .. hK`` and ``"input"``.

The fixed topology (:meth:`BlockLayout.fixed_entries`) is what a plain network connects to each stage: the previous
stage (as its history entry *and* as the block's input, which is that stage resized: ``Down`` / ``Up`` / ``EUCB``)
and, for a decoder stage, the resolution-matched encoder output (the U-Net skip; EMCAD's LGAG gate input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from xattnres_monai.networks.blocks.xattnres import XAttnRes
from xattnres_monai.networks.utils import pool_stage_names

__all__ = [
    "INPUT",
    "BlockLayout",
    "entry_columns",
    "has_routing",
    "routing_layout",
    "spatial_dims_of",
    "topology_matrix",
    "unwrap",
]

#: the name of a block's own stage input (the last of its ``K+1`` weights).
INPUT = "input"


@dataclass(frozen=True)
class BlockLayout:
    """One XAttnRes block: its module name, its stage name and the names of the ``K+1`` entries it weighs.

    Args:
        module: the module name in ``network.named_modules()`` (e.g. ``"decoder.3.routing"``).
        name: the stage the block precedes (e.g. ``"d4"``).
        entries: the history entries in pool order, then :data:`INPUT`.
        previous: the entry holding the previous stage's output (``None``: unknown).
        skip: the resolution-matched encoder entry a plain decoder stage reads (``None``: none).

    Example::

        >>> BlockLayout("decoder.0.routing", "d1", ("e1", "e2", "input"), previous="e2", skip="e1").fixed_entries
        ('e2', 'input', 'e1')
    """

    module: str
    name: str
    entries: Tuple[str, ...]
    previous: Optional[str] = None
    skip: Optional[str] = None
    kind: str = field(default="generic", compare=False)

    @property
    def fixed_entries(self) -> Tuple[str, ...]:
        """The entries a plain network (fixed routing) connects to this stage; empty when unknown."""
        if self.previous is None:
            return ()
        return tuple(e for e in (self.previous, INPUT, self.skip) if e is not None)


def unwrap(network: nn.Module) -> nn.Module:
    """``network`` without a ``DataParallel`` / ``DistributedDataParallel`` wrapper (checkpoints hold the bare one)."""
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


def has_routing(network: nn.Module) -> bool:
    """Whether ``network`` (an eager module; a wrapper is looked through) holds XAttnRes blocks to report on.

    For configs that add the routing series only where there is routing, e.g. ``"extra_series": "$({'routing_entropy':
    xattnres_monai.routing.routing_entropy_series(@network, @validate#dataloader)} if
    xattnres_monai.routing.has_routing(@network) else {})"``.

    Example::

        >>> has_routing(XAttnResUNet(2, 1, 2)), has_routing(XAttnResUNet(2, 1, 2, xattnres="none"))
        (True, False)
    """
    network = unwrap(network)
    return not isinstance(network, torch.jit.ScriptModule) and any(isinstance(m, XAttnRes) for m in network.modules())


def spatial_dims_of(network: nn.Module) -> int:
    """The number of spatial dimensions of a network's XAttnRes blocks (2 or 3).

    Example::

        >>> spatial_dims_of(XAttnResUNet(3, 1, 2))
        3
    """
    for module in unwrap(network).modules():
        if isinstance(module, XAttnRes):
            return int(module.spatial_dims)
    raise ValueError(f"routing report: {type(unwrap(network)).__name__} has no XAttnRes block")


def _blocks(network: nn.Module) -> Dict[str, XAttnRes]:
    return {name: m for name, m in network.named_modules() if isinstance(m, XAttnRes)}


def _read(block: XAttnRes, pool: Sequence[str]) -> Tuple[str, ...]:
    """The names of the pool entries ``block`` reads (all of them unless it was pruned)."""
    return tuple(pool[i] for i in block.read if i < len(pool))


def _unet_layout(network: nn.Module, blocks: Dict[str, XAttnRes]) -> List[BlockLayout]:
    num_encoder = len(network.encoder)
    names = pool_stage_names(num_encoder, len(network.decoder))
    encoder, decoder = names[:num_encoder], names[num_encoder:]
    layouts = []
    for i in range(1, num_encoder):
        module = f"encoder.{i}.routing"
        if module in blocks:
            pool = _read(blocks[module], encoder[:i])
            layouts.append(BlockLayout(module, encoder[i], pool + (INPUT,), encoder[i - 1], None, "unet"))
    for j in range(len(decoder)):
        module = f"decoder.{j}.routing"
        if module in blocks:
            pool = _read(blocks[module], encoder + decoder[:j])
            previous = encoder[-1] if j == 0 else decoder[j - 1]
            skip = encoder[num_encoder - 2 - j]
            layouts.append(BlockLayout(module, decoder[j], pool + (INPUT,), previous, skip, "unet"))
    return layouts


def _emcad_layout(blocks: Dict[str, XAttnRes]) -> List[BlockLayout]:
    encoder = ["e1", "e2", "e3", "e4"]
    decoder = ["d4", "d3", "d2", "d1"]  # stage order, coarse to fine
    layouts = []
    for i in range(4):
        module = f"decoder.stages.{i}.routing"
        if module in blocks:
            pool = _read(blocks[module], encoder + decoder[:i])
            previous = "e4" if i == 0 else decoder[i - 1]
            skip = None if i == 0 else encoder[3 - i]
            layouts.append(BlockLayout(module, decoder[i], pool + (INPUT,), previous, skip, "emcad"))
    return layouts


def _plugin_layout(network: nn.Module, blocks: Dict[str, XAttnRes]) -> List[BlockLayout]:
    """A plug-in network (:mod:`xattnres_monai.networks.plugins`): stages in pool order, ``e1 .. eS`` then ``d1 ..``;
    block ``routing.<stage module>`` is named by the stage it precedes."""
    from xattnres_monai.networks.plugins import stage_names

    stages = network.xattnres_stages()
    encoder = [s for s in stages if s.side == "encoder"]
    names = stage_names(stages)
    layouts = []
    for n, stage in enumerate(stages):
        module = f"routing.{stage.name}"
        if n == 0 or module not in blocks:
            continue
        pool = _read(blocks[module], names[:n])
        j = n - len(encoder)  # decoder index (< 0 in the encoder)
        skip = names[len(encoder) - 2 - j] if j >= 0 and len(encoder) - 2 - j >= 0 else None
        layouts.append(BlockLayout(module, names[n], pool + (INPUT,), names[n - 1], skip, "plugin"))
    return layouts


def routing_layout(network: nn.Module) -> List[BlockLayout]:
    """The XAttnRes blocks of ``network`` (in forward order) with their stage and entry names (module docstring).

    Args:
        network: an :class:`~xattnres_monai.networks.nets.XAttnResUNet` (2D or 3D), an
            :class:`~xattnres_monai.networks.nets.EMCADNet` or any module holding XAttnRes blocks; a
            ``DataParallel`` / ``DistributedDataParallel`` wrapper is looked through.

    Raises:
        ValueError: a network without XAttnRes blocks (e.g. ``xattnres="none"``), or a TorchScript module (the
            report uses forward hooks, which scripted / exported networks do not run).

    Example::

        >>> [(b.name, b.entries) for b in routing_layout(XAttnResUNet(2, 1, 2))][:2]
        [('e2', ('e1', 'input')), ('e3', ('e1', 'e2', 'input'))]
    """
    from xattnres_monai.networks.nets import EMCADNet, XAttnResUNet
    from xattnres_monai.networks.plugins import XAttnResPlugin

    network = unwrap(network)
    if isinstance(network, torch.jit.ScriptModule):
        raise ValueError("routing report: a TorchScript module runs no forward hooks; use the eager network")
    blocks = _blocks(network)
    if not blocks:
        raise ValueError(
            f"routing report: {type(network).__name__} has no XAttnRes block (built with xattnres='none' / False?)"
        )
    if isinstance(network, XAttnResUNet):
        layouts = _unet_layout(network, blocks)
    elif isinstance(network, EMCADNet):
        layouts = _emcad_layout(blocks)
    elif isinstance(network, XAttnResPlugin):
        layouts = _plugin_layout(network, blocks)
    else:
        layouts = []
    if len(layouts) != len(blocks) or any(len(l.entries) != len(blocks[l.module].read) + 1 for l in layouts):
        layouts = [
            BlockLayout(name, name, tuple(f"h{k + 1}" for k in block.read) + (INPUT,))
            for name, block in blocks.items()
        ]
    return layouts


def entry_columns(layouts: Sequence[BlockLayout]) -> List[str]:
    """Every entry name of ``layouts``, in pool order (first appearance), :data:`INPUT` last.

    Example::

        >>> entry_columns(routing_layout(XAttnResUNet(2, 1, 2, xattnres="encoder")))
        ['e1', 'e2', 'e3', 'e4', 'input']
    """
    seen: Dict[str, None] = {}
    for layout in layouts:
        seen.update((e, None) for e in layout.entries if e != INPUT)
    return list(seen) + [INPUT]


def topology_matrix(layouts: Sequence[BlockLayout], columns: Optional[Sequence[str]] = None) -> np.ndarray:
    """The fixed routing as a block x entry matrix: 1 where a plain network connects the entry to the stage, 0 where
    the block reads the entry but a plain network does not, NaN where the entry is not in the block's pool.

    Example::

        >>> topology_matrix(routing_layout(XAttnResUNet(2, 1, 2, xattnres="encoder")))[0]
        array([ 1., nan, nan, nan,  1.])
    """
    columns = list(columns) if columns is not None else entry_columns(layouts)
    matrix = np.full((len(layouts), len(columns)), np.nan)
    for r, layout in enumerate(layouts):
        fixed = set(layout.fixed_entries)
        for c, entry in enumerate(columns):
            if entry in layout.entries:
                matrix[r, c] = 1.0 if entry in fixed else 0.0
    return matrix
