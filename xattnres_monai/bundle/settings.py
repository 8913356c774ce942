"""The settings a model was trained with, as recorded in its checkpoint, and the check against a configuration.

A bundle config states its settings in one dictionary, ``trained_settings`` (training records it; inference and
evaluation compare with it)::

    "trained_settings": {
        "network_def": "$xattnres_monai.networks.definition.network_definition(@network)",
        "roi_size": "@roi_size", "hu_window": "@hu_window", "num_classes": "@num_classes",
        "class_names": "@class_names"
    }

A key present on one side only, or ``None`` on either side (e.g. ``class_names`` left to the defaults), is not
compared: a checkpoint written before settings were recorded loads as before (its weights are still checked key by
key and shape by shape).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple

from xattnres_monai.networks.definition import _plain
from xattnres_monai.utils.files import InputError

__all__ = ["check_settings", "settings_differences", "trained_settings"]

#: the checkpoint entry that holds the settings (``models/model.pt`` is ``{"model": weights, "settings": ...}``)
SETTINGS_KEY = "settings"


def trained_settings(settings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``settings`` as plain JSON-able values (tuples as lists), the form stored in a checkpoint and compared."""
    return {str(k): _plain(v) for k, v in dict(settings or {}).items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _short(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else value


def settings_differences(recorded: Mapping[str, Any], configured: Mapping[str, Any]) -> List[Tuple[str, Any, Any]]:
    """``[(name, recorded value, configured value)]`` for each setting that both state and that differs.

    ``network_def`` is compared argument by argument (``network_def#skip``) and by class (``network_def#_target_``).

    Example::

        >>> settings_differences({"roi_size": [96, 96]}, {"roi_size": (224, 224)})
        [('roi_size', [96, 96], [224, 224])]
    """
    recorded, configured = trained_settings(recorded), trained_settings(configured)
    found: List[Tuple[str, Any, Any]] = []
    for name in recorded:
        if name not in configured or recorded[name] is None or configured[name] is None:
            continue
        old, new = recorded[name], configured[name]
        if isinstance(old, dict) and isinstance(new, dict):
            for arg in list(old) + [a for a in new if a not in old]:
                if arg in old and arg in new and not _same(old[arg], new[arg]):
                    found.append((f"{name}#{arg}", old[arg], new[arg]))
        elif not _same(old, new):
            found.append((name, old, new))
    return found


def check_settings(path: str, recorded: Optional[Mapping[str, Any]], configured: Optional[Mapping[str, Any]]) -> None:
    """Raise an :class:`InputError` naming ``path`` when the checkpoint's recorded settings disagree with the config.

    The one line names every differing setting with both values and how to resolve it: use the trained bundle's own
    configs (training wrote its settings into them) or override the setting on the command line.

    Args:
        path: the checkpoint file (named in the message).
        recorded: the checkpoint's ``settings`` entry (``None``: an older checkpoint, nothing to compare).
        configured: the configuration's ``trained_settings``.
    """
    if not recorded or not configured:
        return
    differences = settings_differences(recorded, configured)
    if not differences:
        return
    stated = "; ".join(f"{name} {_short(old)} (this configuration: {_short(new)})" for name, old, new in differences)
    overrides = " ".join(f"--{name} {json.dumps(old, separators=(',', ':'))}" for name, old, _ in differences)
    raise InputError(
        path,
        f"the model was trained with {stated}: use the configs of the bundle it was trained in (training wrote these "
        f"settings there) or override {overrides}",
    )
