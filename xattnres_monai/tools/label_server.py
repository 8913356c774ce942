"""Serve the bundles to MONAI Label (annotation assist): prepare the ``monaibundle`` app offline, start the server.

Run with the Python of the MONAI Label environment (``make label-env`` builds ``.venv-label`` from
``requirements-label.txt``; the main environment has no MONAI Label)::

    .venv-label/bin/python -m xattnres_monai.tools.label_server start --studies /data/ct_studies

``start`` (``prepare`` stops after step 4):

1. copies the ``monaibundle`` sample app shipped in the ``monailabel`` 0.8.5 wheel to ``--app`` if it is not there
   (what ``monailabel apps --download --name monaibundle`` does: a local copy, nothing is downloaded);
2. deploys each ``--bundle`` to ``<app>/model/<bundle folder name>/``: ``configs/`` (refreshed every time, with the
   MONAI Label training settings of :data:`LABEL_TRAIN_SETTINGS` written into ``configs/train.json``, and the
   bundle's own MONAI Label settings, ``configs/monai_label.json``, applied: see :func:`monai_label_overlays`), ``docs/``,
   ``LICENSE`` and ``models/model.pt``; the weights are copied only when the app has none yet, so weights
   fine-tuned through MONAI Label survive a restart (``--replace-weights`` deploys the bundle's again);
3. refuses to start when a bundle has no ``models/model.pt`` (``--allow-untrained``: serve it for training only) or
   when the weights do not load strictly (``torch.load(weights_only=True)``, every key and shape) into the bundle's
   inference network;
4. prints the label names MONAI Label will use (``channel_def`` of the bundle's ``metadata.json``);
5. replaces itself with ``python -m monailabel.main start_server --app <app> --studies <studies> --conf models
   <names> --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000``. ``zoo_source github`` keeps the
   server from fetching the model-zoo index at start-up (the default source does, and fails offline, even for local
   bundles); ``sam2 false``: SAM2 is not installed.

Why the training settings: the bundles' defaults serve the command line, where rerunning a training command resumes
it from its newest ``checkpoint_epoch=N.pt`` and refuses to replace the checkpoints of another run. MONAI Label only
overrides ``max_epochs``, the data, the device and the handlers (it adds a non-strict ``CheckpointLoader`` for
``model.pt``), and every MONAI Label training is a new fine-tuning run that starts from ``model.pt``. So the deployed
``train.json`` has the per-epoch ``EpochCheckpoint`` handler disabled (no ``checkpoint_epoch=N.pt``: nothing to
resume from, and no "previous run" clean-up that would delete the deployed ``model.pt`` when a training has no
validation study), ``resume: false`` and ``overwrite: true``, and ``val_interval: 1``: ``model.pt`` is rewritten after
an epoch whose validation Dice is the best of the run (with the default interval of 10, a shorter training would never
update it). MONAI Label holds out ``val_split`` (default 0.2) of the labelled studies for validation, at least one
study from three labelled studies on; with fewer, pass a larger ``val_split`` or ``model.pt`` is not replaced.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from xattnres_monai.utils.files import InputError, atomic_write, cli_main

__all__ = [
    "LABEL_TRAIN_SETTINGS",
    "bundle_labels",
    "check_environment",
    "check_weights",
    "deploy_bundle",
    "monai_label_overlays",
    "main",
    "prepare_app",
    "server_command",
]

#: top-level settings written into the deployed ``configs/train.json``, whose ``EpochCheckpoint`` handler is also
#: disabled (see the module docstring).
LABEL_TRAIN_SETTINGS: Dict[str, Any] = {"resume": False, "overwrite": True, "val_interval": 1}
#: the pinned versions of the MONAI Label environment that :func:`check_environment` insists on.
EXPECTED_VERSIONS = {"monailabel": "0.8.5", "monai": "1.6.1", "pydicom": "2.4.4"}
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "synapse_ct_segmentation"


# --------------------------------------------------------------------------------------------------- bundles


def _metadata(bundle: Path) -> Dict[str, Any]:
    path = bundle / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "missing: not a MONAI bundle folder") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable ({err})") from None


def bundle_labels(bundle: Path) -> Dict[str, int]:
    """The labels MONAI Label serves for a bundle: ``{name: value}`` from the ``channel_def`` of its first output.

    As MONAI Label 0.8.5 reads them (``monailabel.tasks.infer.bundle``): names lower-cased, ``background`` left out.
    """
    outputs = _metadata(bundle).get("network_data_format", {}).get("outputs", {})
    if not outputs:
        raise InputError(bundle / "configs" / "metadata.json", "no network_data_format.outputs")
    channel_def = next(iter(outputs.values())).get("channel_def", {})
    return {str(v).lower(): int(k) for k, v in channel_def.items() if str(v).lower() != "background"}


def bundle_dimension(bundle: Path) -> int:
    """The dimension MONAI Label reports for a bundle: ``len(spatial_shape)`` of its first input (3 if absent)."""
    inputs = _metadata(bundle).get("network_data_format", {}).get("inputs", {})
    shape = next(iter(inputs.values())).get("spatial_shape") if inputs else None
    return len(shape) if shape else 3


def sample_app_dir() -> Path:
    """The ``monaibundle`` sample app installed with the ``monailabel`` wheel (``<prefix>/monailabel/sample-apps``)."""
    from monailabel.main import Main

    return Path(Main()._get_installed_dir(None, "sample-apps")) / "monaibundle"


def prepare_app(app: Path) -> bool:
    """Copy the ``monaibundle`` sample app to ``app`` unless it is there; returns whether it was copied."""
    if (app / "main.py").is_file():
        return False
    if app.exists() and any(app.iterdir()):
        raise InputError(app, "exists and is not a MONAI Label app (no main.py): choose another --app folder")
    source = sample_app_dir()
    if not (source / "main.py").is_file():
        raise InputError(source, "the monaibundle sample app is missing from the monailabel installation")
    shutil.copytree(source, app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"), dirs_exist_ok=True)
    (app / "model").mkdir(exist_ok=True)
    return True


def _copy_file(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dest, overwrite=True) as tmp:
        shutil.copyfile(source, tmp)


def monai_label_overlays(bundle: Path) -> Dict[str, Dict[str, Any]]:
    """The bundle's MONAI Label-specific settings, ``configs/monai_label.json`` (none when absent).

    ``{"inference.json": {...}, "train.json": {...}}``: per config file, the keys to set in the deployed copy, with
    MONAI's multi-config syntax (``"a#b"`` paths, ``"+key"`` to extend a list or merge a dict). The 2D bundles use it
    for what MONAI Label 0.8.5 expects of a 2D prediction: the array in MONAI's (W, H) order without channel (its
    ``Restored`` compares the prediction with the image's (W, H) ``spatial_shape`` and its writer transposes), uint8
    for the PNG writer, and label maps with values 0/1 (what MONAI Label saves) read by training.
    """
    path = bundle / "configs" / "monai_label.json"
    if not path.is_file():
        return {}
    try:
        overlays = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    unknown = sorted(set(overlays) - {"inference.json", "train.json"}) if isinstance(overlays, dict) else ["?"]
    if unknown:
        raise InputError(path, f"expected an object with the keys inference.json / train.json, got {unknown}")
    return overlays


def _merged(config: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """``config`` with ``changes`` applied the way ``python -m monai.bundle run`` merges several config files."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import merge_kv

    parser = ConfigParser(config)
    for key, value in changes.items():
        merge_kv(parser, key, value)
    return parser.get()


def deploy_bundle(
    bundle: Path, app: Path, weights: Optional[Path] = None, replace_weights: bool = False
) -> Dict[str, Any]:
    """Copy ``bundle`` into ``<app>/model/<bundle name>/`` as described in the module docstring.

    Returns:
        ``{"name", "path", "weights"}``: the model name, the deployed folder, and what happened to ``model.pt``
        (``"copied from <path>"``, ``"kept (fine-tuned)"`` or ``"none"``).
    """
    bundle = Path(bundle).resolve()
    for needed in ("configs/metadata.json", "configs/inference.json", "configs/train.json"):
        if not (bundle / needed).is_file():
            raise InputError(bundle / needed, "missing: MONAI Label needs metadata.json, inference.json and train.json")
    dest = Path(app) / "model" / bundle.name
    (dest / "configs").mkdir(parents=True, exist_ok=True)
    for config in sorted((bundle / "configs").iterdir()):
        if config.is_file():
            _copy_file(config, dest / "configs" / config.name)
    overlays = monai_label_overlays(bundle)
    train = json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8"))
    train.update(LABEL_TRAIN_SETTINGS)
    # by name (the bundles' handlers are switched off by listing their names in disabled_handlers), not by position:
    # MONAI Label inserts a CheckpointLoader into the handler list when it fine-tunes
    train["disabled_handlers"] = sorted({*train.get("disabled_handlers", []), "epoch_checkpoint"})
    configs = {"train.json": train}
    if "inference.json" in overlays:
        configs["inference.json"] = json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))
    for name, config in configs.items():
        config = _merged(config, overlays.get(name, {}))
        with atomic_write(dest / "configs" / name, overwrite=True) as tmp:
            tmp.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    if (bundle / "docs").is_dir():
        shutil.copytree(bundle / "docs", dest / "docs", dirs_exist_ok=True)
    if (bundle / "LICENSE").is_file():
        _copy_file(bundle / "LICENSE", dest / "LICENSE")

    source = Path(weights) if weights else bundle / "models" / "model.pt"
    target = dest / "models" / "model.pt"
    if target.is_file() and not replace_weights:
        status = "kept (fine-tuned by MONAI Label or deployed earlier; --replace-weights deploys the given ones)"
    elif weights and not source.is_file():
        raise InputError(source, "weights file does not exist")
    elif source.is_file():
        _copy_file(source, target)
        status = f"copied from {source}"
    else:
        status = "none"
    return {"name": bundle.name, "path": dest, "weights": status}


def check_weights(deployed: Path) -> str:
    """Load ``<deployed>/models/model.pt`` strictly into the inference network of the deployed bundle.

    A checkpoint that records its trained settings (input size, intensity window, classes, network definition) is
    also compared with the deployed ``inference.json`` (:func:`xattnres_monai.bundle.check_settings`).

    The network is the bundle's ``network_def``; the Synapse bundle builds it with
    :func:`xattnres_monai.networks.utils.strict_network`, so MONAI Label's own non-strict load is refused too.

    Raises:
        InputError: the file is missing, not a ``weights_only`` checkpoint, or does not match the network.
    """
    import torch
    from monai.bundle import ConfigParser

    path = deployed / "models" / "model.pt"
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip / weights_only errors: not a usable checkpoint
        first = (str(err).strip().splitlines() or [""])[0]
        problem = f"not a readable weights-only checkpoint ({type(err).__name__}: {first[:300]})"
        raise InputError(path, problem) from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise InputError(path, f"expected a state dict, found {type(state).__name__}")
    parser = ConfigParser()
    parser.read_config(str(deployed / "configs" / "inference.json"))
    parser["bundle_root"] = str(deployed)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if isinstance(checkpoint, dict) and "settings" in checkpoint and "trained_settings" in parser.get("", {}):
        from xattnres_monai.bundle.settings import check_settings

        parser["network"] = network  # the settings describe the network already built (no second copy)
        check_settings(str(path), checkpoint["settings"], parser.get_parsed_content("trained_settings"))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(path, " ".join(str(err).split())[:600]) from None
    return str(path)


# ------------------------------------------------------------------------------------------------ environment


def check_environment() -> Dict[str, str]:
    """Check that this Python is a working MONAI Label environment; returns the versions found.

    Raises:
        InputError: what is missing or has the wrong version, and how to build the environment.
    """
    from importlib import metadata

    hint = "run this with the MONAI Label environment (make label-env; .venv-label/bin/python -m ...)"
    found: Dict[str, str] = {}
    for name, expected in EXPECTED_VERSIONS.items():
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise InputError(sys.executable, f"{name} is not installed: {hint}") from None
        if found[name] != expected:
            raise InputError(sys.executable, f"{name} {found[name]} installed, {expected} expected: {hint}")
    import numpy
    import torch
    import torchvision
    from torchvision.ops import nms

    found.update(numpy=numpy.__version__, torch=torch.__version__, torchvision=torchvision.__version__)
    if int(numpy.__version__.split(".")[0]) >= 2:
        raise InputError(sys.executable, f"numpy {numpy.__version__}: MONAI Label 0.8.5 needs numpy<2 ({hint})")
    nms(torch.zeros(1, 4), torch.ones(1), 0.5)  # torchvision's compiled ops load against this torch build
    importlib.import_module("monailabel.tasks.infer.bundle")  # imports torchvision.utils at start-up
    importlib.import_module("monailabel.tasks.train.bundle")
    importlib.import_module("monailabel.app")
    return found


# --------------------------------------------------------------------------------------------------- server


def server_command(
    app: Path, studies: Path, names: Sequence[str], host: str, port: int, conf: Sequence[Sequence[str]] = ()
) -> List[str]:
    """The ``monailabel.main start_server`` command line (run with this Python)."""
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--conf", "models", ",".join(names), "--conf", "zoo_source", "github", "--conf", "sam2", "false"]
    for key, value in conf:
        cmd += ["--conf", key, value]
    return cmd + ["--host", host, "--port", str(port)]


def server_env(app: Path) -> Dict[str, str]:
    """The environment of the server: ``PYTHONPATH`` set (MONAI Label's train task reads it), sessions in the app."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(app), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MONAI_LABEL_SESSION_PATH", str(app / "sessions"))
    return env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.tools.label_server",
        description="Prepare MONAI Label's monaibundle app with the project's bundles (offline) and start the server.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "prepare the app and start the server"), ("prepare", "prepare the app only")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--studies", type=Path, required=name == "start",
                       help="folder of the studies to annotate (NIfTI files; labels are saved under labels/)")
        p.add_argument("--bundle", type=Path, action="append",
                       help=f"bundle folder to serve (repeatable; default {DEFAULT_BUNDLE})")
        p.add_argument("--app", type=Path, default=Path("label_app"), help="app folder (default: label_app)")
        p.add_argument("--weights", type=Path, help="model.pt to deploy (one bundle only; default <bundle>/models)")
        p.add_argument("--replace-weights", action="store_true", help="deploy the weights even if the app has some")
        p.add_argument("--allow-untrained", action="store_true",
                       help="start without model.pt (training only; inference appears after a restart)")
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                       help="extra app setting passed to MONAI Label")
    sub.add_parser("check-env", help="check that this Python is a working MONAI Label environment")
    labels = sub.add_parser("labels", help="print the label names of bundles")
    labels.add_argument("--bundle", type=Path, action="append")
    return parser  # fmt: skip


def _print_labels(bundle: Path) -> None:
    labels = bundle_labels(bundle)
    print(f"{bundle.name} ({bundle_dimension(bundle)}D in MONAI Label's info), labels:")
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        print(f"  {value}: {name}")


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    bundles = [Path(b) for b in (getattr(args, "bundle", None) or [DEFAULT_BUNDLE])]
    if args.command == "labels":
        for bundle in bundles:
            _print_labels(bundle)
        return 0
    versions = check_environment()
    if args.command == "check-env":
        print("MONAI Label environment OK: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        return 0
    if args.weights and len(bundles) != 1:
        raise InputError(args.weights, "--weights needs exactly one --bundle")
    if args.studies is not None and not args.studies.is_dir():
        raise InputError(args.studies, "studies folder does not exist")
    names = [b.resolve().name for b in bundles]
    if len(set(names)) != len(names):
        raise InputError(bundles[0], "two bundles with the same folder name")
    app = args.app.resolve()
    if prepare_app(app):
        print(f"copied the monaibundle app of monailabel {versions['monailabel']} to {app}")
    for bundle in bundles:
        deployed = deploy_bundle(bundle, app, args.weights, args.replace_weights)
        print(f"{deployed['name']}: deployed to {deployed['path']}; model.pt {deployed['weights']}")
        try:
            print(f"{deployed['name']}: {check_weights(deployed['path'])} loads strictly into the inference network")
        except InputError as err:
            if err.problem != "missing":
                raise
            if not args.allow_untrained:
                raise InputError(err.path, "missing: train the bundle first (its README), pass --weights <model.pt>, "
                                 "or --allow-untrained to serve it for training only") from None  # fmt: skip
            print(f"{deployed['name']}: no model.pt: served for training only (--allow-untrained)")
        _print_labels(bundle.resolve())
    cmd = server_command(app, args.studies.resolve() if args.studies else Path("<studies>"), names, args.host,
                         args.port, args.conf)  # fmt: skip
    print("server command: " + " ".join(cmd), flush=True)
    if args.command == "prepare":
        return 0
    os.execve(sys.executable, cmd, server_env(app))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
