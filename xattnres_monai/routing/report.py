"""See the learned routing: where every XAttnRes block puts its weight, overall, per organ, at boundaries.

:class:`RoutingReport` accumulates, over forward passes of a network with XAttnRes blocks, the mean attention weight
of every block on every entry of its pool (Eq. 7 of arXiv 2604.03297; entries and blocks named by stage, see
:mod:`xattnres_monai.routing.layout`), and the mean normalised entropy of the weights
(:mod:`xattnres_monai.routing.entropy`):

- over all positions (``source="all"``, ``region="all"``);
- per class region, from a label map per source: ``"prediction"`` (the network's own argmax, or ``logit > 0`` for
  one output channel) and ``"label"`` (a ground truth, when given). The label map is resized to each block's
  resolution with nearest-neighbour interpolation; region ``"class:<name>"``;
- near boundaries and in interiors: at each block's resolution, a position is on a boundary when a different class
  lies within ``k = boundary_width`` positions of it (in its ``(2k+1)^d`` neighbourhood, i.e. the max- and min-pooled
  class maps differ there: the dilation and erosion of the class regions disagree); ``"boundary"``, and
  ``"interior"`` for the others. Positions outside the image do not count (an organ touching the image edge has no
  boundary there).

Weights come from :func:`~xattnres_monai.routing.capture.capture_routing` (forward hooks: eager networks only; the
scripted / exported path never runs the report). Sums are kept in float64, so means over many scans stay exact.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xattnres_monai.metrics.segmentation import class_names_for
from xattnres_monai.routing.capture import capture_routing
from xattnres_monai.routing.entropy import attention_entropy
from xattnres_monai.routing.layout import BlockLayout, entry_columns, routing_layout, topology_matrix, unwrap
from xattnres_monai.utils.files import write_csv_atomic, write_json_atomic
from xattnres_monai.visualize.routing import entropy_figure, routing_heatmap_figure
from xattnres_monai.visualize.scan_figure import write_png

__all__ = ["ALL", "BOUNDARY", "INTERIOR", "REPORT_FILES", "RoutingReport", "predicted_classes"]

PathLike = Union[str, "os.PathLike[str]"]

#: the source and region of the statistics over all positions.
ALL = "all"
#: the boundary and interior regions.
BOUNDARY, INTERIOR = "boundary", "interior"
#: the files :meth:`RoutingReport.write` writes into its output folder.
REPORT_FILES = {
    "csv": "routing_report.csv",
    "json": "routing_report.json",
    "heatmap": "routing_heatmap.png",
    "entropy": "routing_entropy.png",
}


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """The class map ``(B, *S)`` of network outputs ``(B, C, *S)``: argmax, or ``logit > 0`` for one channel.

    The argmax runs as ``C - 1`` element-wise comparisons (the first maximum wins, as ``torch.argmax``), several
    times faster on CPU than a reduction along ``dim=1``.

    Example::

        >>> predicted_classes(torch.tensor([[[[-1.0, 2.0]]]])).tolist()
        [[[0, 1]]]
    """
    if isinstance(logits, (list, tuple)):  # deep supervision heads: the finest one
        logits = logits[-1]
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    best = logits[:, 0].clone()
    classes = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        classes.masked_fill_(better, c)
        torch.maximum(best, logits[:, c], out=best)
    return classes


class _Sums:
    """Per region: sum of the weights per entry, sum of the entropy, number of positions (float64, on the CPU)."""

    def __init__(self, regions: int, entries: int) -> None:
        self.weights = torch.zeros(regions, entries, dtype=torch.float64)
        self.entropy = torch.zeros(regions, dtype=torch.float64)
        self.positions = torch.zeros(regions, dtype=torch.float64)

    def add(self, weights: torch.Tensor, entropy: torch.Tensor, positions: torch.Tensor) -> None:
        self.weights += weights.detach().double().cpu()
        self.entropy += entropy.detach().double().cpu()
        self.positions += positions.detach().double().cpu()

    def means(self, region: int) -> Tuple[np.ndarray, float, int]:
        """Mean weight per entry, mean entropy and positions of ``region`` (NaN means without positions)."""
        count = float(self.positions[region])
        if count <= 0:
            return np.full(self.weights.shape[1], np.nan), float("nan"), 0
        return (self.weights[region] / count).numpy(), float(self.entropy[region] / count), int(count)


class RoutingReport:
    """The learned routing of a network with XAttnRes blocks, accumulated over forward passes (module docstring).

    Use :meth:`run` (forward pass, prediction regions and accumulation in one call), or capture the weights yourself
    with :func:`~xattnres_monai.routing.capture.capture_routing` (or
    :func:`~xattnres_monai.networks.utils.capture_attention`) and give them to :meth:`update`. :meth:`write` writes
    the CSV, JSON, heatmap and entropy pictures.

    Args:
        network: an :class:`~xattnres_monai.networks.nets.XAttnResUNet` (2D or 3D), an
            :class:`~xattnres_monai.networks.nets.EMCADNet` with ``xattnres=True``, or any network with XAttnRes
            blocks (a ``DataParallel`` wrapper is looked through).
        num_classes: classes including the background (default: ``len(class_names)``, else the network's
            ``out_channels``, 2 for one output channel).
        class_names: class names by index, background first (default: those of
            :func:`~xattnres_monai.metrics.segmentation.class_names_for`).
        boundary_width: ``k``: a position within ``k`` positions of another class, at the block's resolution, is on
            a boundary.

    Example::

        >>> net = XAttnResUNet(2, 1, 3).eval()
        >>> report = RoutingReport(net, boundary_width=1)
        >>> with torch.no_grad():
        ...     logits = report.run(torch.randn(2, 1, 64, 64), label=torch.randint(0, 3, (2, 64, 64)))
        >>> round(report.mean_weights()["d4"]["e1"], 4)  # a fresh network weighs its 9 entries equally
        0.1111
        >>> report.write("routing_out")  # doctest: +SKIP
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: Optional[int] = None,
        class_names: Optional[Sequence[str]] = None,
        boundary_width: int = 1,
    ) -> None:
        self.network = unwrap(network)
        self.layouts: List[BlockLayout] = routing_layout(self.network)
        self.columns: List[str] = entry_columns(self.layouts)
        if num_classes is None:
            out = getattr(self.network, "out_channels", None)
            num_classes = len(class_names) if class_names else (max(2, int(out)) if out else 2)
        self.num_classes = max(2, int(num_classes))
        self.class_names = class_names_for(self.num_classes, class_names)
        self.boundary_width = int(boundary_width)
        if self.boundary_width < 1:
            raise ValueError(f"RoutingReport: boundary_width must be >= 1, got {boundary_width}")
        self.reset()

    # ------------------------------------------------------------------------------------------------- accumulating

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._all: Dict[str, _Sums] = {b.name: _Sums(1, len(b.entries)) for b in self.layouts}
        self._regions: Dict[str, Dict[str, _Sums]] = {}
        self._resolutions: Dict[str, List[int]] = {}
        self.images = 0  # network inputs seen (batch items)

    @property
    def blocks(self) -> List[str]:
        """Block names in forward order."""
        return [b.name for b in self.layouts]

    @property
    def sources(self) -> List[str]:
        """The region sources seen so far (``"prediction"``, ``"label"``), in order of first appearance."""
        return list(self._regions)

    @property
    def regions(self) -> List[str]:
        """The region names of a source: ``"class:<name>"`` per class, then ``"boundary"``, ``"interior"``."""
        return [f"class:{n}" for n in self.class_names] + [BOUNDARY, INTERIOR]

    def _region_index(self, labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Per position of a ``(B, *spatial)`` class map resized to ``size``: ``class + C * on_boundary``, flat.

        A position is on a boundary when the classes within ``boundary_width`` positions (the window maximum and
        minimum of the class map; positions outside the image never count) are not all its own.
        """
        classes = labels[:, None].float()
        if list(labels.shape[1:]) != list(size):
            classes = F.interpolate(classes, size=list(size), mode="nearest")
        classes = classes[:, 0].to(torch.uint8 if self.num_classes <= 256 else torch.int32)
        highest = _window_extreme(classes, self.boundary_width, torch.maximum)
        lowest = _window_extreme(classes, self.boundary_width, torch.minimum)
        boundary = (highest != lowest).long()
        return (classes.long() + self.num_classes * boundary).flatten()

    def _check_labels(self, name: str, labels: Any, batch: int, dims: int) -> torch.Tensor:
        """``labels`` as a ``(B, *spatial)`` long tensor of classes ``0..num_classes-1``, else a ``ValueError``."""
        labels = torch.as_tensor(labels.as_tensor() if hasattr(labels, "as_tensor") else labels)
        if labels.dim() == dims + 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape[0] != batch or labels.dim() != dims + 1:
            raise ValueError(
                f"RoutingReport: {name} labels of shape {list(labels.shape)} for a batch of {batch} "
                f"{dims}D inputs (expected (B, *spatial) or (B, 1, *spatial))"
            )
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise ValueError(f"RoutingReport: {name} labels are not integers (give a label map, not probabilities)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"RoutingReport: {name} labels hold values {int(labels.min())}..{int(labels.max())}, outside the "
                f"classes 0..{self.num_classes - 1}"
            )
        return labels.long()

    def update(self, weights: Mapping[str, torch.Tensor], regions: Optional[Mapping[str, Any]] = None) -> None:
        """Accumulate the weights of one forward pass.

        Args:
            weights: block -> weights ``(B, K+1, *S)``, keyed by stage name (:func:`capture_routing`) or by module
                name (:func:`~xattnres_monai.networks.utils.capture_attention`); every block must be there.
            regions: source name -> class map ``(B, *spatial)`` (or ``(B, 1, *spatial)``) at the network input's
                resolution (any resolution: it is resized to each block's with nearest neighbour); ``None`` values
                are skipped.

        Raises:
            ValueError: a missing block, weights of the wrong number of entries, labels of the wrong shape or outside
                ``0..num_classes-1``.
        """
        by_module = {b.module: b.name for b in self.layouts}
        named = {by_module.get(k, k): v for k, v in weights.items()}
        missing = [b.name for b in self.layouts if b.name not in named]
        if missing:
            raise ValueError(f"RoutingReport: no weights for block(s) {missing} (got {sorted(weights)})")
        first = named[self.layouts[0].name]
        batch, dims = int(first.shape[0]), first.dim() - 2
        checked = {k: self._check_labels(k, v, batch, dims) for k, v in (regions or {}).items() if v is not None}
        index_cache: Dict[Tuple[str, Tuple[int, ...]], torch.Tensor] = {}
        bins = 2 * self.num_classes  # class c inside: c, on a boundary: C + c
        for layout in self.layouts:
            w = named[layout.name].detach()
            if w.shape[1] != len(layout.entries) or w.shape[0] != batch:
                raise ValueError(
                    f"RoutingReport: block {layout.name} weights {list(w.shape)}: expected ({batch}, "
                    f"{len(layout.entries)}, ...)"
                )
            w = w.float()
            size = list(w.shape[2:])
            self._resolutions[layout.name] = size
            entropy = attention_entropy(w)
            entries = w.shape[1]
            if not checked:
                sum_dims = [0] + list(range(2, w.dim()))
                self._all[layout.name].add(w.sum(dim=sum_dims, dtype=torch.float64)[None],
                                           entropy.sum(dtype=torch.float64)[None],
                                           torch.tensor([float(entropy.numel())]))  # fmt: skip
                continue
            # the weights and the entropy per position as float64 rows (sums over a whole scan stay exact)
            values = torch.empty(entries + 1, entropy.numel(), dtype=torch.float64, device=w.device)
            values[:entries].view(entries, batch, -1).copy_(w.transpose(0, 1).flatten(2))
            values[entries].copy_(entropy.flatten())
            for k, (source, labels) in enumerate(checked.items()):
                key = (source, tuple(size))
                if key not in index_cache:
                    index_cache[key] = self._region_index(labels.to(w.device), size)
                index = index_cache[key]
                sums = torch.stack([torch.bincount(index, weights=row, minlength=bins) for row in values], dim=1)
                counts = torch.bincount(index, minlength=bins).double()
                inside, edge = sums[: self.num_classes], sums[self.num_classes :]
                regions = torch.cat([inside + edge, edge.sum(dim=0, keepdim=True), inside.sum(dim=0, keepdim=True)])
                positions = torch.cat([counts[: self.num_classes] + counts[self.num_classes :],
                                       counts[self.num_classes :].sum()[None], counts[: self.num_classes].sum()[None]])
                table = self._regions.setdefault(source, {})
                if layout.name not in table:
                    table[layout.name] = _Sums(len(self.regions), entries)
                table[layout.name].add(regions[:, :-1], regions[:, -1], positions)
                if k == 0:  # the classes partition the positions: their total is the overall sum
                    total = sums.sum(dim=0)
                    self._all[layout.name].add(total[None, :-1], total[-1:], counts.sum()[None])
        self.images += batch

    def run(self, x: torch.Tensor, label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the network on ``x`` and accumulate its routing, with the prediction (and ``label``) as regions.

        Call it under ``torch.no_grad()`` in eval mode, as inference runs. Returns the network's output (the finest
        head of a deep-supervision list).

        Args:
            x: the network input ``(B, C, *S)``.
            label: the ground-truth class map ``(B, *S)`` / ``(B, 1, *S)`` (``None``: prediction regions only).
        """
        with capture_routing(self.network, self.layouts) as weights:
            output = self.network(x)
        if isinstance(output, (list, tuple)):
            output = output[-1]
        self.update(weights, {"prediction": predicted_classes(output), "label": label})
        return output

    # ------------------------------------------------------------------------------------------------------ reading

    def _sums(self, source: str, region: str) -> Tuple[Dict[str, _Sums], int]:
        if source == ALL:
            if region != ALL:
                raise ValueError(f"RoutingReport: source 'all' has only region 'all', not {region!r}")
            return self._all, 0
        if region not in self.regions:
            raise ValueError(f"RoutingReport: unknown region {region!r} (one of {self.regions})")
        return self._regions.get(source, {}), self.regions.index(region)

    def mean_weights(self, source: str = ALL, region: str = ALL) -> Dict[str, Dict[str, float]]:
        """Block -> entry -> mean weight over the positions of ``region`` (NaN: no position seen).

        Args:
            source: ``"all"``, ``"prediction"`` or ``"label"``.
            region: ``"all"`` (with source ``"all"``), ``"class:<name>"``, ``"boundary"`` or ``"interior"``.
        """
        table, index = self._sums(source, region)
        result = {}
        for layout in self.layouts:
            sums = table.get(layout.name)
            means = sums.means(index)[0] if sums is not None else np.full(len(layout.entries), np.nan)
            result[layout.name] = {e: float(v) for e, v in zip(layout.entries, means)}
        return result

    def mean_entropy(self, source: str = ALL, region: str = ALL) -> Dict[str, float]:
        """Block -> mean normalised entropy of the weights over the positions of ``region`` (1: uniform)."""
        table, index = self._sums(source, region)
        return {b.name: (table[b.name].means(index)[1] if b.name in table else float("nan")) for b in self.layouts}

    def positions(self, source: str = ALL, region: str = ALL) -> Dict[str, int]:
        """Block -> number of positions (at the block's resolution) accumulated in ``region``."""
        table, index = self._sums(source, region)
        return {b.name: (table[b.name].means(index)[2] if b.name in table else 0) for b in self.layouts}

    def matrix(self, source: str = ALL, region: str = ALL) -> np.ndarray:
        """The block x entry matrix of mean weights (rows :attr:`blocks`, columns :attr:`columns`; NaN outside a
        block's pool or without positions)."""
        weights = self.mean_weights(source, region)
        matrix = np.full((len(self.layouts), len(self.columns)), np.nan)
        for r, layout in enumerate(self.layouts):
            for c, entry in enumerate(self.columns):
                if entry in weights[layout.name]:
                    matrix[r, c] = weights[layout.name][entry]
        return matrix

    def topology(self) -> np.ndarray:
        """The fixed topology of the plain network as the same matrix as :meth:`matrix` (1 connected, 0 not)."""
        return topology_matrix(self.layouts, self.columns)

    def rows(self) -> List[Dict[str, Any]]:
        """The CSV rows: one per block, source and region, with ``positions``, ``entropy`` and one column per entry
        (empty where the entry is not in the block's pool or the region has no position)."""
        keys = [(ALL, ALL)] + [(s, r) for s in self.sources for r in self.regions]
        rows = []
        for source, region in keys:
            weights = self.mean_weights(source, region)
            entropy = self.mean_entropy(source, region)
            positions = self.positions(source, region)
            for block in self.blocks:
                row: Dict[str, Any] = {"block": block, "source": source, "region": region,
                                       "positions": positions[block], "entropy": _cell(entropy[block])}  # fmt: skip
                row.update({e: _cell(weights[block].get(e, float("nan"))) for e in self.columns})
                rows.append(row)
        return rows

    def to_dict(self) -> Dict[str, Any]:
        """Everything as JSON-ready data (NaN as ``null``); the inverse of nothing: it is a report, not a state."""
        topology = self.topology()
        blocks = []
        for r, layout in enumerate(self.layouts):
            entry: Dict[str, Any] = {
                "block": layout.name,
                "module": layout.module,
                "entries": list(layout.entries),
                "resolution": self._resolutions.get(layout.name),
                "positions": self.positions()[layout.name],
                "mean_weight": _clean(self.mean_weights()[layout.name]),
                "entropy": _clean(self.mean_entropy()[layout.name]),
                "fixed_topology": [e for c, e in enumerate(self.columns) if topology[r, c] == 1.0],
                "regions": {},
            }
            for source in self.sources:
                entry["regions"][source] = {
                    region: {
                        "positions": self.positions(source, region)[layout.name],
                        "entropy": _clean(self.mean_entropy(source, region)[layout.name]),
                        "mean_weight": _clean(self.mean_weights(source, region)[layout.name]),
                    }
                    for region in self.regions
                }
            blocks.append(entry)
        return {
            "network": type(self.network).__name__,
            "images": self.images,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "boundary_width": self.boundary_width,
            "entries": list(self.columns),
            "sources": self.sources,
            "blocks": blocks,
        }

    # ------------------------------------------------------------------------------------------------------ writing

    def write(self, output_dir: PathLike, overwrite: bool = False, title: Optional[str] = None) -> Dict[str, Path]:
        """Write :data:`REPORT_FILES` into ``output_dir`` (created), each atomically.

        - ``routing_report.csv``: :meth:`rows`;
        - ``routing_report.json``: :meth:`to_dict`;
        - ``routing_heatmap.png``: the block x entry mean weights beside the fixed topology
          (:func:`~xattnres_monai.visualize.routing.routing_heatmap_figure`, 1800 x 800 pixels);
        - ``routing_entropy.png``: the mean normalised entropy per block over all positions, and at boundaries and in
          interiors of the first source when there is one (:func:`~xattnres_monai.visualize.routing.entropy_figure`,
          1000 x 600 pixels).

        Args:
            output_dir: the folder.
            overwrite: replace existing files (else :class:`FileExistsError` before anything is written).
            title: the pictures' title (default: the network and the number of inputs).

        Returns:
            ``{"csv": path, "json": path, "heatmap": path, "entropy": path}``.
        """
        if self.images == 0:
            raise ValueError("RoutingReport: nothing accumulated yet (run the network first)")
        paths = {k: Path(output_dir) / name for k, name in REPORT_FILES.items()}
        existing = [str(p) for p in paths.values() if os.path.lexists(p)]
        if existing and not overwrite:
            raise FileExistsError(17, "already exists (pass overwrite=True / --overwrite to replace it)", existing[0])
        title = title or f"{type(self.network).__name__}: learned XAttnRes routing over {self.images} input(s)"
        write_csv_atomic(paths["csv"], self.rows(), fieldnames=["block", "source", "region", "positions", "entropy"]
                         + self.columns, overwrite=overwrite)  # fmt: skip
        write_json_atomic(paths["json"], self.to_dict(), overwrite=overwrite, allow_nan=False)
        write_png(paths["heatmap"], routing_heatmap_figure(self.matrix(), self.blocks, self.columns, self.topology(),
                                                           title=title), overwrite=overwrite)  # fmt: skip
        series = {"all positions": self.mean_entropy()}
        if self.sources:
            source = self.sources[-1] if "label" in self.sources else self.sources[0]
            series[f"boundaries ({source})"] = self.mean_entropy(source, BOUNDARY)
            series[f"interiors ({source})"] = self.mean_entropy(source, INTERIOR)
        write_png(paths["entropy"], entropy_figure(series, title=f"{title}: entropy"), overwrite=overwrite)
        return paths


def _window_extreme(x: torch.Tensor, k: int, pick: Any) -> torch.Tensor:
    """The maximum (``pick=torch.maximum``) or minimum of ``x`` ``(B, *S)`` over the ``(2k+1)^d`` window around each
    position, inside the array, one axis at a time (shifted slices: an order of magnitude faster on CPU than
    pooling)."""
    for axis in range(1, x.dim()):
        source, result, n = x, x.clone(), x.shape[axis]
        for shift in range(1, min(k, n - 1) + 1):
            upper = result.narrow(axis, shift, n - shift)
            pick(upper, source.narrow(axis, 0, n - shift), out=upper)
            lower = result.narrow(axis, 0, n - shift)
            pick(lower, source.narrow(axis, shift, n - shift), out=lower)
        x = result
    return x


def _cell(value: float) -> Any:
    """A CSV cell: the value rounded to 8 decimals, empty for NaN."""
    return "" if value is None or not math.isfinite(value) else round(float(value), 8)


def _clean(value: Any) -> Any:
    """NaN -> ``None`` in floats and dicts of floats (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
