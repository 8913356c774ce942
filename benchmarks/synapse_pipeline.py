"""Synapse bundle pipeline costs, measured side by side in one run on this machine.

1. Training throughput (slices/s) of the bundle's real data pipeline (``train#dataloader`` of
   ``configs/train.json``: cached volumes, on-the-fly slicing, augmentation, collation) against the same
   training steps on one pre-loaded in-memory batch. Target: the pipeline costs under 10 % of the step.
2. Inference seconds per 512 x 512 x 100 CT volume (in-plane resize to 224, slice-wise inference with
   MONAI's ``SliceInferer``, softmax, resize back, argmax) for the plain U-Net and the default
   XAttnRes U-Net. Target: XAttnRes within 1.2x of plain.

Usage::

    python benchmarks/synapse_pipeline.py [--steps 20] [--cases 4]

The training data are generated phantoms (``xattnres_monai.data.phantoms``) at 512 x 512 in-plane.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer

from xattnres_monai.testing.phantoms import write_phantoms
from xattnres_monai.data.synapse import prepare_synapse
from xattnres_monai.networks.nets import XAttnResUNet

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "synapse_ct_segmentation" / "configs"


def training_throughput(datalist: Path, steps: int, workers: int):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"datalist": str(datalist), "num_workers": workers, "bundle_root": str(datalist.parent)})
    loader = parser.get_parsed_content("train#dataloader")
    network = parser.get_parsed_content("network")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(network(batch["image"]), batch["label"]).backward()
        optimizer.step()

    batches = iter(loader)
    fixed = next(batches)
    step(fixed)  # warm-up
    start = time.perf_counter()
    done = 0
    while done < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        step(batch)
        done += 1
    pipeline = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    in_memory = time.perf_counter() - start
    slices = steps * fixed["image"].shape[0]
    return slices / pipeline, slices / in_memory


def inference_seconds(networks: Dict[str, torch.nn.Module], repeats: int) -> Dict[str, List[float]]:
    """Seconds per volume for each network, timed round-robin (one volume each per round)."""
    volume = torch.rand(1, 1, 512, 512, 100)
    inferer = SliceInferer(roi_size=(224, 224), sw_batch_size=16, spatial_dim=2, progress=False)
    times: Dict[str, List[float]] = {name: [] for name in networks}
    with torch.no_grad():
        for _ in range(repeats):
            for name, network in networks.items():
                network.eval()
                start = time.perf_counter()
                small = F.interpolate(volume, size=(224, 224, 100), mode="trilinear", align_corners=False)
                probs = torch.softmax(inferer(small, network), dim=1)
                full = F.interpolate(probs, size=(512, 512, 100), mode="trilinear", align_corners=False)
                full.argmax(dim=1)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_phantoms(tmp / "raw", cases=args.cases, size=(512, 512, 24), spacing=(0.7, 0.7, 3.0), seed=0)
        prepare_synapse(tmp / "raw", tmp / "datalist.json", split="random", num_val=1)
        pipeline, in_memory = training_throughput(tmp / "datalist.json", args.steps, args.workers)
    overhead = 100 * (in_memory / pipeline - 1)
    print("\nTraining (train.json: batch 6, 224 x 224, default U-Net + XAttnRes)")
    print(f"  real data pipeline      {pipeline:8.2f} slices/s")
    print(f"  pre-loaded batch        {in_memory:8.2f} slices/s")
    print(f"  pipeline cost           {overhead:+8.1f} % of the step   (target < 10 %)  {'OK' if overhead < 10 else 'MISSED'}")

    times = inference_seconds(
        {"plain": XAttnResUNet(2, 1, 9, xattnres="none"), "xattnres": XAttnResUNet(2, 1, 9)}, args.repeats
    )
    plain, xattn = statistics.median(times["plain"]), statistics.median(times["xattnres"])
    ratios = [x / p for x, p in zip(times["xattnres"], times["plain"])]
    print("\nInference of one 512 x 512 x 100 CT volume (resize to 224, slice-wise, resize back)")
    print(f"  plain U-Net             {plain:8.2f} s")
    print(f"  U-Net + XAttnRes        {xattn:8.2f} s   ratio {xattn / plain:.2f}x   (target <= 1.2x)"
          f"  {'OK' if xattn / plain <= 1.2 else 'MISSED'}")
    print(f"  per-round ratios (noise): {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
