"""Post-processing of a CT label map: our per-class component labelling against MONAI's transforms, side by side.

``xattnres_monai.transforms.postprocess.PostProcessd`` labels the components of each class once, inside the class's
bounding box (``scipy.ndimage``), and lets the largest-component and the small-component steps decide on that one
labelling. MONAI's ``KeepLargestConnectedComponent(independent=True)`` and ``RemoveSmallObjects(by_measure=True)``
label each class over the whole volume, per step. This script runs both on the same label maps, checks that the
results are equal voxel for voxel, and prints the times and their ratio:

    organs      a label map of the 9 Synapse classes on a 512 x 512 x 100 CT grid (0.8 x 0.8 x 2.5 mm): the organ
                shapes of the phantom generator plus planted blobs of every class (what a trained network's
                mistakes look like)
    noisy       the same grid filled with random class ids in 8 x 8 x 4 patches (an untrained network: every class
                everywhere, about 10,000 components, every bounding box the whole volume)
    uniform     one class everywhere (what the untrained network of benchmarks/clinical_inference.py predicts)

Usage::

    python benchmarks/postprocessing.py [--size 512 512 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor

SPACING = (0.8, 0.8, 2.5)


def organ_map(size: Sequence[int], seed: int = 0) -> np.ndarray:
    """Phantom organs plus 40 small blobs of random classes."""
    from xattnres_monai.data.synapse import remap_btcv_label
    from xattnres_monai.testing.phantoms import generate_phantom

    rng = np.random.default_rng(seed)
    _, raw = generate_phantom(size, rng)
    label = np.asarray(remap_btcv_label(raw), np.int64)  # the 13 BTCV organs -> the 8 Synapse ones
    for _ in range(40):
        c = [int(rng.integers(0, s - 6)) for s in size]
        label[c[0] : c[0] + 5, c[1] : c[1] + 5, c[2] : c[2] + 2] = int(rng.integers(1, 9))
    return label


def noisy_map(size: Sequence[int], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 9, size=[-(-s // b) for s, b in zip(size, (8, 8, 4))])
    full = coarse.repeat(8, 0).repeat(8, 1).repeat(4, 2)
    return full[: size[0], : size[1], : size[2]].astype(np.int64)


def as_label(array: np.ndarray) -> MetaTensor:
    affine = np.diag([*SPACING, 1.0])
    return MetaTensor(torch.as_tensor(array[None].astype(np.float32)), affine=torch.as_tensor(affine))


def monai_reference(label: MetaTensor, min_ml: float) -> torch.Tensor:
    """MONAI's transforms: per class over the whole volume (the implementation ours replaces)."""
    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    classes = [int(c) for c in torch.unique(label).tolist() if c != 0]
    result = KeepLargestConnectedComponent(applied_labels=classes, is_onehot=False, independent=True,
                                           connectivity=3)(label.clone())  # fmt: skip
    plain = result.as_tensor().clone()
    for cls in [int(c) for c in torch.unique(plain).tolist() if c != 0]:
        mask = plain == cls
        remove = RemoveSmallObjects(min_size=min_ml * 1000.0, connectivity=3, by_measure=True, pixdim=SPACING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kept = torch.as_tensor(np.asarray(remove(mask.numpy()))).bool()
        plain[mask & ~kept] = 0
    return plain


def ours(label: MetaTensor, min_ml: float) -> torch.Tensor:
    from xattnres_monai.transforms.postprocess import PostProcessd

    post = PostProcessd("pred", largest_component="all", min_size=min_ml, unit="mL")
    return post({"pred": label})["pred"].as_tensor()


def best_of(fn: Callable[[], torch.Tensor], repeat: int) -> Tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-ml", type=float, default=0.5, help="min_size in mL (default 0.5)")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: python benchmarks/postprocessing.py {' '.join(argv or [])}".rstrip())
    print(f"machine: {os.cpu_count()} core(s), torch {torch.__version__}, load average {load}")
    print(f"label map {' x '.join(map(str, args.size))}, largest component of every class, then components under "
          f"{args.min_ml:g} mL removed; best of {args.repeat}")  # fmt: skip
    rows: Dict[str, Tuple[float, float]] = {}
    uniform = lambda size: np.full(size, 5, np.int64)  # noqa: E731
    for name, make in (("organs", organ_map), ("noisy", noisy_map), ("uniform", uniform)):
        label = as_label(make(args.size))
        t_monai, ref = best_of(lambda: monai_reference(label, args.min_ml), args.repeat)
        t_ours, got = best_of(lambda: ours(label, args.min_ml), args.repeat)
        if not torch.equal(ref, got):
            print(f"  {name}: results DIFFER in {int((ref != got).sum())} voxel(s)")
            return 1
        rows[name] = (t_monai, t_ours)
    print(f"\n  {'label map':<10} {'MONAI s':>9} {'ours s':>9} {'speed-up':>9}   (results equal voxel for voxel)")
    for name, (a, b) in rows.items():
        print(f"  {name:<10} {a:>9.2f} {b:>9.2f} {a / b:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
