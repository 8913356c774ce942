"""What the clinical inference options cost, and cohort throughput, measured side by side in one run.

Part 1, one synthetic CT of 512 x 512 x 100 voxels (a phantom of ``xattnres_monai.testing.phantoms``), written as a
NIfTI file and as a DICOM series of 100 slice files. The Synapse bundle's ``inference.json`` is run in this process
(``monai.bundle.ConfigWorkflow``, as ``python -m monai.bundle run`` does) once per configuration, each on its own
output folder; the wall time of the workflow's ``run`` (scan loaded, network, post-processing, writers, cohort table;
the inputs' header checks before it) is compared with plain inference, and split into loading, network and "after
the network" (inversion to the input grid, post-processing, writers), timed from the evaluator's events:

    plain                    no option (``--organ_report false``), NIfTI input          (reference)
    + TTA 2 flips            ``--tta_flip_axes "[0]"``
    + TTA 4 flips            ``--tta_flip_axes "[0,1]"``
    + post-proc. + report    ``--largest_component all --min_size 0.5`` + the organ report (target <= +10 %)
    plain, DICOM             the same scan as a DICOM series                            (reference of the next)
    + DICOM-SEG              ``--save_dicom_seg true``, DICOM input
    plain, repeated          the first run again: the reference of the NIfTI rows is the mean of both plain runs,
                             and their difference shows how much a shared machine drifts during the benchmark

The network is an UNTRAINED network of the bundle's default configuration (``XAttnResUNet``, 224 x 224 slices,
9 classes) saved as ``models/model.pt``: timing does not depend on the weights (the number of slices, the TTA passes
and the volume sizes set the cost), only the masks would, and post-processing times depend a little on how many
components the masks hold (an untrained network gives noisy masks: more components, a pessimistic post-processing
time). Before timing, one untimed run with every option on a small DICOM series imports and warms everything.
The post-processing target is checked on what the option adds after the network (its "after" time minus plain
inference's, over plain inference's wall time): the network's own time varies from run to run on a shared machine by
more than 10 %, the end-to-end ratio is printed too.

Part 2, cohort throughput over N scans (default 6 phantoms of 512 x 512 x 100, a CT of part 1's size: the share of
reading and writing in a scan, hence what parallel loading can hide, depends on the scan's size), each configuration
a real ``python -m monai.bundle run`` command in a fresh process:

    serial                   ``--dataloader#num_workers 0``, one process (torch threads: all cores)
    data loader workers      ``--dataloader#num_workers 2``, one process (torch threads: all cores)
    2 worker processes       ``torchrun --standalone --nproc_per_node 2`` (torch threads per process: cores / 2, as
                             torchrun sets them by default)
    serial, 1 thread         the serial loop with ``OMP_NUM_THREADS=1``: with the row above, tells the gain of
                             processes from that of fewer threads (a loaded machine punishes multi-threaded torch)

scans per minute over the segmentation phase (from the first rank's "scan(s) to segment" log line to the cohort
table's line; process start and imports excluded, printed apart), as ratios to serial. Target: cohort throughput
with workers >= 1.3x the serial loop, checked on the worker processes (the scans sharded over processes); the data
loader workers' row is printed beside it. The "bound" line is the most any split of the same work over the cores
can give: cores x the one-thread rate over the serial rate (the work of a scan done at one thread per core, the
most efficient way to run it, with no idle core); when the serial loop already keeps the cores busy (a network
running on every core), overlapping reading with computing in one process has no idle core to use.

Usage::

    python benchmarks/clinical_inference.py            # full
    python benchmarks/clinical_inference.py --quick    # smoke run: small volumes (128 x 128 x 8; 4 x 96 x 96 x 4)
    python benchmarks/clinical_inference.py --size 512 512 40 --cohort 8 --cohort-size 256 256 24 --workdir /tmp/b

Cost: the network dominates (XAttnResUNet at 224 x 224 on CPU: about 0.2-0.6 s per slice on 2 cores, depending on
their load), and part 1 runs 11 network passes over the 100 slices (TTA: 2 and 4 passes), part 2 4 x 600 slices:
about 20 min on 2 idle cores, 40 min on 2 loaded ones; ``--size`` / ``--cohort-size`` with fewer slices shorten
part 1 / part 2 proportionally.

(with the package installed, e.g. ``pip install -e .``; nothing is imported from ``tests/``)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INFERENCE_JSON = REPO / "bundles" / "synapse_ct_segmentation" / "configs" / "inference.json"
SPACING = (0.8, 0.8, 2.5)
POST_TARGET = 0.10  # post-processing + organ report: at most +10 % of plain inference
WORKERS_TARGET = 1.3  # cohort throughput with workers (processes): at least 1.3x the serial loop

#: part 1: (row label, input kind, config overrides)
OPTION_ROWS: List[Tuple[str, str, Dict[str, object]]] = [
    ("plain inference", "nifti", {}),
    ("+ TTA 2 flips [0]", "nifti", {"tta_flip_axes": [0]}),
    ("+ TTA 4 flips [0,1]", "nifti", {"tta_flip_axes": [0, 1]}),
    ("+ post-processing + organ report", "nifti",
     {"largest_component": "all", "min_size": 0.5, "min_size_unit": "mL", "organ_report": True}),
    ("plain inference, DICOM series", "dicom", {}),
    ("+ DICOM-SEG", "dicom", {"save_dicom_seg": True}),
    ("plain inference, repeated", "nifti", {}),
]  # fmt: skip
#: every row starts from "no option": the bundle's default organ report is off in plain inference
PLAIN = {"organ_report": False}


# ------------------------------------------------------------------------------------------------------ inputs


def write_model(bundle_root: Path) -> Path:
    """``models/model.pt``: an untrained network of the bundle's default configuration."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(INFERENCE_JSON))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
    path = bundle_root / "models" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_ct(folder: Path, size: Sequence[int], seed: int, dicom: bool) -> Path:
    """A phantom CT of ``size`` voxels as ``folder/ct<seed>.nii.gz`` or the DICOM series ``folder/ct<seed>/``."""
    import nibabel as nib

    from xattnres_monai.testing.dicom import write_ct_series
    from xattnres_monai.testing.phantoms import generate_phantom, phantom_affine

    hu, _ = generate_phantom(size, np.random.default_rng([seed, 1]))
    folder.mkdir(parents=True, exist_ok=True)
    if dicom:
        write_ct_series(folder / f"ct{seed}", hu.astype(np.float64), spacing=SPACING)
        return folder / f"ct{seed}"
    path = folder / f"ct{seed}.nii.gz"
    nib.save(nib.Nifti1Image(hu, phantom_affine(size, SPACING)), str(path))
    return path


# ------------------------------------------------------------------------------------------------------ part 1


class StageTimer:
    """Per scan: seconds loading (data loader: read + preprocessing), in the network (the inferer, every TTA pass)
    and after it (inversion to the input grid, post-processing, writers, the completion record)."""

    def __init__(self) -> None:
        self.seconds = {"data": 0.0, "network": 0.0, "after": 0.0}
        self._mark = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._stop, "data")
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._stop, "network")
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop, "after")  # attached last: after every handler

    def _start(self, engine) -> None:
        self._mark = time.perf_counter()

    def _stop(self, engine, stage: str) -> None:
        self.seconds[stage] += time.perf_counter() - self._mark


def run_workflow(bundle_root: Path, scans: Path, out: Path, overrides: Dict[str, object]) -> Dict[str, float]:
    """Run the bundle's inference config in this process (inputs checked first, untimed).

    Returns the wall time of the workflow's ``run`` (``"wall"``) and its stages (:class:`StageTimer`)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(INFERENCE_JSON), workflow_type="infer", bundle_root=str(bundle_root),
                              dataset_dir=str(scans), output_dir=str(out), **{**PLAIN, **overrides})  # fmt: skip
    workflow.initialize()
    timer = StageTimer()
    timer.attach(workflow.parser.get_parsed_content("evaluator"))  # the instance that "run" runs
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the bundle's end-of-run report ("inference: 1 mask(s) ...")
        workflow.run()
    elapsed = time.perf_counter() - start
    workflow.finalize()
    failures = workflow.parser.get_parsed_content("inputs").failures
    if failures or not list(out.glob("*_seg.nii.gz")):
        raise RuntimeError(f"inference into {out} failed: {failures}")
    return {"wall": elapsed, **timer.seconds}


Times = Dict[str, float]


def option_costs(work: Path, bundle_root: Path, size: Sequence[int]) -> List[Tuple[str, Times, Times]]:
    """Part 1: ``(row, its times, the times of its input's plain inference)`` per configuration; the plain times
    are the mean of the plain runs of that input."""
    inputs = {"nifti": work / "ct_nifti", "dicom": work / "ct_dicom"}
    write_ct(inputs["nifti"], size, 0, dicom=False)
    write_ct(inputs["dicom"], size, 0, dicom=True)
    warm = work / "warm_up"
    write_ct(warm, (64, 64, 16), 1, dicom=True)
    every = {"tta_flip_axes": [0], "largest_component": "all", "min_size": 0.5, "organ_report": True,
             "save_dicom_seg": True, "save_probabilities": True}  # fmt: skip
    seconds = run_workflow(bundle_root, warm, work / "out_warm", every)["wall"]
    print(f"  warm-up run (every option, 64 x 64 x 16 DICOM series, untimed): {seconds:.1f} s", flush=True)
    timed = []
    for k, (label, kind, overrides) in enumerate(OPTION_ROWS):
        times = run_workflow(bundle_root, inputs[kind], work / f"out_{k}", overrides)
        timed.append((label, kind, overrides, times))
        print(f"  {label}: {times['wall']:.1f} s (loading {times['data']:.1f} s, network {times['network']:.1f} s, "
              f"after the network {times['after']:.1f} s)", flush=True)  # fmt: skip
    # the NIfTI plain run runs first and last: their mean is the reference, their difference the drift of the machine
    plain = {kind: {stage: float(np.mean([t[stage] for _, k, o, t in timed if k == kind and not o]))
                    for stage in timed[0][3]} for kind in inputs}  # fmt: skip
    return [(label, times, plain[kind]) for label, kind, _, times in timed]


# ------------------------------------------------------------------------------------------------------ part 2

_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - \S+ - INFO - (.*)")


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def segmentation_span(log: str) -> float:
    """Seconds from the first "scan(s) to segment" line (inputs checked) to the cohort table's line."""
    starts, ends = [], []
    for stamp, message in _STAMP.findall(log):
        if re.search(r"cohort: rank \d+ of \d+: \d+ scan\(s\) to segment", message):
            starts.append(_log_time(stamp))
        elif message.startswith("cohort: table of every scan written"):
            ends.append(_log_time(stamp))
    if not starts or not ends:
        raise RuntimeError("no cohort start / end lines in the log:\n" + log[-3000:])
    return max(ends) - min(starts)


def cohort_run(bundle_root: Path, scans: Path, out: Path, workers: int, processes: int,
               threads: int) -> Tuple[float, float, str]:  # fmt: skip
    """One ``monai.bundle run`` (``torchrun`` for ``processes`` > 1, ``threads`` torch threads per process);
    returns (span, wall time, command)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    launcher = launcher if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "monai.bundle", "run", "--config_file", str(INFERENCE_JSON),
               "--bundle_root", str(bundle_root), "--dataset_dir", str(scans), "--output_dir", str(out),
               "--organ_report", "false", "--dataloader#num_workers", str(workers)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({result.returncode}):\n{log[-3000:]}")
    written = len(list(out.glob("*_seg.nii.gz")))
    count = len(list(scans.glob("*.nii.gz")))
    if written != count:
        raise RuntimeError(f"{written} of {count} masks written to {out}")
    return segmentation_span(log), wall, shlex.join(command)


def cohort_throughput(
    work: Path, bundle_root: Path, count: int, size: Sequence[int]
) -> List[Tuple[str, float, float, float, int]]:
    """Part 2: ``(configuration, scans per minute, ratio to serial, wall seconds, torch threads per process)``."""
    scans = work / "cohort"
    for seed in range(count):
        write_ct(scans, size, 100 + seed, dicom=False)
    cores = os.cpu_count() or 1
    configurations = [
        ("serial (num_workers 0, 1 process)", 0, 1, cores),
        ("data loader workers (num_workers 2)", 2, 1, cores),
        ("2 worker processes (torchrun)", 0, 2, max(cores // 2, 1)),
        # torchrun's processes have 1 thread each: the serial loop with 1 thread tells processes from threads apart
        ("serial, 1 torch thread", 0, 1, 1),
    ]  # fmt: skip
    rows = []
    serial = None
    for k, (label, workers, processes, threads) in enumerate(configurations):
        span, wall, _ = cohort_run(bundle_root, scans, work / f"cohort_out_{k}", workers, processes, threads)
        per_minute = count / span * 60
        serial = serial or per_minute
        rows.append((label, per_minute, per_minute / serial, wall, threads))
        print(f"  {label}: {per_minute:.2f} scans/min ({span:.1f} s segmenting, {wall:.1f} s with start-up)",
              flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------------ main


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 128 x 128 x 8 CT, 4 cohort scans of 96 x 96 x 4")  # fmt: skip
    parser.add_argument("--size", type=int, nargs=3, default=None, help="part 1 CT size (default 512 512 100)")
    parser.add_argument("--cohort", type=int, default=None, help="part 2 number of scans (default 6)")
    parser.add_argument("--cohort-size", type=int, nargs=3, default=None, help="part 2 scan size (default 512 512 100)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the inputs and outputs here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of part 1 (default: torch's, all cores)")  # fmt: skip
    args = parser.parse_args(argv)
    size = args.size or ([128, 128, 8] if args.quick else [512, 512, 100])
    count = args.cohort or (4 if args.quick else 6)
    cohort_size = args.cohort_size or ([96, 96, 4] if args.quick else [512, 512, 100])

    logging.disable(logging.INFO)  # part 1 runs in this process: the bundle's per-scan lines would bury the table
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/clinical_inference.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPU core(s), torch {torch.__version__} ({torch.get_num_threads()} threads in "
          f"this process), load average {load} before the run (other processes share the cores)")  # fmt: skip
    print("network: UNTRAINED XAttnResUNet of the bundle's default configuration (224 x 224 slices, 9 classes), saved "
          "as models/model.pt: timing does not need trained weights")  # fmt: skip
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clinical_inference_")))
        work.mkdir(parents=True, exist_ok=True)
        bundle_root = work / "bundle"
        write_model(bundle_root)

        print(f"\npart 1: one CT of {' x '.join(map(str, size))} voxels, bundle inference.json in this process")
        options = option_costs(work, bundle_root, size)
        print(f"\npart 2: cohort of {count} scans of {' x '.join(map(str, cohort_size))} voxels, one command each")
        cohort = cohort_throughput(work, bundle_root, count, cohort_size)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nclinical inference options, {' x '.join(map(str, size))} CT (the bundle's run, 1 run each; x plain: "
          "over the mean of the plain runs of that input)")  # fmt: skip
    print(f"  {'configuration':<34} {'seconds':>8} {'x plain':>8} {'loading':>8} {'network':>8} {'after':>8} "
          f"{'added after':>12}")  # fmt: skip
    for label, times, plain in options:
        added = times["after"] - plain["after"]  # what the option adds after the network (0 for TTA, plain rows)
        print(f"  {label:<34} {times['wall']:>8.1f} {times['wall'] / plain['wall']:>7.2f}x {times['data']:>8.1f} "
              f"{times['network']:>8.1f} {times['after']:>8.1f} {added / plain['wall']:>+11.1%}")  # fmt: skip
    post_times, post_plain = next((t, p) for label, t, p in options if label.startswith("+ post-processing"))
    added = (post_times["after"] - post_plain["after"]) / post_plain["wall"]
    end_to_end = post_times["wall"] / post_plain["wall"] - 1
    print(f"  target: post-processing + organ report <= +{POST_TARGET:.0%} of plain inference: {added:+.1%} added "
          f"after the network ({_verdict(added <= POST_TARGET)}); end to end {end_to_end:+.1%} (network time "
          "varies from run to run on a shared machine: see the two plain runs)")  # fmt: skip

    print(f"\ncohort throughput, {count} scans of {' x '.join(map(str, cohort_size))} (segmentation phase; "
          "start-up apart)")  # fmt: skip
    print(f"  {'configuration':<40} {'threads':>7} {'scans/min':>10} {'x serial':>9} {'wall s':>7}")
    for label, per_minute, ratio, wall, threads in cohort:
        print(f"  {label:<40} {threads:>7} {per_minute:>10.2f} {ratio:>8.2f}x {wall:>7.1f}")
    cores = os.cpu_count() or 1
    by_label = {label.split(" (")[0]: (per_minute, ratio) for label, per_minute, ratio, _, _ in cohort}
    loader, processes = by_label["data loader workers"][1], by_label["2 worker processes"][1]
    bound = cores * by_label["serial, 1 torch thread"][0] / by_label["serial"][0]
    print(f"  bound on this machine: {cores} cores x the one-thread rate = {bound:.2f}x serial (the most any split of "
          "this work over the cores can give)")  # fmt: skip
    print(f"  target: cohort throughput with workers >= {WORKERS_TARGET}x serial: 2 worker processes {processes:.2f}x "
          f"({_verdict(processes >= WORKERS_TARGET)}); data loader workers in one process {loader:.2f}x")  # fmt: skip
    print(f"\ntotal benchmark time: {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
