"""The embedded-default demo: a bundle end to end on generated data, leaving a trained, self-contained bundle.

``make demo`` (``python -m xattnres_monai.demo``): the Synapse CT bundle on generated abdominal-CT phantoms.
``make demo-2d`` (``python -m xattnres_monai.demo --task clinicdb``): the CVC-ClinicDB polyp bundle on generated
endoscopy-like images (``--task colondb`` / ``isic2017``: the other 2D bundles). ``make demo-3d`` (``--task
synapse_3d``): the 3D Synapse bundle (DynUNet + XAttnRes plug-in) on the same CT phantoms. Each runs, with the bundle's own commands:

1. a copy of the bundle (configs, docs, licence) as ``demo_output/<task>_bundle``: the bundle to be trained;
2. generated data into its ``data/`` (``raw/``, ``datalist.json``, and new unseen scans in ``new_scans/``);
3. ``python -m monai.bundle run`` with ``configs/train.json``: training writes ``models/model.pt`` and its settings
   into the bundle's ``configs/`` (:mod:`xattnres_monai.bundle`);
4. ``configs/evaluate.json`` with no overrides: the metric reports in ``eval/``;
5. ``python -m xattnres_monai predict`` on the new scans: masks, and a figure per scan.

It ends by printing the commands that evaluate, predict with, export and serve the trained bundle.

Demo-only training overrides (a real run uses the bundle defaults): small phantoms, slices at 96 x 96 (CT) or
64 x 64 (2D), a learning rate of 2e-3 and no data loader workers, so a few minutes of CPU suffice.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import nibabel as nib
import numpy as np

from xattnres_monai.data.images import prepare_images
from xattnres_monai.testing.dicom import write_ct_series

REPOSITORY = Path(__file__).resolve().parents[1]
TASKS: Dict[str, Dict[str, object]] = {
    "synapse": {
        "bundle": "synapse_ct_segmentation",
        "overrides": ["--roi_size", "[96,96]", "--learning_rate", "0.002", "--num_workers", "0"],
        "epochs": 12,  # 35 s each on 2 cores: the whole demo within 10 minutes from a fresh clone
        "ct": True,
    },
    # the 3D bundle (DynUNet + XAttnRes plug-in) on the same phantoms, CPU-sized: filters 8 .. 64, 4 patches of 32^3
    # per volume and step. Measured: 48^3 patches, 2 volumes x 2 patches and lr 3e-3 reach 43 % Dice in 40 epochs
    # (9.5 min); these settings make twice the steps at a third of the cost each and reach 91 % at epoch 40
    "synapse_3d": {
        "bundle": "synapse_ct_3d_segmentation",
        "overrides": ["--roi_size", "[32,32,32]", "--network_def#filters", "[8,16,32,64,64]", "--learning_rate",
                      "0.01", "--num_workers", "0", "--batch_size", "1", "--num_samples", "4"],  # fmt: skip
        "epochs": 45,
        "ct": True,
    },
}
_IMAGE_OVERRIDES = ["--roi_size", "[64,64]", "--learning_rate", "0.002", "--num_workers", "0", "--batch_size", "8"]
for _dataset, _bundle in (("clinicdb", "clinicdb_polyp_segmentation"), ("colondb", "colondb_polyp_segmentation"),
                          ("isic2017", "isic2017_skin_segmentation")):  # fmt: skip
    TASKS[_dataset] = {"bundle": _bundle, "overrides": _IMAGE_OVERRIDES, "epochs": 15, "ct": False}
# what the demo's prediction shows: figures; for CT also test-time mirroring, the organ report (on by default) and
# DICOM-SEG for the DICOM copy of the new scan
PREDICT_OPTIONS = {
    False: ["--set", "save_figures=true"],
    True: ["--set", "save_figures=true", "--set", "tta_flip_axes=[0,1]", "--set", "save_dicom_seg=true"],
}
# MONAI warns, at every `monai.bundle run`, that bundle configs run code; the demo runs only this repository's own
# configs, so the note is shown once, by the demo, not at each of its steps
_CONFIG_NOTICE = "parsing config_file"


def _run(args: List[str], cwd: Optional[Path] = None) -> None:
    shown = [a if not a.startswith(str(REPOSITORY) + os.sep) else os.path.relpath(a, REPOSITORY) for a in args]
    print("$ " + " ".join(shlex.quote(a) for a in shown), flush=True)
    env = dict(os.environ, PYTHONWARNINGS=f"ignore:{_CONFIG_NOTICE}")
    subprocess.run(args, check=True, env=env, cwd=cwd)


def make_bundle(task: str, bundle_root: Path, fresh: bool) -> None:
    """Copy the repository's bundle (configs, docs, licence) to ``bundle_root`` unless it is there already."""
    source = REPOSITORY / "bundles" / str(TASKS[task]["bundle"])
    if fresh:
        for sub in ("configs", "docs", "models", "eval", "LICENSE"):
            target = bundle_root / sub
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    if not (bundle_root / "configs").is_dir():
        shutil.copytree(source / "configs", bundle_root / "configs")
        shutil.copytree(source / "docs", bundle_root / "docs", dirs_exist_ok=True)
        shutil.copy2(source / "LICENSE", bundle_root / "LICENSE")


def make_data(task: str, data: Path, cases: int) -> None:
    """Generated training data (``raw/`` + ``datalist.json``) and new unseen scans (``new_scans/``)."""
    py = sys.executable
    if TASKS[task]["ct"]:
        if not (data / "raw").exists():
            _run([py, "-m", "xattnres_monai.data.phantoms", "--output", str(data / "raw"), "--cases", str(cases),
                  "--seed", "0"])  # fmt: skip
        if not (data / "new_scans").exists():  # one more phantom, unseen in training, as "a new scan"
            tmp = data / "new_raw"
            _run([py, "-m", "xattnres_monai.data.phantoms", "--output", str(tmp), "--cases", "1", "--seed", "99",
                  "--first-case", "100"])  # fmt: skip
            (data / "new_scans").mkdir(parents=True)
            for image in tmp.glob("img*.nii.gz"):
                shutil.move(str(image), data / "new_scans" / image.name)
                # ... and the same scan as a DICOM series, as a scanner exports it (DICOM-SEG output)
                scan = nib.load(str(data / "new_scans" / image.name))
                write_ct_series(data / "new_scans" / f"{image.name[: -len('.nii.gz')]}_dicom",
                                np.asarray(scan.dataobj).astype(np.int16), spacing=scan.header.get_zooms()[:3])
            shutil.rmtree(tmp)
        if not (data / "datalist.json").exists():
            _run([py, "-m", "xattnres_monai.data.synapse", "--input", str(data / "raw"), "--output",
                  str(data / "datalist.json")])  # fmt: skip
        return
    if not (data / "raw").exists():
        _run([py, "-m", "xattnres_monai.data.image_phantoms", task, str(data / "raw"), "--n", str(cases * 4),
              "--size", "96", "112", "--seed", "0"])  # fmt: skip
    if not (data / "new_images").exists():  # the 2D bundles' default inference folder
        tmp = data / "new_raw"
        _run([py, "-m", "xattnres_monai.data.image_phantoms", task, str(tmp), "--n", "2", "--size", "96", "112",
              "--seed", "99"])  # fmt: skip
        (data / "new_images").mkdir(parents=True)
        # the release's images (not its masks), as its own datalist pairs them
        listed = prepare_images(task, tmp, tmp / "datalist.json")  # paths relative to the datalist's folder
        images = sorted({item["image"] for section in listed.values() if isinstance(section, list) for item in section})
        for i, image in enumerate(images):
            source = Path(image) if Path(image).is_absolute() else tmp / image
            shutil.move(str(source), data / "new_images" / f"new_{i}{source.suffix}")
        shutil.rmtree(tmp)
    if not (data / "datalist.json").exists():
        _run([py, "-m", "xattnres_monai.data.images", task, "--input", str(data / "raw"), "--output",
              str(data / "datalist.json")])  # fmt: skip


def _config_list(bundle_root: Path, *names: str) -> str:
    return "[" + ",".join(f"'{bundle_root / 'configs' / n}'" for n in names) + "]"


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    cwd = Path.cwd().resolve()
    path = Path(path).resolve()
    return str(path.relative_to(cwd)) if path == cwd or cwd in path.parents else str(path)


def next_steps(task: str, bundle_root: Path, masks: Path) -> List[str]:
    """The commands (from the repository root) that use the trained bundle."""
    b, m = _shown(bundle_root), _shown(masks)
    ct = bool(TASKS[task]["ct"])
    new = f"{b}/data/" + ("new_scans" if ct else "new_images")
    evaluate = (
        f"python -m monai.bundle run --config_file \"['{b}/configs/train.json','{b}/configs/evaluate.json']\" "
        f"--bundle_root {b} --overwrite true"
    )
    export = (
        f"python -m monai.bundle ckpt_export network_def --filepath {b}/models/model.ts --ckpt_file "
        f"{b}/models/model.pt --key_in_ckpt model --meta_file {b}/configs/metadata.json --config_file "
        f"{b}/configs/inference.json --bundle_root {b}"
    )
    steps = [
        f"evaluate:     {evaluate}",
        f"predict:      python -m xattnres_monai predict -i {new} -o {m} --bundle {b} --overwrite "
        + " ".join(PREDICT_OPTIONS[ct]),
        f"bundle infer: python -m monai.bundle run --config_file {b}/configs/inference.json --bundle_root {b}",
        f"export:       {export}",
        f"tensorboard:  tensorboard --logdir {b}/eval",
        f"routing:      python -m xattnres_monai routing --bundle {b} -i {new} -o {b}/eval/routing_new --maps 2",
    ]
    steps.append(f"MONAI Label:  make label-server LABEL_STUDIES={new} LABEL_ARGS=\"--bundle {b}\"")
    return steps


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="synapse",
                        help="synapse (CT scans, 2D network), synapse_3d (CT scans, 3D DynUNet) or a 2D bundle's data set: "
                        "clinicdb, colondb (polyps), isic2017 (skin)")
    parser.add_argument("--output", default="demo_output", help="working folder (the trained bundle, masks)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: 12 CT, 45 CT 3D, 15 2D; XATTNRES_DEMO_QUICK=1 in the environment: 1 epoch, 4 cases)")
    parser.add_argument("--cases", type=int, default=12, help="phantom cases (CT) / 4 x images (2D)")
    parser.add_argument("--fresh", action="store_true", help="delete previous demo models and outputs first")
    args = parser.parse_args(argv)
    start = time.time()
    task = args.task
    # XATTNRES_DEMO_QUICK=1: 1 epoch on 4 cases, to run the documented commands as written (the "From zero" test)
    quick = os.environ.get("XATTNRES_DEMO_QUICK", "") not in ("", "0")
    epochs = 1 if quick else int(args.epochs or TASKS[task]["epochs"])  # type: ignore[call-overload]
    cases = min(args.cases, 4) if quick else args.cases
    out = Path(args.output).resolve()
    bundle_root = out / f"{task}_bundle"
    masks = out / ("masks" if task == "synapse" else f"{task}_masks")  # (the CT demo's masks kept their name)
    ct = bool(TASKS[task]["ct"])
    print(
        "note: MONAI warns that a bundle config can run any code (its `_target_` and `$` values); this demo runs "
        "only this repository's bundle configs, and that warning is not repeated at each step."
    )
    if args.fresh:
        shutil.rmtree(masks, ignore_errors=True)
    make_bundle(task, bundle_root, args.fresh)
    make_data(task, bundle_root / "data", cases)

    py = sys.executable
    bundle = [py, "-m", "monai.bundle", "run", "--bundle_root", str(bundle_root)]
    val_interval = max(1, epochs // 3)
    _run(bundle + ["--config_file", _config_list(bundle_root, "train.json")] + list(TASKS[task]["overrides"])  # type: ignore[arg-type]
         + ["--max_epochs", str(epochs), "--val_interval", str(val_interval)])  # fmt: skip
    # the trained bundle's own configs now state its settings: evaluation and prediction need no overrides
    _run(bundle + ["--config_file", _config_list(bundle_root, "train.json", "evaluate.json"), "--overwrite", "true"])
    new = bundle_root / "data" / ("new_scans" if ct else "new_images")
    _run([py, "-m", "xattnres_monai", "predict", "-i", str(new), "-o", str(masks), "--bundle", str(bundle_root),
          "--overwrite", *PREDICT_OPTIONS[ct]])  # fmt: skip
    # the learned routing (configs/routing.json): which earlier stage each block reads, on two labelled cases
    _run(bundle + ["--config_file", _config_list(bundle_root, "inference.json", "routing.json"), "--routing_labels",
                   str(bundle_root / "data" / "datalist.json"), "--routing_max_scans", "2", "--routing_maps", "1",
                   "--routing_overwrite", "true"])  # fmt: skip

    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min")
    result = _report(task, bundle_root, masks)
    print(f"\nthe trained bundle is {_shown(bundle_root)}; use it with (commands from this folder):")
    for step in next_steps(task, bundle_root, masks):
        print(f"  {step}")
    return result


def _report(task: str, bundle_root: Path, masks: Path) -> float:
    figures = sorted(str(p) for p in masks.glob("*figure*.png"))
    curves = bundle_root / "eval" / "training_curves.png"
    with open(bundle_root / "eval" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    if TASKS[task]["ct"]:
        summary = {row["convention"]: row for row in rows}
        result = float(summary["literature"]["DSC"])
        print(f"  mean Dice over the 8 organs on the test phantoms: {result:.2f} % (literature convention)")
    else:
        result = 100.0 * float(rows[0]["mean_dice"])
        print(f"  mean Dice on the test images: {result:.2f} %")
    print(f"  evaluation reports: {bundle_root / 'eval'}")
    print(f"  masks:              {masks}")
    if figures:
        print(f"  figures:            {', '.join(figures)}")
    for what, pattern in (("organ reports", "*_organs.csv"), ("DICOM-SEG", "*_seg.dcm"), ("cohort table", "cohort.csv")):
        found = sorted(str(p) for p in masks.glob(pattern))
        if found:
            print(f"  {what + ':':<19} {', '.join(found)}")
    if curves.is_file():
        print(f"  training curves:    {curves}")
    routing = bundle_root / "eval" / "routing"
    for what, pattern in (("routing heatmap:", "routing_heatmap.png"), ("routing entropy:", "routing_entropy.png"),
                          ("attention map:", "maps/*.png"), ("routing report:", "routing_report.csv")):  # fmt: skip
        found = sorted(str(p) for p in routing.glob(pattern))
        if found:
            print(f"  {what:<19} {found[0]}")
    return result


if __name__ == "__main__":
    main()
