"""The embedded-default demo: the Synapse bundle end to end on generated abdominal-CT phantoms.

``make demo`` (or ``python -m xattnres_monai.demo``) runs, with the bundle's own commands:

1. ``python -m xattnres_monai.data.phantoms``: synthetic CT phantoms in the raw BTCV layout (if absent);
2. ``python -m xattnres_monai.data.synapse``: the datalist (label remap, seeded split, validation subset);
3. ``python -m monai.bundle run`` with ``configs/train.json``: a short training of U-Net + XAttnRes;
4. ``configs/evaluate.json``: Dice / HD95 / IoU per case and organ on the held-out test phantoms;
5. ``configs/inference.json``: NIfTI masks for a new phantom scan, plus a PNG overlay of one slice.

Demo-only overrides (a real run uses the bundle defaults): phantoms of 96 x 96 x 48 voxels, slices
at 96 x 96 instead of 224 x 224, and a learning rate of 2e-3 so a few minutes of CPU suffice.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synapse_ct_segmentation"
DEMO_OVERRIDES = ["--roi_size", "[96,96]", "--learning_rate", "0.002", "--num_workers", "0"]


def _run(args: List[str]) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True)


def _bundle(configs: Sequence[str], bundle_root: Path, extra: Sequence[str]) -> None:
    config_file = "[" + ",".join(f"'{BUNDLE / 'configs' / c}'" for c in configs) + "]"
    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root)]
         + DEMO_OVERRIDES + list(extra))


def save_overlay(scan: Path, mask: Path, png: Path) -> None:
    """An RGB PNG of the axial slice with the most foreground, organs coloured over the CT window."""
    from skimage.io import imsave

    from xattnres_monai.data.inputs import read_volume

    ct = np.asarray(read_volume(scan).data, dtype=np.float32)
    labels = np.asarray(read_volume(mask).data).astype(np.int64)
    z = int(np.argmax((labels > 0).sum(axis=(0, 1))))
    grey = np.clip((ct[:, :, z] + 125.0) / 400.0, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    palette = np.array(
        [[0, 0, 0], [1, 0.5, 0], [0, 0.8, 0], [0, 0.6, 1], [1, 1, 0], [1, 0, 1], [0.8, 0.2, 0.2], [0, 1, 1], [1, 0, 0]]
    )
    fg = labels[:, :, z] > 0
    rgb[fg] = 0.5 * rgb[fg] + 0.5 * palette[labels[:, :, z][fg] % len(palette)]
    png.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(png), (np.rot90(rgb) * 255).astype(np.uint8), check_contrast=False)


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output", help="working folder (data, models, reports, masks)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cases", type=int, default=12, help="phantom cases for train/validation/test")
    parser.add_argument("--fresh", action="store_true", help="delete previous demo models and outputs first")
    args = parser.parse_args(argv)
    start = time.time()
    out = Path(args.output).resolve()
    raw, new_scans, bundle_root = out / "data" / "raw", out / "data" / "new_scans", out / "synapse_bundle"
    datalist = out / "data" / "datalist.json"
    if args.fresh:
        for folder in (bundle_root, out / "masks"):
            shutil.rmtree(folder, ignore_errors=True)
    py = sys.executable
    if not raw.exists():
        _run([py, "-m", "xattnres_monai.data.phantoms", "--output", str(raw), "--cases", str(args.cases), "--seed", "0"])
    if not new_scans.exists():  # one more phantom, unseen in training, as "a new scan"
        tmp = out / "data" / "new_raw"
        _run([py, "-m", "xattnres_monai.data.phantoms", "--output", str(tmp), "--cases", "1", "--seed", "99",
              "--first-case", "100"])
        new_scans.mkdir(parents=True)
        for image in tmp.glob("img*.nii.gz"):
            shutil.move(str(image), new_scans / image.name)
        shutil.rmtree(tmp)
    if not datalist.exists():
        _run([py, "-m", "xattnres_monai.data.synapse", "--input", str(raw), "--output", str(datalist)])

    val_interval = max(1, args.epochs // 3)
    _bundle(["train.json"], bundle_root,
            ["--datalist", str(datalist), "--max_epochs", str(args.epochs), "--val_interval", str(val_interval)])
    _bundle(["train.json", "evaluate.json"], bundle_root, ["--datalist", str(datalist), "--overwrite", "true"])
    _bundle(["inference.json"], bundle_root,
            ["--dataset_dir", str(new_scans), "--output_dir", str(out / "masks"), "--overwrite", "true"])

    scan = sorted(new_scans.glob("*.nii.gz"))[0]
    mask = out / "masks" / (scan.name[: -len(".nii.gz")] + "_seg.nii.gz")
    png = out / "masks" / "overlay.png"
    save_overlay(scan, mask, png)
    with open(bundle_root / "eval" / "summary.csv") as f:
        summary = {row["convention"]: row for row in csv.DictReader(f)}
    dice = float(summary["literature"]["DSC"])
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min")
    print(f"  mean Dice over the 8 organs on the test phantoms: {dice:.2f} % (literature convention)")
    print(f"  evaluation reports: {bundle_root / 'eval'}")
    print(f"  NIfTI masks:        {out / 'masks'}")
    print(f"  PNG overlay:        {png}")
    return dice


if __name__ == "__main__":
    main()
