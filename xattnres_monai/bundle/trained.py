"""Write a model's trained settings into the configs of the bundle it was trained in.

After training, ``<bundle_root>/configs/*.json`` state the settings of ``models/model.pt``: the top-level
``roi_size`` / ``hu_window`` / ``num_classes`` / ``class_names`` (whichever a file defines), its ``network_def`` (the
trained class and arguments, in the file's own form: a ``strict_network`` wrapper stays one) and, in
``metadata.json``, the network's input / output shapes and the output ``channel_def``. So ``python -m monai.bundle
run --config_file <bundle>/configs/inference.json --bundle_root <bundle>`` (and evaluate, ``ckpt_export``,
``verify_net_in_out``, MONAI Label) use the trained settings with no overrides.

Only values that differ are rewritten (a file that already states the settings is left byte for byte as it is),
each file atomically. A ``"@name"`` reference in a ``network_def`` argument is kept when it still gives the trained
value (``"out_channels": "@num_classes"``), so the config stays a config. Overlay configs (``emcad.json``,
``dca.json``...) do not define ``trained_settings`` and are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, MutableMapping, Optional

from xattnres_monai.bundle.settings import _same, trained_settings
from xattnres_monai.utils.files import InputError, atomic_write

__all__ = ["update_bundle_configs"]

_STRICT = "xattnres_monai.networks.utils.strict_network"


def _locate(target: Any) -> Any:
    """The object a dotted path names (``None`` if it does not import)."""
    from monai.utils import optional_import

    if not isinstance(target, str) or "." not in target:
        return None
    module, _, name = target.rpartition(".")
    found, ok = optional_import(module, name=name)
    return found if ok else None


def _update_network_def(current: Any, trained: Mapping[str, Any], top_level: Mapping[str, Any]) -> Any:
    """``current`` (a config's ``network_def``) rewritten to build the ``trained`` definition."""
    if not isinstance(current, dict):
        return current
    wrapped = current.get("_target_") == _STRICT
    target_key = "target" if wrapped else "_target_"
    trained_class = _locate(trained["_target_"])
    same_class = trained_class is not None and _locate(current.get(target_key)) is trained_class
    updated: Dict[str, Any] = dict(current) if same_class else {"_target_": _STRICT} if wrapped else {}
    if not same_class:
        updated[target_key] = trained["_target_"]
    for arg, value in trained.items():
        if arg == "_target_":
            continue
        now = updated.get(arg)
        if isinstance(now, str) and now.startswith("@") and _same(top_level.get(now[1:], object()), value):
            continue  # "@num_classes" still gives the trained value: keep the reference
        if arg not in updated or not _same(now, value):
            updated[arg] = value
    return updated


def _update_metadata(meta: MutableMapping[str, Any], settings: Mapping[str, Any]) -> MutableMapping[str, Any]:
    meta = json.loads(json.dumps(meta))
    formats = meta.get("network_data_format", {})
    roi, names, classes = settings.get("roi_size"), settings.get("class_names"), settings.get("num_classes")
    for group in ("inputs", "outputs"):
        for spec in formats.get(group, {}).values():
            if isinstance(spec, dict) and roi is not None and "spatial_shape" in spec:
                spec["spatial_shape"] = list(roi)
    for spec in formats.get("outputs", {}).values():
        if not isinstance(spec, dict):
            continue
        if classes is not None and "num_channels" in spec:
            spec["num_channels"] = int(classes)
        if names and classes is not None and len(names) in (classes, classes - 1) and classes > 1:
            labels = list(names) if len(names) == classes else ["background"] + list(names)
            spec["channel_def"] = {str(i): str(n).replace("_", " ") for i, n in enumerate(labels)}
    return meta


def update_bundle_configs(bundle_root: str, settings: Mapping[str, Any]) -> List[str]:
    """Rewrite ``<bundle_root>/configs/*.json`` to state ``settings`` (see the module docstring); the files changed.

    A bundle root without a ``configs`` folder (training run with the configs of another folder) changes nothing:
    the settings are then in ``models/model.pt`` only, and inference with other configs is checked against them.

    Args:
        bundle_root: the bundle folder training wrote ``models/model.pt`` into.
        settings: the trained settings (``network_def``, ``roi_size``, ``hu_window``, ``num_classes``,
            ``class_names``; missing or ``None`` ones are not written).

    Raises:
        InputError: a config file that is not valid JSON, or cannot be written.
    """
    settings = trained_settings(settings)
    folder = Path(bundle_root) / "configs"
    changed: List[str] = []
    if not folder.is_dir():
        return changed
    for path in sorted(folder.glob("*.json")):
        try:
            text = path.read_text(encoding="utf-8")
            config = json.loads(text)
        except (OSError, ValueError) as err:
            raise InputError(path, f"cannot read the bundle config ({err})") from None
        # the configs that state settings (they define ``trained_settings``) and the metadata; not the overlays
        if not isinstance(config, dict) or not (path.name == "metadata.json" or "trained_settings" in config):
            continue
        if path.name == "metadata.json":
            updated: Any = _update_metadata(config, settings)
        else:
            updated = dict(config)
            for name, value in settings.items():
                if name != "network_def" and name in updated and value is not None and not _same(updated[name], value):
                    updated[name] = value
            if isinstance(settings.get("network_def"), dict) and "network_def" in updated:
                updated["network_def"] = _update_network_def(updated["network_def"], settings["network_def"], updated)
        if updated == config:
            continue
        try:
            with atomic_write(path, overwrite=True) as tmp:
                tmp.write_text(json.dumps(updated, indent=4) + "\n", encoding="utf-8")
        except OSError as err:
            raise InputError(path, f"cannot write the trained settings ({err})") from None
        changed.append(str(path))
    return changed


def describe(settings: Optional[Mapping[str, Any]]) -> str:
    """A short human description of settings, e.g. ``roi_size [96, 96], hu_window [-125, 275], 9 classes``."""
    settings = trained_settings(settings)
    parts = [f"{k} {settings[k]}" for k in ("roi_size", "hu_window") if settings.get(k) is not None]
    if settings.get("num_classes") is not None:
        parts.append(f"{settings['num_classes']} classes")
    net = settings.get("network_def") or {}
    if net:
        args = ", ".join(f"{k}={net[k]}" for k in ("skip", "xattnres", "dca") if k in net)
        parts.append(f"{str(net.get('_target_', '?')).rsplit('.', 1)[-1]}({args})")
    return ", ".join(parts)
