"""Our input path (header and DICOM series checks, one decode, voxel checks) against a bare MONAI ``LoadImage``.

For a 512 x 512 x 200 CT volume, as a NIfTI file and as a DICOM series of 200 slice files, prints side by side in one
run the median time and the peak memory of

- ``LoadImage(image_only=True)(path)`` (MONAI alone: ``NibabelReader`` / ``ITKReader``, no checks), and
- what every bundle entry point does per volume: ``LoadVolumed`` (``read_header`` -> ``read_volume`` -> value checks),

as ratios (targets: time <= 1.2x, memory <= 1.3x). Each measurement runs in a fresh process (imports and readers
warmed up by one untimed read first), alternating the two paths, so caches and allocator state are shared fairly.

    python benchmarks/input_path.py [--repeats 5] [--slices 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the child processes run here (the package installed, e.g. pip install -e .)

_CHILD = r"""
import sys, time
path, which = sys.argv[1], sys.argv[2]
from monai.transforms import LoadImage
from xattnres_monai.transforms import LoadVolumed
monai_load = LoadImage(image_only=True)
ours = LoadVolumed("image")
run = (lambda: monai_load(path)) if which == "monai" else (lambda: ours({"image": path})["image"])
run()  # warm up: imports, reader set-up, file cache

def rss(field):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(field)).split()[1]) * 1024

before = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark (VmHWM)
start = time.perf_counter()
volume = run()
elapsed = time.perf_counter() - start
print(elapsed, rss("VmHWM:") - before, tuple(volume.shape))
"""


def make_inputs(folder: Path, slices: int) -> dict:
    sys.path.insert(0, str(REPO))
    import nibabel as nib

    from xattnres_monai.testing.dicom import write_ct_series

    rng = np.random.default_rng(0)
    hu = np.clip(rng.normal(40, 300, size=(512, 512, slices)), -1024, 3000).astype(np.int16)
    nifti = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), str(nifti))
    write_ct_series(folder / "series", hu.astype(np.float32))
    return {"NIfTI (.nii.gz)": nifti, f"DICOM series ({slices} files)": folder / "series"}


def measure(path: Path, which: str) -> tuple:
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path), which], capture_output=True, text=True,
                            cwd=REPO, check=True)  # fmt: skip
    elapsed, peak, shape = result.stdout.strip().splitlines()[-1].split(" ", 2)
    return float(elapsed), int(peak), shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.slices)
        print(f"{'input':<26} {'MONAI LoadImage':>18} {'LoadVolumed (ours)':>20} {'time x':>7} {'memory x':>9}")
        for name, path in inputs.items():
            runs = {"monai": [], "ours": []}
            for _ in range(args.repeats):
                for which in runs:  # alternating
                    runs[which].append(measure(path, which))
            t = {w: statistics.median(r[0] for r in runs[w]) for w in runs}
            m = {w: statistics.median(r[1] for r in runs[w]) for w in runs}
            assert runs["monai"][0][2] == runs["ours"][0][2], (runs["monai"][0][2], runs["ours"][0][2])
            print(f"{name:<26} {t['monai']:>8.3f} s {m['monai'] / 2**20:>5.0f} MiB {t['ours']:>8.3f} s "
                  f"{m['ours'] / 2**20:>5.0f} MiB {t['ours'] / t['monai']:>7.2f} {m['ours'] / m['monai']:>9.2f}")  # fmt: skip
        print("targets: time <= 1.2x, memory <= 1.3x (median of", args.repeats, "fresh processes each)")


if __name__ == "__main__":
    main()
