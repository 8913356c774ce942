"""Prune the connections the routing report of a trained bundle finds unused, retrain, and compare, side by side.

On a bundle trained by ``make demo`` (``demo_output/synapse_bundle``: its ``eval/routing/routing_report.json`` is
written by the demo's routing step), this script

1. lists the weak connections of the report (:func:`xattnres_monai.routing.weak_connections`: mean weight below
   ``--fraction`` x the uniform weight ``1/(K+1)`` of the block, overall and in every measured region);
2. copies the bundle (configs and data, not the model) and trains it again with the demo's recipe and
   ``--network_def#pruned_connections`` set to those connections, then evaluates it as the demo does;
3. prints one table: parameters, training step time (forward + backward of one batch of the demo's 96 x 96 slices,
   both networks timed alternately in this process, median of ``--steps``) and the evaluation's mean Dice
   (literature convention) of the original and the pruned network.

Usage::

    make demo                                   # the trained bundle and its routing report
    python benchmarks/routing_pruning.py [--bundle demo_output/synapse_bundle] [--fraction 0.5] [--epochs 12]

Cost: one more demo training (about as long as ``make demo``'s) plus a minute of timing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]


def weak_list(report: Path, fraction: float) -> List[str]:
    """``block:entry`` of every connection below ``fraction`` of its block's uniform weight, everywhere."""
    from xattnres_monai.routing import weak_connections

    data = json.loads(report.read_text(encoding="utf-8"))
    weak = []
    for block in data.get("blocks", []):
        uniform = 1.0 / len(block["entries"])  # K history entries + the block's input
        single = {"blocks": [block]}
        weak += [f"{b}:{e}" for b, e in weak_connections(single, threshold=fraction * uniform)]
    return weak


def network_of(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def", instantiate=True)


def mean_dice(bundle: Path) -> float:
    with open(bundle / "eval" / "summary.csv", newline="") as f:
        rows = {row["convention"]: row for row in csv.DictReader(f)}
    return float(rows["literature"]["DSC"])


def step_times(networks: Dict[str, torch.nn.Module], roi: Sequence[int], batch: int, steps: int,
               classes: int) -> Dict[str, float]:  # fmt: skip
    """Median seconds of one training step (forward, Dice-free CE loss, backward), networks timed alternately."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, *roi)
    y = torch.randint(0, classes, (batch, *roi))
    times: Dict[str, List[float]] = {name: [] for name in networks}
    for name, net in networks.items():  # warm-up
        net.train()
        torch.nn.functional.cross_entropy(net(x), y).backward()
    for _ in range(steps):
        for name, net in networks.items():
            net.zero_grad(set_to_none=True)
            start = time.perf_counter()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "demo_output" / "synapse_bundle")
    parser.add_argument("--output", type=Path, default=REPO / "demo_output" / "synapse_bundle_pruned")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="weak: mean weight below this fraction of the block's uniform weight (default 0.5)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per network")
    args = parser.parse_args(argv)
    from xattnres_monai.demo import TASKS

    args.epochs = args.epochs or int(TASKS["synapse"]["epochs"])  # type: ignore[call-overload]

    report = args.bundle / "eval" / "routing" / "routing_report.json"
    if not report.is_file():
        raise SystemExit(f"error: {report}: missing (run `make demo` first: it writes the routing report)")
    weak = weak_list(report, args.fraction)
    print(f"weak connections (< {args.fraction:g} x uniform weight, everywhere): {', '.join(weak) or 'none'}")
    if not weak:
        return 0

    pruned = args.output
    if pruned.exists():
        shutil.rmtree(pruned)
    shutil.copytree(args.bundle, pruned, ignore=shutil.ignore_patterns("models", "eval", "logs"))
    (pruned / "models").mkdir()
    bundle_cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(pruned)]
    configs = lambda *names: "[" + ",".join(f"'{pruned / 'configs' / n}'" for n in names) + "]"  # noqa: E731
    run(bundle_cmd + ["--config_file", configs("train.json"), *TASKS["synapse"]["overrides"],  # type: ignore[misc]
                      "--max_epochs", str(args.epochs), "--val_interval", str(max(1, args.epochs // 3)),
                      "--network_def#pruned_connections", json.dumps(weak)])  # fmt: skip
    run(bundle_cmd + ["--config_file", configs("train.json", "evaluate.json"), "--overwrite", "true"])

    networks = {"original": network_of(args.bundle), "pruned": network_of(pruned)}
    settings = torch.load(pruned / "models" / "model.pt", weights_only=True)["settings"]
    roi = settings["roi_size"]
    batch = int(json.loads((pruned / "configs" / "train.json").read_text())["batch_size"])
    seconds = step_times(networks, roi, batch, args.steps, int(settings["num_classes"]))
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in networks.items()}
    dice = {"original": mean_dice(args.bundle), "pruned": mean_dice(pruned)}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nmachine: {os.cpu_count()} core(s), load average {load}; step: batch {batch} x {roi}, median of "
          f"{args.steps}; Dice: the demo's test phantoms, literature convention")  # fmt: skip
    print(f"pruned connections ({len(weak)}): {', '.join(weak)}\n")
    print("| network | parameters | training step (s) | mean Dice (%) |")
    print("|---|---|---|---|")
    for name in networks:
        print(f"| {name} | {params[name]:,} | {seconds[name]:.3f} | {dice[name]:.2f} |")
    print(f"| pruned / original | {params['pruned'] / params['original']:.3f} | "
          f"{seconds['pruned'] / seconds['original']:.3f} | {dice['pruned'] - dice['original']:+.2f} points |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
