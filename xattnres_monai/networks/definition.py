"""The definition of a built network (its class and constructor arguments), as a trained bundle records it.

A trained bundle must say which network its weights belong to. Weights alone do not: two U-Nets that differ only
in an activation or normalisation have the same state dict keys. A network calls :func:`record_definition` with the
(checked) arguments it was built with, and :func:`network_definition` returns them as a bundle ``network_def``
(``{"_target_": "<module>.<Class>", **arguments}``), which training writes into ``models/model.pt`` and the
trained bundle's configs (:mod:`xattnres_monai.bundle`).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn

__all__ = ["network_definition", "record_definition"]

def _plain(value: Any) -> Any:
    """``value`` as JSON-able Python (tuples as lists); anything else as its ``repr`` (still comparable)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def record_definition(network: nn.Module, **arguments: Any) -> None:
    """Store the constructor ``arguments`` of ``network`` (after option checking) for :func:`network_definition`.

    A network calls this at the end of its ``__init__`` with its checked arguments (``"false"`` already parsed to
    ``False``), leaving out what does not describe the trained network (e.g. the path of encoder weights that only
    initialise a training run).

    Example::

        >>> class Net(nn.Module):
        ...     def __init__(self, channels: int = 4, pretrained_path=None):
        ...         super().__init__()
        ...         record_definition(self, channels=int(channels))
        >>> network_definition(Net(8))
        {'_target_': '__main__.Net', 'channels': 8}
    """
    # object.__setattr__: a plain attribute, neither a parameter nor a submodule (and ignored by TorchScript)
    object.__setattr__(network, "definition_args", {str(k): _plain(v) for k, v in arguments.items()})


def network_definition(network: nn.Module) -> Dict[str, Any]:
    """``{"_target_": "<module>.<Class>", **constructor arguments}`` of a built network (a DDP wrapper looked through).

    Networks that do not call :func:`record_definition` (e.g. MONAI's own) give their class only; their
    architecture is still checked key by key and shape by shape when weights are loaded.

    Example::

        >>> network_definition(XAttnResUNet(2, 1, 9))["xattnres"]
        'full'
    """
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    cls = type(network)
    definition: Dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    definition.update(getattr(network, "definition_args", {}))
    return definition
