"""Experiment tracking: ``python -m monai.bundle run ... --tracking mlflow`` with a local store (no server).

MONAI's built-in settings (``monai.bundle.DEFAULT_MLFLOW_SETTINGS``) add an ``MLFlowHandler`` to
``train#trainer`` and ``validate#evaluator`` and, by default, track to a SQLite file
``<output_dir>/mlruns.db`` with the artifacts under ``<output_dir>/mlruns/`` (MLflow 3 refuses the old plain-folder
file store unless ``MLFLOW_ALLOW_FILE_STORE=true``). Needs ``mlflow-skinny`` + ``SQLAlchemy`` + ``alembic``
(the ``tracking`` extra, pinned in requirements-test.txt).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "synapse_ct_segmentation" / "configs"


@pytest.mark.slow
def test_mlflow_tracking_to_a_local_store(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow-skinny is in requirements-test.txt / the 'tracking' extra")
    pytest.importorskip("sqlalchemy", reason="the local SQLite store needs SQLAlchemy (the 'tracking' extra)")
    pytest.importorskip("alembic", reason="the local SQLite store needs alembic (the 'tracking' extra)")
    from mlflow.tracking import MlflowClient
    from monai.utils import path_to_sqlite_uri

    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.testing.phantoms import write_phantoms

    write_phantoms(tmp_path / "raw", cases=4, size=(32, 32, 16), seed=0)
    prepare_synapse(tmp_path / "raw", tmp_path / "datalist.json", split="random", num_val=1)
    bundle_root = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json"),
           "--bundle_root", str(bundle_root), "--datalist", str(tmp_path / "datalist.json"),
           "--roi_size", "[32,32]", "--num_workers", "0", "--batch_size", "8", "--max_epochs", "1",
           "--val_interval", "1", "--tracking", "mlflow", "--experiment_name", "xattnres_test"]
    result = subprocess.run(cmd, check=False, capture_output=True, encoding="utf-8", errors="replace", cwd=str(ROOT),
                            timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    store = bundle_root / "eval" / "mlruns.db"
    assert store.is_file()
    client = MlflowClient(tracking_uri=path_to_sqlite_uri(str(store)))
    experiment = client.get_experiment_by_name("xattnres_test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # the training loss per iteration, the validation metric per epoch, the run parameters
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 4 and all(h.value > 0 for h in history)  # 32 slices / batch 8
    assert {"train_loss", "val_mean_dice", "train_mean_dice"} <= set(run.data.metrics)
    assert run.data.params.get("max_epochs") == "1"
    # the executed configuration is logged as an artifact, stored locally
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts
    assert run.info.artifact_uri.startswith((bundle_root / "eval" / "mlruns").resolve().as_uri())
