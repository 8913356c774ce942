"""End-of-run report of the 2D binary bundles' evaluation: per-image Dice and IoU at the original image size."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_dice, compute_iou

from xattnres_monai.networks.sizes import count_flops
from xattnres_monai.networks.utils import count_parameters
from xattnres_monai.utils.files import as_bool, atomic_write, check_writable, write_csv_atomic

__all__ = ["BinarySegmentationReport"]

logger = logging.getLogger(__name__)

REPORT_FILES = ("per_image.csv", "summary.csv", "summary.md")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class BinarySegmentationReport:
    """Per-image Dice and IoU of a binary segmentation run, the means over images, and the network's size.

    On every iteration the thresholded prediction (inverted to the image's original size) is compared
    with the ground-truth mask of the input batch (loaded at its original size, never resized). An image
    whose mask and prediction are both empty scores Dice 1 and IoU 1 (MONAI's ``ignore_empty=False``).
    At completion ``per_image.csv``, ``summary.csv`` and ``summary.md`` are written atomically to
    ``output_dir`` and the summary is printed, with the parameter count and the forward FLOPs
    (``torch.utils.flop_counter``, one multiply-add = 2 FLOPs) of the network at ``flops_input_shape``,
    as in the paper's Table 2.

    Args:
        output_dir: folder of the reports.
        flops_input_shape: input shape of the FLOPs count, e.g. ``[1, 3, 352, 352]`` (``None``: not counted).
        pred_key: item key of the binary prediction ``(1, H, W)``.
        label_key: item key of the binary ground truth ``(1, H, W)`` in the input batch.
        overwrite: replace existing reports.
    """

    def __init__(
        self,
        output_dir: str,
        flops_input_shape: Optional[Sequence[int]] = (1, 3, 352, 352),
        pred_key: str = "pred",
        label_key: str = "label",
        overwrite: bool = False,
    ) -> None:
        from xattnres_monai.utils.options import as_int_sequence  # options as a command line passes them

        if isinstance(flops_input_shape, (list, tuple)) and not flops_input_shape:
            flops_input_shape = None
        if flops_input_shape is not None:
            flops_input_shape = as_int_sequence(
                flops_input_shape, "BinarySegmentationReport: flops_input_shape", min=1, min_length=3
            )
        overwrite = as_bool(overwrite, "BinarySegmentationReport: overwrite")
        self.output_dir = Path(output_dir)
        self.flops_input_shape = tuple(flops_input_shape) if flops_input_shape else None
        self.pred_key = pred_key
        self.label_key = label_key
        self.overwrite = as_bool(overwrite, "overwrite")
        self.rows: List[Dict[str, object]] = []

    def attach(self, engine: Engine) -> None:
        check_writable([self.output_dir / name for name in REPORT_FILES], overwrite=self.overwrite)
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        for item, source in zip(engine.state.output, engine.state.batch):
            label = source[self.label_key]
            label_file = str(label.meta.get("filename_or_obj", "")) if hasattr(label, "meta") else ""
            image = source["image"]
            image_file = str(image.meta.get("filename_or_obj", "")) if hasattr(image, "meta") else ""
            pred = torch.as_tensor(item[self.pred_key]).cpu().float()
            label = torch.as_tensor(label).cpu().float()
            if pred.shape != label.shape:
                raise ValueError(f"{label_file}: prediction shape {tuple(pred.shape)} != mask shape {tuple(label.shape)}")
            pred, label = (pred > 0.5).float()[None], (label > 0.5).float()[None]
            dice = float(compute_dice(pred, label, include_background=True, ignore_empty=False)[0, 0])
            iou = float(compute_iou(pred, label, include_background=True, ignore_empty=False)[0, 0])
            self.rows.append(
                {"image": image_file, "label": label_file, "height": label.shape[-2], "width": label.shape[-1],
                 "dice": dice, "iou": iou}
            )

    def summary(self, network: Optional[torch.nn.Module]) -> Dict[str, object]:
        """Means over the collected images, and the network's parameters and FLOPs."""
        summary: Dict[str, object] = {
            "images": len(self.rows),
            "mean_dice": _mean([float(r["dice"]) for r in self.rows]),
            "mean_iou": _mean([float(r["iou"]) for r in self.rows]),
            "threshold": 0.5,
        }
        if network is not None:
            module = getattr(network, "module", network)  # DistributedDataParallel
            summary["params"] = count_parameters(module)
            if self.flops_input_shape is not None:
                summary["flops_input_shape"] = "x".join(str(s) for s in self.flops_input_shape)
                summary["gflops"] = count_flops(module, self.flops_input_shape) / 1e9
        return summary

    def write(self, engine: Engine) -> None:
        summary = self.summary(getattr(engine, "network", None))
        write_csv_atomic(self.output_dir / "per_image.csv", self.rows, overwrite=self.overwrite)
        write_csv_atomic(self.output_dir / "summary.csv", [summary], overwrite=self.overwrite)
        table = "\n".join(
            ["| " + " | ".join(summary) + " |", "|" + "---|" * len(summary)]
            + ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in summary.values()) + " |"]
        )
        with atomic_write(self.output_dir / "summary.md", overwrite=self.overwrite) as tmp:
            tmp.write_text(
                "Per-image Dice and IoU at the original image size (threshold 0.5), mean over images; "
                "FLOPs by torch.utils.flop_counter (1 multiply-add = 2 FLOPs).\n\n" + table + "\n"
            )
        print(table, flush=True)
        logger.info(f"evaluation reports written to {self.output_dir}")
