"""How decided the routing is: the entropy of the XAttnRes weights per position, and its course over training.

The entropy of a block's ``K+1`` weights at one position is ``-sum_n a_n log a_n``; normalised by ``log(K+1)`` it
is 1 for uniform weights (a zero query: the plain mean of the entries) and 0 when one entry takes all the weight,
whatever the block's pool size, so blocks can be compared on one scale.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Union

import torch
from monai.transforms import ResizeWithPadOrCrop
from torch import nn

from xattnres_monai.routing.capture import capture_routing
from xattnres_monai.routing.layout import routing_layout, spatial_dims_of, unwrap

__all__ = ["attention_entropy", "block_entropies", "routing_entropy_series"]


def attention_entropy(weights: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """The entropy of the weights per position: ``(B, K+1, *S)`` -> ``(B, *S)``, float32.

    Args:
        weights: softmax weights over dimension 1 (as :func:`~xattnres_monai.routing.capture.capture_routing` or
            :func:`~xattnres_monai.networks.utils.capture_attention` give them).
        normalise: divide by ``log(K+1)`` (uniform weights give 1, one-hot weights 0); a single entry gives 0.

    Example::

        >>> attention_entropy(torch.full((1, 4, 2, 2), 0.25))[0, 0, 0].item()
        1.0
    """
    weights = weights.float()
    entropy = -torch.special.xlogy(weights, weights).sum(dim=1)
    if normalise:
        entries = weights.shape[1]
        entropy = entropy / math.log(entries) if entries > 1 else torch.zeros_like(entropy)
    return entropy


def block_entropies(network: nn.Module, x: torch.Tensor) -> Dict[str, float]:
    """The mean normalised entropy of every XAttnRes block of ``network`` on the batch ``x`` (a forward pass as it
    is: call it in eval mode under ``torch.no_grad()``, as :func:`routing_entropy_series` does).

    Example::

        >>> block_entropies(XAttnResUNet(2, 1, 2).eval(), torch.randn(1, 1, 32, 32))["d4"]  # zero queries: uniform
        1.0
    """
    # the eager forward: a network compiled for training (``--compile true``) would otherwise compile again for
    # this eval-mode batch; the hooks sit on the XAttnRes blocks, which the eager forward calls as modules
    eager = getattr(network, "_orig_mod", network)
    with capture_routing(eager) as weights:
        eager.forward(x)
    return {name: float(attention_entropy(w).mean()) for name, w in weights.items()}


BatchSource = Union[torch.Tensor, Mapping[str, Any], Iterable[Any], Callable[[], Any]]


def _image(batch: Any, key: str) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, ``batch[key]``, or the first element of a tuple / list."""
    if isinstance(batch, Mapping):
        batch = batch[key]
    elif isinstance(batch, (list, tuple)) and not isinstance(batch, torch.Tensor):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"routing_entropy_series: expected an image tensor, got {type(batch).__name__}")
    return batch.as_tensor() if hasattr(batch, "as_tensor") else batch


def _network_input(
    image: torch.Tensor, spatial_dims: int, max_items: int, roi_size: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """At most ``max_items`` inputs of ``spatial_dims`` spatial axes: a volume batch for a 2D network gives evenly
    spaced slices of its first volume along the last axis (as the bundles' ``SliceInferer`` slices); inputs of the
    network's own dimension are centre-cropped / zero-padded to ``roi_size`` when it is given (a whole validation
    volume for a patch-trained 3D network, whose size need not fit its strides)."""
    if image.dim() == spatial_dims + 3:  # (B, C, X, Y, Z) volumes for a 2D network
        volume = image[0]
        depth = volume.shape[-1]
        count = min(max_items, depth)
        indices = [int((i + 0.5) * depth / count) for i in range(count)]
        return volume[..., indices].movedim(-1, 0)
    if image.dim() != spatial_dims + 2:
        raise ValueError(
            f"routing_entropy_series: a batch of shape {list(image.shape)} does not fit a {spatial_dims}D network"
        )
    image = image[:max_items]
    if roi_size is not None:
        roi = [int(r) for r in roi_size]
        if len(roi) != spatial_dims:
            raise ValueError(f"routing_entropy_series: roi_size {roi} for a {spatial_dims}D network")
        crop = ResizeWithPadOrCrop(roi)
        image = torch.stack([torch.as_tensor(crop(item)) for item in image])
    return image


class _EntropySeries:
    """The callable of :func:`routing_entropy_series` (the batch is fetched once, at its first call)."""

    def __init__(
        self, network: nn.Module, batch_source: BatchSource, max_items: int, key: str,
        roi_size: Optional[Sequence[int]] = None,
    ) -> None:  # fmt: skip
        self.network = network
        self.roi_size = None if roi_size is None else [int(r) for r in roi_size]
        self.batch_source = batch_source
        self.max_items = int(max_items)
        self.key = key
        self._batch: Optional[torch.Tensor] = None
        if self.max_items < 1:
            raise ValueError(f"routing_entropy_series: max_items must be >= 1, got {max_items}")
        routing_layout(network)  # fails now, not at the end of the first epoch, without XAttnRes blocks

    def batch(self) -> torch.Tensor:
        """The fixed batch (fetched and cut to ``max_items`` inputs at the first call)."""
        if self._batch is None:
            source = self.batch_source
            source = getattr(source, "data_loader", source)  # an evaluator: its (first) validation batch
            # a DataLoader iterator draws its base seed from the global generator: drawn here, mid-training, it
            # would shift every later random number and break bit-identical resumed training, so the global
            # state is put back afterwards
            with torch.random.fork_rng(devices=[]):
                if isinstance(source, (torch.Tensor, Mapping)):
                    batch = source
                elif callable(source):
                    batch = source()
                else:
                    batch = next(iter(source))
            dims = spatial_dims_of(self.network)
            image = _image(batch, self.key)
            self._batch = _network_input(image, dims, self.max_items, self.roi_size).detach().clone()
        return self._batch

    def __call__(self, engine: Any = None) -> Dict[str, float]:
        network = unwrap(self.network)
        modes = {m: m.training for m in network.modules()}
        parameter = next(network.parameters(), None)
        x = self.batch()
        if parameter is not None:
            x = x.to(device=parameter.device, dtype=parameter.dtype)
        try:
            network.eval()
            with torch.no_grad():
                return block_entropies(network, x)
        finally:
            for module, training in modes.items():
                module.training = training


def routing_entropy_series(
    network: nn.Module,
    batch_source: BatchSource,
    max_items: int = 4,
    key: str = "image",
    roi_size: Optional[Sequence[int]] = None,
) -> Callable[[Any], Dict[str, float]]:
    """A per-epoch series for :class:`~xattnres_monai.handlers.training_curves.TrainingCurves`' ``extra_series``:
    the mean normalised routing entropy of every XAttnRes block on a fixed small batch.

    Each call (with the trainer, or nothing) runs ``network`` once on the batch in eval mode under
    ``torch.no_grad()`` and returns ``{block: entropy}`` (block names of
    :func:`~xattnres_monai.routing.layout.routing_layout`: ``"e2"`` ... ``"d4"``); every module's train / eval mode
    is restored afterwards. 1 is uniform routing (the zero-initialised start), lower values a more decided one.

    Args:
        network: the network being trained (a wrapper is looked through); it must hold XAttnRes blocks.
        batch_source: the fixed batch: a tensor ``(B, C, *S)``; a batch dict (``key`` taken); a data loader or any
            iterable (its first batch); an evaluator with a ``data_loader`` (its first validation batch); or a
            callable returning a batch. Fetched once, at the first call, and kept. Volumes ``(B, C, X, Y, Z)`` for
            a 2D network give ``max_items`` evenly spaced slices along the last axis of the first volume.
        max_items: at most this many inputs of the batch are used (it is computed every epoch: keep it small).
        key: the image key of batch dicts.
        roi_size: the network's input size: inputs of its own dimension are centre-cropped / zero-padded to it (a
            patch-trained 3D network validated on whole volumes); slices of volumes for a 2D network are kept as
            they are.

    Example::

        >>> curves = TrainingCurves("runs/progress.png", validator=evaluator,
        ...                         extra_series={"routing_entropy": routing_entropy_series(net, evaluator)})
    """
    return _EntropySeries(network, batch_source, max_items, key, roi_size)
