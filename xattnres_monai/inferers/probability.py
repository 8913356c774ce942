"""Test-time augmentation (mirroring) and model ensembles in one inferer, averaged in probability space.

:class:`ProbabilityInferer` wraps any MONAI inferer (``SliceInferer``, ``SlidingWindowInferer``,
``SimpleInferer``). For every member of the ensemble (the bundle's network plus one strict copy of it per extra
model file) and every mirroring (nnU-Net style: the input flipped over a set of spatial axes), it runs the wrapped
inferer, applies the activation to that pass's output, flips the probabilities back and adds them up; the result is
their mean: class probabilities, so a bundle's postprocessing skips its own ``Activationsd``.

Cost: ``len(members) x len(flips)`` passes of the wrapped inferer (``flip_axes=(0, 1)``: 4 mirrorings; with two
extra model files 3 x 4 = 12 passes), memory: the extra networks' weights plus one probability volume for the
running sum.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from monai.inferers import Inferer, SimpleInferer
from torch import nn

from xattnres_monai.utils.files import InputError

__all__ = ["ACTIVATIONS", "ProbabilityInferer", "flip_sets", "load_member"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: activations applied to each pass's output: softmax over the channels (multi-class), sigmoid (multi-label or one
#: foreground channel), or none (a network that already outputs probabilities).
ACTIVATIONS = ("softmax", "sigmoid", "none")


def flip_sets(flip_axes: Sequence[int] = (), flips: Optional[Sequence[Sequence[int]]] = None) -> List[Tuple[int, ...]]:
    """The mirrorings to average: every subset of ``flip_axes`` (``2**k``, the identity first), or ``flips``.

    Args:
        flip_axes: spatial axes (0 = the first spatial axis of the input, after batch and channel).
        flips: an explicit list of axis sets (e.g. ``[[], [0], [1]]``: 3 passes instead of 4); overrides
            ``flip_axes``. The identity must be listed to be included.

    Example::

        >>> flip_sets((0, 1))
        [(), (0,), (1,), (0, 1)]
    """
    if flips is not None:
        sets = [tuple(sorted({int(a) for a in axes})) for axes in flips]
    else:
        axes = sorted({int(a) for a in flip_axes})
        sets = [s for k in range(len(axes) + 1) for s in itertools.combinations(axes, k)]
    if not sets:
        raise ValueError("flips lists no mirroring (use [[]] for none).")
    if any(a < 0 for s in sets for a in s):
        raise ValueError(f"flip axes are spatial axes counted from 0, got {sets}.")
    return sets


def _state_dict(path: str, checkpoint: Any, load_key: Optional[str]) -> Mapping[str, Any]:
    """The weights in a checkpoint: ``checkpoint[load_key]``, or the checkpoint itself when it is a bare state dict
    (as MONAI's ``CheckpointLoader`` reads a single-entry ``load_dict``)."""
    if not isinstance(checkpoint, Mapping):
        raise InputError(path, f"expected a checkpoint dictionary, found {type(checkpoint).__name__}")
    if load_key is not None and load_key in checkpoint:
        return checkpoint[load_key]
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise InputError(path, f"has no {load_key!r} entry (found {sorted(checkpoint)[:5]}) and is not a state dict")


def load_member(network: nn.Module, path: PathLike, load_key: Optional[str] = "model") -> nn.Module:
    """A copy of ``network`` holding the weights of the checkpoint ``path``, loaded strictly.

    Read with :func:`~xattnres_monai.handlers.resume.load_checkpoint` (``weights_only=True``) and checked with
    :func:`~xattnres_monai.networks.utils.state_dict_mismatch` first.

    Raises:
        InputError: naming ``path``: missing, unreadable, or weights of another network configuration.

    Example::

        >>> member = load_member(net, "models/fold1.pt")
    """
    from xattnres_monai.handlers.resume import load_checkpoint
    from xattnres_monai.networks.utils import state_dict_mismatch

    path = str(path)
    base = network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
    state = _state_dict(path, load_checkpoint(path), load_key)
    mismatch = state_dict_mismatch(base, state)
    if mismatch:
        raise InputError(path, f"does not match this network configuration: {mismatch}")
    member = copy.deepcopy(base)
    try:
        member.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        problem = " ".join(str(err).split())[:400]
        raise InputError(path, f"does not match this network configuration: {problem}") from None
    return member


class ProbabilityInferer(Inferer):
    """Mean class probabilities over an ensemble of networks and a set of input mirrorings.

    For each member network and each mirroring ``s`` (see :func:`flip_sets`), the wrapped ``inferer`` runs on the
    input flipped over ``s``, the activation turns its output into probabilities, which are flipped back over
    ``s``; the mean over the ``len(members) x len(flips)`` passes is returned (float32, the wrapped inferer's output
    shape). With neither flips nor model files this is the wrapped inferer followed by the activation.

    Members: the network the inferer is called with (the bundle's, with its ``CheckpointLoader`` weights), plus one
    copy of it per file in ``model_files`` holding that file's weights (loaded strictly; a file of another network
    configuration is an :class:`InputError` naming it), plus ``networks`` (already built modules). Give ``network``
    (the bundle's ``@network``) to load and check the model files when the inferer is built, before any scan runs;
    otherwise they are loaded on the first call. The copies follow the called network's device and train/eval mode.

    Args:
        inferer: the wrapped inferer (default ``SimpleInferer()``).
        flip_axes: spatial axes to mirror over, all ``2**k`` subsets (for a 2D network run by ``SliceInferer`` over
            (x, y, z) volumes use ``[0, 1]``: mirroring over the slicing axis only reorders slices).
        flips: explicit axis sets instead of all subsets, e.g. ``[[], [0], [1]]``.
        model_files: checkpoints of extra ensemble members (same configuration as the network).
        load_key: the entry holding the weights in those checkpoints (a bare state dict is accepted too).
        networks: extra member networks, already built and loaded.
        network: the bundle's network, to load the model files up front.
        activation: ``"softmax"`` (over channels), ``"sigmoid"`` or ``"none"``.

    Example (``inference.json``)::

        "inferer": {"_target_": "xattnres_monai.inferers.probability.ProbabilityInferer",
                    "inferer": {"_target_": "SliceInferer", "roi_size": "@roi_size", "spatial_dim": 2},
                    "flip_axes": [0, 1], "model_files": ["models/fold1.pt"], "network": "@network"}
    """

    def __init__(
        self,
        inferer: Optional[Inferer] = None,
        flip_axes: Sequence[int] = (),
        flips: Optional[Sequence[Sequence[int]]] = None,
        model_files: Optional[Sequence[PathLike]] = None,
        load_key: Optional[str] = "model",
        networks: Optional[Sequence[nn.Module]] = None,
        network: Optional[nn.Module] = None,
        activation: str = "softmax",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        if isinstance(model_files, (str, os.PathLike)):
            model_files = [model_files]
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.flips = flip_sets(flip_axes, flips)
        self.model_files = [str(f) for f in (model_files or [])]
        self.load_key = load_key
        self.networks = list(networks or [])
        self.activation = activation
        self._loaded: Optional[List[nn.Module]] = None
        if network is not None and self.model_files:
            self._loaded = [load_member(network, f, load_key) for f in self.model_files]

    @property
    def passes(self) -> int:
        """Forward passes of the wrapped inferer per input: members x mirrorings."""
        return (1 + len(self.model_files) + len(self.networks)) * len(self.flips)

    def members(self, network: Callable) -> List[Callable]:
        """The ensemble for a call with ``network``: ``network``, the model-file copies, then ``networks``."""
        if self._loaded is None:
            if self.model_files and not isinstance(network, nn.Module):
                raise TypeError("model_files need the network to be an nn.Module (to copy it).")
            self._loaded = [load_member(network, f, self.load_key) for f in self.model_files]  # type: ignore[arg-type]
        extra: List[Callable] = [*self._loaded, *self.networks]
        if isinstance(network, nn.Module) and extra:
            device = next(iter(network.parameters()), torch.empty(0)).device
            for member in extra:
                if isinstance(member, nn.Module):
                    member.to(device).train(network.training)
        return [network, *extra]

    def _probabilities(self, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"ProbabilityInferer needs one tensor from the wrapped inferer, got {type(output).__name__}"
                            " (a network with deep supervision outputs must be in eval mode).")  # fmt: skip
        output = output.float()
        if self.activation == "softmax":
            return torch.softmax(output, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(output)
        return output

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Mean probabilities of ``inputs`` (``(B, C, *spatial)``) over members and mirrorings.

        Args:
            inputs: the batch.
            network: the bundle's network (first member).
            args, kwargs: passed to the wrapped inferer.
        """
        spatial = inputs.ndim - 2
        for axes in self.flips:
            if any(a >= spatial for a in axes):
                raise ValueError(f"flip axes {axes} outside the {spatial} spatial axes of the input.")
        total: Optional[torch.Tensor] = None
        for member in self.members(network):
            for axes in self.flips:
                dims = [a + 2 for a in axes]
                x = torch.flip(inputs, dims) if dims else inputs
                probabilities = self._probabilities(self.inferer(x, member, *args, **kwargs))
                if dims:
                    probabilities = torch.flip(probabilities, dims)
                total = probabilities if total is None else total.add_(probabilities)
        assert total is not None
        return total.div_(self.passes)
