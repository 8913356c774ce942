"""The routing report's cost against plain inference over the same scans, measured side by side in one run.

For each scan (Synapse bundle preprocessing: RAS, abdomen window, in-plane resize to ``roi_size``), the network runs
on its axial slices in batches of 16 (as the bundle's ``SliceInferer``), three ways, timed round-robin (median of
``--repeats`` runs, preprocessing excluded; wall time and this process's CPU time, the steadier figure on a shared
machine):

* ``plain``: the forward passes alone (what inference computes);
* ``report``: :meth:`RoutingReport.run` with prediction and ground-truth regions (weights captured by
  :func:`~xattnres_monai.routing.capture.capture_routing`, entropy, class / boundary / interior sums);
* ``report (literal weights)``: the same accumulation fed by
  :func:`~xattnres_monai.networks.utils.capture_attention` (the paper's equations, literally), for comparison.

Target (from the project issue, printed here, not in the test suite): ``report`` <= 1.5 x ``plain``.

Usage::

    python benchmarks/routing_report.py [--bundle B] [--scans 2] [--size 96 96 24] [--repeats 3] [--threads N]

Without ``--bundle`` a copy of the repository's Synapse bundle is made in a temporary folder, with the default
network (XAttnResUNet 2D, 9 classes, ``roi_size`` 224 x 224) stamped with random weights and random (non-zero)
queries, and phantom scans of ``--size`` voxels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]


def make_bundle(root: Path, scans: int, size: List[int]) -> Path:
    """A Synapse bundle copy with a settings-stamped random model (queries ~ N(0, 1)) and ``scans`` phantoms."""
    from xattnres_monai.bundle import update_bundle_configs
    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.demo import make_bundle as copy_bundle
    from xattnres_monai.networks.definition import network_definition
    from xattnres_monai.networks.nets import XAttnResUNet
    from xattnres_monai.testing.phantoms import write_phantoms

    bundle = root / "bundle"
    copy_bundle("synapse", bundle, fresh=False)
    write_phantoms(bundle / "data" / "raw", cases=max(3, scans), size=size, seed=0)
    prepare_synapse(bundle / "data" / "raw", bundle / "data" / "datalist.json", split="random", num_val=1)
    torch.manual_seed(0)
    net = XAttnResUNet(2, 1, 9)
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "query") and isinstance(module.query, torch.nn.Parameter):
                module.query.normal_(0.0, 1.0)
    settings = {"network_def": network_definition(net), "roi_size": [224, 224], "hu_window": [-125, 275],
                "num_classes": 9, "class_names": None}  # fmt: skip
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "settings": settings}, bundle / "models" / "model.pt")
    update_bundle_configs(str(bundle), settings)
    return bundle


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="a trained bundle (default: a temporary stamped copy)")
    parser.add_argument("--labels", default=None, help="its labelled datalist (default: <bundle>/data/datalist.json)")
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=[96, 96, 24], help="phantom size (temporary bundle)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from xattnres_monai.networks.utils import capture_attention
    from xattnres_monai.routing import RoutingReport, predicted_classes
    from xattnres_monai.routing.bundle import _label_on_grid, load_bundle_network, network_inputs, scan_list
    from xattnres_monai.routing.layout import spatial_dims_of

    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        bundle = Path(args.bundle) if args.bundle else make_bundle(Path(tmp), args.scans, args.size)
        labels = Path(args.labels) if args.labels else bundle / "data" / "datalist.json"
        net = load_bundle_network(bundle / "configs" / "inference.json", bundle, device="cpu")
        items = scan_list(None, labels, args.scans)
        dims = spatial_dims_of(net.network)
        inputs = []
        for item in items:
            image = net.preprocessing({"image": item["image"]})["image"]
            label = _label_on_grid(item["label"], image, net.num_classes, False)
            x, _ = network_inputs(image.as_tensor().float(), dims, net.spatial_dim)
            y = network_inputs(label[None], dims, net.spatial_dim)[0][:, 0]
            inputs.append((x, y))
        slices = sum(x.shape[0] for x, _ in inputs)
        shape = list(inputs[0][0].shape[1:])
        print(f"{len(inputs)} scan(s), {slices} slices of {shape}, batches of {args.batch}, "
              f"{torch.get_num_threads()} thread(s), network {type(net.network).__name__}")  # fmt: skip

        def batches():
            for x, y in inputs:
                for start in range(0, x.shape[0], args.batch):
                    yield x[start : start + args.batch], y[start : start + args.batch]

        def plain() -> None:
            with torch.no_grad():
                for x, _ in batches():
                    net.network(x)

        def report() -> None:
            routing = RoutingReport(net.network, net.num_classes, net.class_names)
            with torch.no_grad():
                for x, y in batches():
                    routing.run(x, label=y)

        def literal() -> None:
            routing = RoutingReport(net.network, net.num_classes, net.class_names)
            with torch.no_grad():
                for x, y in batches():
                    with capture_attention(net.network) as weights:
                        out = net.network(x)
                    routing.update(weights, {"prediction": predicted_classes(out), "label": y})

        runs: Dict[str, Callable[[], None]] = {"plain": plain, "report": report, "report (literal weights)": literal}
        wall: Dict[str, List[float]] = {name: [] for name in runs}
        cpu: Dict[str, List[float]] = {name: [] for name in runs}
        plain()  # warm-up
        for _ in range(args.repeats):
            for name, run in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        ratios = {}
        for label, times in (("wall", wall), ("cpu", cpu)):
            base = statistics.median(times["plain"])
            for name, values in times.items():
                median = statistics.median(values)
                print(f"{label:<4} {name:<26} {median:8.2f} s  ({median / slices * 1000:7.1f} ms/slice)  "
                      f"{median / base:5.2f} x plain")  # fmt: skip
            ratios[label] = statistics.median(times["report"]) / base
        verdict = "met" if min(ratios.values()) <= 1.5 else "NOT met"
        print(f"target: report <= 1.5 x plain inference: {verdict} (wall {ratios['wall']:.2f} x, "
              f"process CPU time {ratios['cpu']:.2f} x)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
