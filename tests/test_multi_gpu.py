"""Multi-process training (``configs/multi_gpu_train.json``): torchrun on CPU (gloo), checkpoints as single-process.

The fast test checks the structure of every bundle's override (DistributedSampler, rank-0-only loggers and
writers, handlers every rank needs kept everywhere). The slow test launches
``torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run`` for one epoch of the Synapse bundle
on phantoms and checks that the checkpoints written by rank 0 load strictly into a fresh single-process network,
equal the final weights of both ranks, have the single-process format (a single-process run resumes from them),
and that rank 1 neither logs nor writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MULTI_GPU_BUNDLES = sorted(p.parents[1] for p in ROOT.glob("bundles/*/configs/multi_gpu_train.json"))
SYNAPSE = ROOT / "bundles" / "synapse_ct_segmentation"


def tiny(batch_size: int = 4, max_epochs: int = 1):
    return ["--roi_size", "[32,32]", "--num_workers", "0", "--batch_size", str(batch_size), "--max_epochs",
            str(max_epochs), "--val_interval", "1"]


# handlers that only log or write files: rank 0 only (the last component of ``_target_``)
RANK0_ONLY = {"StatsHandler", "TensorBoardStatsHandler", "ProgressBar", "MLFlowHandler", "CheckpointSaver",
              "BestModelCheckpoint", "SegmentationReport", "ClearMLStatsHandler"}
# handlers every rank needs: the schedule, validation (its metric is all-gathered), gradient clipping, and the
# epoch checkpoint (every rank resumes from it; only rank 0 writes it)
EVERY_RANK = {"LrScheduleHandler", "ValidationHandler", "EpochCheckpoint", "GradientClipping", "CheckpointLoader"}


def _merged(bundle: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    return parser


@pytest.mark.parametrize("bundle", MULTI_GPU_BUNDLES, ids=lambda p: p.name)
def test_multi_gpu_override_structure(bundle):
    parser = _merged(bundle)
    assert "gloo" in parser["dist_backend"] and "nccl" in parser["dist_backend"], "backend must follow the device"
    assert parser["network"]["_target_"].endswith("DistributedDataParallel")
    assert "torch.cuda.is_available()" in str(parser["network"]["device_ids"]), "device_ids only on CUDA"
    sampler = parser["train#sampler"]
    assert sampler["_target_"].endswith("DistributedSampler") and sampler["dataset"] == "@train#dataset"
    assert parser["train#dataloader#sampler"] == "@train#sampler"
    assert parser["train#dataloader#shuffle"] is False
    # handler lists are filtered with ``_disabled_`` (an expression): slicing an instantiated list would still
    # construct the loggers on every rank (TensorBoard creates its event file in the constructor)
    assert parser["train#trainer#train_handlers"] == "@train#handlers"
    assert parser["validate#evaluator#val_handlers"] == "@validate#handlers"
    for rank in (0, 1, 3):
        for section, handlers in _disabled_handlers(parser, rank).items():
            for name, disabled in handlers:
                if name in RANK0_ONLY:
                    assert disabled == (rank > 0), f"{section} handler {name} must run on rank 0 only"
                elif name in EVERY_RANK:
                    assert not disabled, f"{section} handler {name} must run on every rank"
    init = " ".join(str(x) for x in parser["initialize"])
    # ignite creates its distributed context (a collective) on first use: every rank must do it at the same point
    assert "idist.sync()" in init and "init_process_group" in init
    assert init.index("init_process_group") < init.index("idist.sync()")


def _disabled_handlers(parser, rank: int) -> dict:
    """{section: [(class name, disabled on ``rank``)]}: each handler's ``_disabled_`` resolved by the config parser."""
    parser["rank"] = rank
    out = {}
    for section in ("train", "validate"):
        out[section] = [
            (handler["_target_"].rsplit(".", 1)[-1],
             bool(parser.get_parsed_content(f"{section}#handlers#{i}#_disabled_")) if "_disabled_" in handler else False)
            for i, handler in enumerate(parser[f"{section}#handlers"])
        ]  # fmt: skip
    return out


@pytest.mark.parametrize("bundle", MULTI_GPU_BUNDLES, ids=lambda p: p.name)
def test_rank_zero_only_handlers_are_chosen_by_name(bundle, tmp_path):
    """Inserting a handler anywhere in train.json (MONAI Label inserts a CheckpointLoader first when it fine-tunes)
    leaves the same handlers rank-0-only: multi_gpu_train.json names them, it does not count positions."""
    train = json.loads((bundle / "configs" / "train.json").read_text())
    names = {}
    for section in ("train", "validate"):
        for handler in train[section]["handlers"]:
            name = re.fullmatch(r"\$'(\w+)' in @disabled_handlers", str(handler.get("_disabled_", "")))
            assert name, f"{section} handler {handler['_target_']} has no name (its _disabled_ is not the by-name test)"
            names.setdefault(name.group(1), []).append(handler["_target_"])
    rank0_only = _merged(bundle)["rank_zero_only_handlers"]
    assert all(len(names.get(n, [])) == 1 for n in rank0_only), f"every rank-0-only name must name one handler: {names}"

    before = {rank: _disabled_handlers(_merged(bundle), rank) for rank in (0, 1)}
    assert any(disabled for _, disabled in before[1]["train"]) and not any(d for _, d in before[0]["train"])
    inserted = {"_target_": "CheckpointLoader", "load_path": "pretrained.pt", "load_dict": {"model": "@network"}}
    for section in ("train", "validate"):
        train[section]["handlers"].insert(0, dict(inserted))  # before every handler: every position shifts
        train[section]["handlers"].insert(3, {"_target_": "StatsHandler", "_disabled_": "$'extra' in @disabled_handlers"})
    (tmp_path / "train.json").write_text(json.dumps(train, indent=4))
    from monai.bundle import ConfigParser

    for rank in (0, 1):
        parser = ConfigParser()
        parser.read_config([str(tmp_path / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
        after = _disabled_handlers(parser, rank)
        for section in ("train", "validate"):
            assert after[section][0] == ("CheckpointLoader", False), "an inserted handler runs on every rank"
            assert after[section][3] == ("StatsHandler", False), "a handler not named rank-0-only runs on every rank"
            assert after[section][1:3] + after[section][4:] == before[rank][section], (section, rank)


def _write_synapse_data(root: Path) -> Path:
    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.testing.phantoms import write_phantoms

    write_phantoms(root / "raw", cases=4, size=(32, 32, 16), seed=0)
    prepare_synapse(root / "raw", root / "datalist.json", split="random", num_val=1)
    return root / "datalist.json"


def _run(cmd, timeout: int = 420) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, killing the whole group (torchrun and its workers) on timeout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8",
                            errors="replace", start_new_session=True, cwd=str(ROOT))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s (hung collective?):\n{out[-3000:]}\n{err[-3000:]}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if result.returncode != 0:
        raise AssertionError(f"failed ({result.returncode}):\n{out[-3000:]}\n{err[-5000:]}")
    return result


def _state_structure(obj):
    """Nested keys and tensor shapes / dtypes of a checkpoint (values ignored)."""
    if isinstance(obj, dict):
        return {k: _state_structure(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_state_structure(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return ("tensor", tuple(obj.shape), str(obj.dtype))
    return type(obj).__name__


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_single_process_checkpoints(tmp_path):
    datalist = _write_synapse_data(tmp_path)
    configs = SYNAPSE / "configs"
    dump_dir = tmp_path / "ranks"
    dump_dir.mkdir()
    # an extra config merged last: every rank saves what it ended with (weights, sampler, handlers) at finalize
    dump = {
        "dump_dir": str(dump_dir),
        "finalize": [
            (
                "$torch.save({'model': @network_def.state_dict(), 'pid': os.getpid(), "
                "'sampler': type(@train#dataloader.sampler).__name__, 'indices': list(@train#dataloader.sampler), "
                "'dataset_len': len(@train#dataset), 'iterations': @train#trainer.state.iteration, "
                "'train_handlers': [type(h).__name__ for h in @train#handlers], "
                "'val_handlers': [type(h).__name__ for h in @validate#handlers]}, "
                "os.path.join(@dump_dir, 'rank' + str(@rank) + '.pt'))"
            ),
            "$dist.is_initialized() and dist.destroy_process_group()",
        ],
    }
    (tmp_path / "dump.json").write_text(json.dumps(dump))
    bundle_root = tmp_path / "ddp"
    config_file = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}','{tmp_path / 'dump.json'}']"
    logs = tmp_path / "torchrun_logs"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
          "--log-dir", str(logs), "--redirects", "3",
          "-m", "monai.bundle", "run", "--config_file", config_file, "--bundle_root", str(bundle_root),
          "--datalist", str(datalist)] + tiny())

    ranks = [torch.load(dump_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # DistributedSampler: disjoint halves covering the slice dataset, half the iterations of a single process
    n = ranks[0]["dataset_len"]
    assert all(r["sampler"] == "DistributedSampler" for r in ranks)
    assert all(len(r["indices"]) == math.ceil(n / 2) for r in ranks)
    assert set(ranks[0]["indices"]) | set(ranks[1]["indices"]) == set(range(n))
    assert all(r["iterations"] == math.ceil(math.ceil(n / 2) / 4) for r in ranks)
    # loggers and writers exist on rank 0 only
    assert "TensorBoardStatsHandler" in ranks[0]["val_handlers"] and ranks[1]["val_handlers"] == []
    assert "StatsHandler" in ranks[0]["train_handlers"] and "StatsHandler" not in ranks[1]["train_handlers"]
    # DDP keeps the ranks in sync: both end with exactly the same weights
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key

    # the checkpoints rank 0 wrote load strictly (weights_only) into a fresh single-process network
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    models = bundle_root / "models"
    best = torch.load(models / "model.pt", weights_only=True)["model"]
    epoch = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    for state in (best, epoch["model"]):
        assert not any(k.startswith("module.") for k in state), "DDP wrapper prefix in the checkpoint"
        net = parser.get_parsed_content("network_def", instantiate=True)
        net.load_state_dict(state, strict=True)
        for key, value in net.state_dict().items():
            assert torch.equal(value, ranks[0]["model"][key]), key

    # rank 1 wrote nothing: every TensorBoard event file is rank 0's (file names end with <pid>.<n>)
    events = list((bundle_root / "eval").glob("events.out.tfevents.*"))
    assert events and all(p.name.split(".")[-2] == str(ranks[0]["pid"]) for p in events), events
    # ... and logged nothing once distributed (rank 0 logs one line per epoch)
    rank_logs = {p.parent.name: p.read_text(errors="replace") for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert "epoch 1/" in rank_logs["0"] and "epoch 1/" not in rank_logs["1"]

    # same format as single-process training: a single-process run resumes from rank 0's epoch checkpoint
    single = tmp_path / "single"
    (single / "models").mkdir(parents=True)
    (single / "models" / "checkpoint_epoch=1.pt").write_bytes((models / "checkpoint_epoch=1.pt").read_bytes())
    (single / "models" / "model.pt").write_bytes((models / "model.pt").read_bytes())
    # (the same global batch, 2 x 4, so the same iterations per epoch: resuming checks that they match)
    result = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "train.json"),
                   "--bundle_root", str(single), "--datalist", str(datalist)] + tiny(batch_size=8, max_epochs=2))
    assert "resumed from" in result.stdout + result.stderr
    resumed = torch.load(single / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert _state_structure(resumed) == _state_structure(epoch)
    assert resumed["trainer"]["iteration"] == 2 * ranks[0]["iterations"]
