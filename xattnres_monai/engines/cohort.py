"""Resumable, sharded inference over cohorts of thousands of scans.

The pieces, each usable on its own:

- :func:`shard`: the scans of one rank (``torchrun``: ``torch.distributed`` when initialised, else the ``RANK`` /
  ``WORLD_SIZE`` environment variables; one process: all scans).
- completion records (:func:`write_record`, :func:`read_record`, :func:`record_problem`): a small JSON file per
  scan, ``<output_dir>/.cohort/<mask name>.json``, written atomically **after** every output of the scan, listing
  each output with its size. A scan is finished when its record exists and every output it lists exists with that
  size; anything else (no record, an output missing or cut short) is a partial scan, redone on the next run.
- :class:`CohortInputs`: :class:`~xattnres_monai.data.inputs.InferenceInputs` for a cohort: this rank's scans,
  those with a valid record skipped (without re-reading their headers), partial ones reset (record and stale
  outputs removed) and redone.
- :class:`CohortRecorder`: the evaluator handler that, after each scan's postprocessing (writers included), checks
  its outputs, writes its record and logs one line (scan, status, time, outputs, organ volumes); called at the end
  of the run (the bundle's ``run`` list) it writes this rank's table and, once every rank's table is there, the
  cohort table ``<output_dir>/cohort.csv`` (:func:`merge_cohort_csv`): scan, status, seconds, outputs, per-class
  volumes in mL, reason, finish time.

Example (one process; ``torchrun --nproc_per_node 4`` runs the same on 4 shards)::

    >>> inputs = CohortInputs("out/", dataset_dir="scans/", suffixes=["_organs.csv", "_organs.json"])
    >>> recorder = CohortRecorder(inputs, num_classes=9)
    >>> recorder.attach(evaluator); evaluator.run(); recorder()
    PosixPath('out/cohort.csv')
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from xattnres_monai.data.inputs import MAX_VOXELS, InferenceInputs, output_path_for
from xattnres_monai.metrics.organ_report import sibling_path
from xattnres_monai.utils.files import as_bool, write_csv_atomic, write_json_atomic

__all__ = [
    "COHORT_CSV",
    "RECORD_DIR",
    "CohortInputs",
    "CohortRecorder",
    "distributed_rank",
    "init_cohort_group",
    "leave_cohort_group",
    "merge_cohort_csv",
    "rank_csv_path",
    "read_record",
    "record_path_for",
    "record_problem",
    "shard",
    "write_record",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]
#: folder (inside the output folder) of the completion records and the per-rank tables.
RECORD_DIR = ".cohort"
#: the merged cohort table, in the output folder.
COHORT_CSV = "cohort.csv"
RECORD_VERSION = 1
_FIRST_COLUMNS = ("scan", "status", "seconds", "outputs")
_LAST_COLUMNS = ("reason", "finished")


# ---------------------------------------------------------------------------------------------------------- shards


def distributed_rank() -> Tuple[int, int]:
    """``(rank, world size)``: from ``torch.distributed`` when initialised, else ``RANK`` / ``WORLD_SIZE`` (as
    ``torchrun`` sets them), else ``(0, 1)``."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ValueError(f"RANK / WORLD_SIZE must be integers, got {os.environ.get('RANK')!r} / "
                         f"{os.environ.get('WORLD_SIZE')!r}") from None  # fmt: skip
    return rank, world


def init_cohort_group(timeout_hours: float = 72.0) -> bool:
    """Join the ranks of a ``torchrun`` cohort run in a ``gloo`` process group (no-op in one process).

    ``torchrun`` stops every rank as soon as one exits non-zero. A rank with a failed scan exits with code 2 at the
    end (:class:`~xattnres_monai.handlers.report.InferenceReport`); without a way to wait for the others, a corrupt
    file in one shard would stop the other shards midway. With the group, :class:`CohortRecorder` and the report
    meet the other ranks (``barrier``) before any rank exits, so every rank finishes its scans, rank 0 merges the
    cohort table, and only then does the failing rank exit. ``gloo`` also on GPUs: only the barrier uses the group.

    Args:
        timeout_hours: how long a rank waits for the others at a barrier: must cover the spread of the ranks'
            finishing times (a rank that dies makes ``torchrun`` stop the waiting ones at once).

    Returns:
        Whether a group was made (``WORLD_SIZE`` > 1 with ``MASTER_ADDR`` / ``MASTER_PORT`` set, as ``torchrun``
        sets them, and no group yet).

    Example (``inference.json``)::

        "initialize": ["$xattnres_monai.engines.cohort.init_cohort_group()"]
    """
    import torch.distributed as dist

    _, world = distributed_rank()
    if world < 2 or not dist.is_available() or dist.is_initialized():
        return False
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        return False  # shards from RANK / WORLD_SIZE alone (e.g. job arrays): independent processes, nothing to join
    dist.init_process_group("gloo", timeout=timedelta(hours=float(timeout_hours)))
    return True


def leave_cohort_group(exiting_with_error: bool = False, max_wait: float = 60.0) -> None:
    """Meet the other ranks, leave the process group and, before an exit with an error, let the others exit first.

    The last step of a rank (:class:`~xattnres_monai.handlers.report.InferenceReport` calls it once it printed its
    report; no-op without a group): no rank exits before every rank has finished. ``torchrun`` stops the ranks
    still running as soon as one exits non-zero, and a finished rank still needs seconds to exit (the interpreter's
    and the libraries' teardown): a rank that is about to exit with an error therefore waits until the other ranks
    on its machine have exited (their process ids are exchanged at the meeting; at most ``max_wait`` seconds), so
    that ``torchrun`` lists only the failing rank as failed.

    Args:
        exiting_with_error: this rank exits non-zero next (a scan failed).
        max_wait: the longest wait for the other ranks to exit, in seconds.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    here = (socket.gethostname(), os.getpid())
    peers: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(peers, here)  # every rank's (host, pid): the meeting
    dist.destroy_process_group()
    if exiting_with_error:
        _wait_for_exit([pid for host, pid in peers if host == here[0] and (host, pid) != here], max_wait)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (exited processes that their parent has not reaped yet, zombies, do not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_for_exit(pids: Sequence[int], max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    if not os.path.isdir("/proc"):  # no process table to read (not Linux): a fixed pause instead
        time.sleep(min(max_wait, 5.0))
        return
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def shard(
    items: Sequence[T],
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    key: Optional[Callable[[T], Hashable]] = None,
) -> List[T]:
    """The items of one rank: round robin over the distinct ``key`` values in order of first appearance.

    Items with the same key (e.g. two scans that would write the same mask) land on the same rank. Over all ranks
    the shards are disjoint and cover ``items``; their sizes differ by at most one group.

    Args:
        items: every item, in the same order on every rank (e.g. sorted scan paths).
        rank: this rank (default: :func:`distributed_rank`).
        world_size: the number of ranks (default: :func:`distributed_rank`).
        key: groups items that must go together (default: the item itself).

    Example::

        >>> shard(["a", "b", "c", "d", "e"], rank=1, world_size=2)
        ['b', 'd']
    """
    if rank is None or world_size is None:
        found_rank, found_world = distributed_rank()
        rank = found_rank if rank is None else rank
        world_size = found_world if world_size is None else world_size
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size} process(es).")
    groups: Dict[Hashable, int] = {}
    mine = []
    for item in items:
        group = groups.setdefault(key(item) if key else item, len(groups))
        if group % world_size == rank:
            mine.append(item)
    return mine


# -------------------------------------------------------------------------------------------------------- records


def record_path_for(mask_path: PathLike) -> str:
    """``<mask folder>/.cohort/<mask name without .nii(.gz)>.json``."""
    folder, name = os.path.split(str(mask_path))
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    return os.path.join(folder, RECORD_DIR, f"{name}.json")


def write_record(
    path: PathLike, scan: str, outputs: Mapping[str, str], row: Optional[Mapping[str, Any]] = None
) -> Path:
    """Write the completion record of a scan (atomically, replacing an older one): the last file of a scan.

    Args:
        path: the record (:func:`record_path_for` of the mask).
        scan: the input scan.
        outputs: ``{kind: path}`` of every file written for the scan (they must exist: their sizes are recorded).
        row: the scan's row of the cohort table.

    Example::

        >>> write_record(".cohort/p1_seg.json", "scans/p1.nii.gz", {"mask": "out/p1_seg.nii.gz"})
    """
    files = {kind: {"path": str(p), "bytes": os.path.getsize(p)} for kind, p in outputs.items()}
    record = {"version": RECORD_VERSION, "scan": str(scan), "outputs": files, "row": dict(row or {}),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    return write_json_atomic(path, record, overwrite=True)


def record_problem(path: PathLike) -> Optional[str]:
    """Why the scan of the record ``path`` is not finished (``None``: it is)."""
    if not os.path.isfile(path):
        return "no completion record"
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        files = record["outputs"]
        if record.get("version") != RECORD_VERSION or not isinstance(files, dict) or not files:
            return "completion record of another format"
        for kind, entry in files.items():
            if not os.path.isfile(entry["path"]):
                return f"{kind} output {entry['path']} is missing"
            size = os.path.getsize(entry["path"])
            if size != int(entry["bytes"]):
                return f"{kind} output {entry['path']} has {size} bytes, {entry['bytes']} were written"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable completion record ({type(err).__name__}: {err})"
    return None


def read_record(path: PathLike) -> Optional[Dict[str, Any]]:
    """The record at ``path`` when its scan is finished (see :func:`record_problem`), else ``None``."""
    if record_problem(path) is not None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------------- inputs


def rank_csv_path(output_dir: PathLike, rank: int, world_size: int) -> str:
    """``<output_dir>/.cohort/rank<r>-of-<n>.csv``: the table of one rank."""
    return os.path.join(str(output_dir), RECORD_DIR, f"rank{int(rank)}-of-{int(world_size)}.csv")


class CohortInputs(InferenceInputs):
    """The scans of this rank that are not finished yet: :class:`InferenceInputs` for resumable, sharded runs.

    - Sharding: the listed scans (folder or datalist, in the same order on every rank) are split with :func:`shard`
      before any header is read; problems of the listing itself (unsupported files ...) are reported by rank 0.
    - Resuming: a scan whose completion record is valid (:func:`record_problem`) is skipped, its headers are not
      read again, and its record is kept in :attr:`finished` (its row goes into the cohort table). Any other scan
      is (re)done: its record is removed first and, unless ``overwrite``, the outputs a previous, interrupted run
      left (the mask and the files named by ``suffixes``) are removed too, so that the writers start afresh. Only in
      an output folder that a cohort run used before (it holds ``.cohort/``): in another folder an existing mask is
      another run's result, skipped and kept unless ``overwrite``.
    - ``overwrite``: redo every scan (writers then replace the outputs).

    Items carry ``"output"`` (the mask) and ``"record"`` (the completion record). This rank's table
    (:func:`rank_csv_path`) of an earlier run is removed.

    Args:
        output_dir, dataset_dir, datalist, postfix, max_voxels: as for :class:`InferenceInputs`.
        overwrite: redo finished scans too.
        suffixes: endings of the other files written beside each mask (e.g. ``["_prob.nii.gz", "_seg.dcm",
            "_organs.csv", "_organs.json"]``, see :func:`~xattnres_monai.metrics.organ_report.sibling_path`),
            removed when a partial scan is redone.
        rank, world_size: this process's shard (default: :func:`distributed_rank`).

    Attributes:
        finished: the records of the scans finished by an earlier run.
    """

    def __init__(
        self,
        output_dir: str,
        dataset_dir: Optional[str] = None,
        datalist: Optional[str] = None,
        overwrite: bool = False,
        postfix: str = "seg",
        max_voxels: Optional[int] = MAX_VOXELS,
        suffixes: Sequence[str] = (),
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        found_rank, found_world = distributed_rank()
        self.rank = found_rank if rank is None else int(rank)
        self.world_size = found_world if world_size is None else int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"CohortInputs: rank {self.rank} outside a world of {self.world_size} process(es).")
        self.suffixes = [str(s) for s in ([suffixes] if isinstance(suffixes, str) else suffixes)]
        self._redo_all = as_bool(overwrite, "overwrite")
        self._finished: Dict[str, Dict[str, Any]] = {}
        self.finished: List[Dict[str, Any]] = []
        # a folder a cohort run wrote into before holds .cohort/: there, a mask without its record is the output of
        # an interrupted scan and is redone; elsewhere an existing mask is a result of another run, kept and skipped
        # (as InferenceInputs does) unless overwrite: nothing the user did not ask to replace is removed
        records = os.path.join(str(output_dir), RECORD_DIR)
        cohort_folder = os.path.isdir(records)
        super().__init__(output_dir, dataset_dir, datalist, True, postfix, max_voxels)  # existing outputs: see below
        self.overwrite = self._redo_all
        self.records_dir = records  # made when the first scan starts (mark_started): a refused run leaves nothing
        todo = []
        for item in self.items:
            record = self._finished.get(item["image"])
            if record is not None:
                self.finished.append(record)
                self.skipped.append((item["image"], f"finished earlier (completion record {item['record']})"))
            elif not self._redo_all and not cohort_folder and os.path.lexists(item["output"]):
                self.skipped.append((item["image"], f"output exists: {item['output']} (--overwrite true replaces it)"))
            else:
                self._reset(item)
                todo.append(item)
        self.items = todo
        if self.finished:
            logger.info(f"cohort: {len(self.finished)} scan(s) finished earlier are skipped")
        stale = rank_csv_path(self.output_dir, self.rank, self.world_size)
        if os.path.exists(stale):
            os.remove(stale)
        logger.info(f"cohort: rank {self.rank} of {self.world_size}: {len(self.items)} scan(s) to segment")

    def mark_started(self) -> None:
        """Make ``<output_dir>/.cohort/`` before the first output of this run is written: from then on the folder is
        a cohort folder, where a mask without its record is an interrupted scan (redone on the next run)."""
        os.makedirs(self.records_dir, exist_ok=True)

    def outputs_for(self, scan: str) -> Dict[str, str]:
        """The mask and the completion record of ``scan``."""
        mask = output_path_for(scan, self.output_dir, self.postfix)
        return {"output": mask, "record": record_path_for(mask)}

    def check(self, scan: str) -> None:
        """The header checks, except for a finished scan (its record is valid: nothing is read)."""
        if not self._redo_all:
            record = read_record(self.outputs_for(scan)["record"])
            if record is not None:
                self._finished[scan] = record
                return
        super().check(scan)

    def _list_scans(self, dataset_dir: Optional[str], datalist: Optional[str]) -> List[str]:
        listed = len(self.failures)
        scans = super()._list_scans(dataset_dir, datalist)
        if self.rank != 0:
            del self.failures[listed:]  # reported once, by rank 0
        return shard(scans, self.rank, self.world_size, key=lambda s: self.outputs_for(s)["output"])

    def _reset(self, item: Mapping[str, str]) -> None:
        """Before (re)doing a scan: remove its record, and without ``overwrite`` the outputs of an interrupted run;
        always the temporary files a killed writer left (``atomic_write``'s ``.tmp-<8 hex>-<name>``)."""
        targets = [item["record"], item["output"], *(sibling_path(item["output"], s, self.postfix) for s in self.suffixes)]
        paths = [item["record"]]
        if not self._redo_all:
            paths += targets[1:]
        for target in targets:
            folder, name = os.path.split(target)
            paths += glob.glob(os.path.join(glob.escape(folder), ".tmp-" + "[0-9a-f]" * 8 + "-" + glob.escape(name)))
        removed = []
        for path in paths:
            if os.path.lexists(path):
                os.remove(path)
                removed.append(path)
        outputs = [p for p in removed if p != item["record"]]
        if outputs:
            logger.warning(f"{item['image']}: outputs of an unfinished earlier run removed, redoing it: "
                           f"{', '.join(outputs)}")  # fmt: skip


# -------------------------------------------------------------------------------------------------------- tables


def _read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _columns(rows: Iterable[Mapping[str, Any]]) -> List[str]:
    seen: Dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    middle = [c for c in seen if c not in _FIRST_COLUMNS and c not in _LAST_COLUMNS]
    return [*_FIRST_COLUMNS, *middle, *_LAST_COLUMNS]


def merge_cohort_csv(output_dir: PathLike, world_size: Optional[int] = None) -> Path:
    """Merge the per-rank tables into ``<output_dir>/cohort.csv`` (atomically, replacing an older one).

    One row per scan, sorted by scan (a scan listed twice keeps its ``done`` row). Can be called at any time,
    e.g. again by hand after a rank that failed was rerun.

    Args:
        output_dir: the run's output folder.
        world_size: merge ``rank*-of-<world_size>.csv``; default: the world size of the newest per-rank table.

    Example::

        >>> merge_cohort_csv("out/")
        PosixPath('out/cohort.csv')
    """
    folder = os.path.join(str(output_dir), RECORD_DIR)
    found = glob.glob(os.path.join(folder, "rank*-of-*.csv"))
    if world_size is None and found:
        newest = max(found, key=os.path.getmtime)
        world_size = int(re.search(r"-of-(\d+)\.csv$", newest).group(1))  # type: ignore[union-attr]
    paths = sorted(glob.glob(os.path.join(folder, f"rank*-of-{world_size}.csv")))
    by_scan: Dict[str, Dict[str, str]] = {}
    for path in paths:
        for row in _read_csv(path):
            kept = by_scan.get(row["scan"])
            if kept is None or (kept.get("status") != "done" and row.get("status") == "done"):
                by_scan[row["scan"]] = row
    rows = [by_scan[s] for s in sorted(by_scan)]
    return write_csv_atomic(os.path.join(str(output_dir), COHORT_CSV), rows, fieldnames=_columns(rows), overwrite=True)


# ------------------------------------------------------------------------------------------------------- handler


def _volumes(data: Mapping[Hashable, Any], pred_key: str, organs_key: str, num_classes: Optional[int],
             class_names: Any) -> Dict[str, float]:  # fmt: skip
    rows = data.get(organs_key)
    if rows is None and pred_key in data:
        from xattnres_monai.metrics.organ_report import label_affine, organ_table

        pred = data[pred_key]
        if pred.shape[0] > 1:
            pred = pred.argmax(0, keepdim=True)
        if pred.ndim == 4:
            rows = organ_table(pred, label_affine(data[pred_key], data.get(f"{pred_key}_meta_dict")), None,
                               num_classes, class_names)  # fmt: skip
    return {f"volume_ml_{r['name']}": round(float(r["volume_ml"]), 3) for r in rows or []}


class CohortRecorder:
    """Per scan: verify its outputs, write its completion record, log one line; at the end: the cohort table.

    Attach to the inference evaluator (after the postprocessing that writes the outputs). At each iteration, for
    each scan of the batch: the outputs are the mask (``output``) and the files the writers added to
    ``data["outputs"]`` (:class:`~xattnres_monai.transforms.outputs.SaveProbabilitiesd`,
    :class:`~xattnres_monai.transforms.dicom_seg.SaveDicomSegd`,
    :class:`~xattnres_monai.metrics.organ_report.OrganReportd`); when all exist and none failed (the run's
    ``failures``), the completion record is written (atomically, last); the line ``<scan>: done in 12.3 s, 4
    output(s); liver 1480.2 mL, ...`` (or ``FAILED``) is logged. Volumes come from ``data[organs_key]``
    (``OrganReportd``) or are computed from the label map.

    Calling the recorder (the bundle's ``run`` list, also when no scan was left to do) writes this rank's table
    (this run's scans, the scans finished earlier from their records, and the failures) and merges the cohort table
    ``cohort.csv``: with ``torch.distributed`` initialised, rank 0 after a barrier (the process group's timeout must
    cover the spread of the ranks' finishing times); otherwise the rank that finds every rank's table present (the
    last to finish; with one process, at once).

    Args:
        inputs: the run's :class:`CohortInputs`.
        pred_key: the label map key (for volumes when no organ report ran).
        organs_key: where :class:`~xattnres_monai.metrics.organ_report.OrganReportd` stored its rows.
        num_classes, class_names: class names of the volume columns (9 classes: the Synapse organs).

    Example (``inference.json``)::

        "cohort": {"_target_": "xattnres_monai.engines.cohort.CohortRecorder", "inputs": "@inputs",
                   "num_classes": "@num_classes"}
        ... "handlers": [..., "@cohort"], "run": ["$@evaluator.run() if @inputs.items else None", "$@cohort()",
        "$@report()"]
    """

    def __init__(
        self,
        inputs: CohortInputs,
        pred_key: str = "pred",
        organs_key: str = "organs",
        num_classes: Optional[int] = None,
        class_names: Any = None,
    ) -> None:
        self.inputs = inputs
        self.pred_key = pred_key
        self.organs_key = organs_key
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = class_names
        self.rows: List[Dict[str, Any]] = []
        self._started = time.perf_counter()
        self._failures_before = 0
        self._scans: Optional[Dict[str, str]] = None

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)

    def _start(self, engine: Any = None) -> None:
        self.inputs.mark_started()
        self._started = time.perf_counter()
        self._failures_before = len(self.inputs.failures)

    def _scan_of(self, path: str) -> str:
        if self._scans is None:
            self._scans = {item[k]: item["image"] for item in self.inputs.items for k in ("image", "output")}
        return self._scans.get(path, path)

    def _failure_reason(self, paths: Iterable[str], alone: bool) -> Optional[str]:
        """The failures recorded while this batch was processed: all of them for a batch of one scan, else those
        naming one of ``paths``."""
        wanted = set(paths)
        new = self.inputs.failures[self._failures_before :]
        reasons = [f"{path}: {reason}" for path, reason in new if alone or path in wanted]
        return "; ".join(reasons) if reasons else None

    def _finish(self, scan: str, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        if row["status"] == "done":
            volumes = ", ".join(f"{k[len('volume_ml_'):]} {v:.1f} mL" for k, v in row.items()
                                if k.startswith("volume_ml_") and v)  # fmt: skip
            outputs = len(str(row["outputs"]).split("; "))
            line = f"{scan}: done in {row['seconds']:.1f} s, {outputs} output(s)"
            # DEBUG: the console's line per scan is ScanProgress's; the volumes are in the organ report and cohort.csv
            logger.debug(f"{line}; {volumes}" if volumes else line)
        else:
            logger.error(f"{scan}: FAILED after {row['seconds']:.1f} s: {row['reason']}")

    def record(self, engine: Any) -> None:
        """The ``ITERATION_COMPLETED`` handler: check, record and report each scan of the batch."""
        batch, output = engine.state.batch, engine.state.output
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if isinstance(batch, dict) and "failure" in batch:  # not loaded: InferenceEvaluator recorded the failure
            seconds = round((time.perf_counter() - self._started) / max(len(batch["failure"]), 1), 3)
            for scan, problem in zip(batch["image"], batch["failure"]):
                self._finish(str(scan), {"scan": str(scan), "status": "failed", "seconds": seconds, "outputs": "",
                                         "reason": str(problem), "finished": now})  # fmt: skip
            return
        if not isinstance(batch, list) or not isinstance(output, list):
            return
        seconds = round((time.perf_counter() - self._started) / max(len(output), 1), 3)
        for b, o in zip(batch, output):
            data = {**b, **o} if isinstance(b, Mapping) and isinstance(o, Mapping) else dict(o)
            mask = str(data["output"])
            scan = self._scan_of(mask)
            outputs = {"mask": mask, **{str(k): str(v) for k, v in (data.get("outputs") or {}).items()}}
            siblings = [sibling_path(mask, suffix, self.inputs.postfix) for suffix in self.inputs.suffixes]
            reason = self._failure_reason([scan, *outputs.values(), *siblings], alone=len(output) == 1)
            missing = [p for p in outputs.values() if not os.path.isfile(p)]
            if reason is None and missing:
                reason = f"output(s) not written: {', '.join(missing)}"
            row: Dict[str, Any] = {"scan": scan, "status": "done" if reason is None else "failed", "seconds": seconds,
                                   "outputs": "; ".join(outputs.values()), "finished": now}  # fmt: skip
            row.update(_volumes(data, self.pred_key, self.organs_key, self.num_classes, self.class_names))
            if reason is None:
                try:
                    write_record(data.get("record") or record_path_for(mask), scan, outputs, row)
                except OSError as err:
                    reason = f"cannot write the completion record ({type(err).__name__}: {err.strerror or err})"
                    self.inputs.failures.append((str(data.get("record") or record_path_for(mask)), reason))
            if reason is not None:
                row.update(status="failed", reason=reason)
            self._finish(scan, row)
        self._started = time.perf_counter()

    def table(self) -> List[Dict[str, Any]]:
        """This rank's rows: this run's scans, those finished earlier (from their records), and the failures."""
        rows = list(self.rows)
        rows += [dict(r.get("row") or {"scan": r["scan"], "status": "done"}) for r in self.inputs.finished]
        covered = {row["scan"] for row in rows}
        for path, reason in self.inputs.failures:
            scan = self._scan_of(path)
            if scan not in covered:
                rows.append({"scan": scan, "status": "failed", "outputs": "", "reason": f"{path}: {reason}"})
                covered.add(scan)
        return rows

    def __call__(self) -> Optional[Path]:
        """Write this rank's table; merge ``cohort.csv`` when every rank's is there. Returns its path if merged."""
        rank, world = self.inputs.rank, self.inputs.world_size
        rows = self.table()
        write_csv_atomic(rank_csv_path(self.inputs.output_dir, rank, world), rows, fieldnames=_columns(rows),
                         overwrite=True)  # fmt: skip
        done = sum(1 for r in rows if r.get("status") == "done")
        logger.info(f"cohort: rank {rank} of {world}: {done} of {len(rows)} scan(s) done")
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() == world:
            dist.barrier()
            merge = rank == 0
        else:
            merge = all(os.path.isfile(rank_csv_path(self.inputs.output_dir, r, world)) for r in range(world))
        if not merge:
            return None
        path = merge_cohort_csv(self.inputs.output_dir, world)
        logger.info(f"cohort: table of every scan written to {path}")
        return path
