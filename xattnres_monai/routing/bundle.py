"""The routing report of a trained bundle on scans: what ``python -m xattnres_monai routing`` runs.

:func:`run_routing_report` reads the bundle's inference config with MONAI's ``ConfigParser`` and uses its parts as
inference does: ``network_def`` (the trained network), ``preprocessing`` (loading, orientation, intensity window,
resizing) and the ``CheckpointLoader`` handler's ``load_path`` and ``settings`` (``models/model.pt``, loaded with
:func:`~xattnres_monai.handlers.resume.load_checkpoint`, its recorded settings compared with the config's by
:func:`~xattnres_monai.bundle.check_settings`, then loaded strictly). It then runs the network in eval mode:

- a 2D network on a volume: axial slices (along the bundle inferer's ``spatial_dim``, the last axis by default), as
  the bundle's ``SliceInferer`` does; the preprocessing has already resized them to ``roi_size`` in-plane, so each
  whole slice is one network input (batches of ``batch_size`` slices);
- a network on an input of its own dimension (a photo for the 2D image bundles, a volume for a 3D network): the
  whole preprocessed input when it has the config's ``roi_size``, else ``roi_size`` tiles of it (the windows of the
  bundle's sliding-window inferer, without overlap: see :func:`network_inputs`).

No test-time augmentation or ensembling (one model, plain forward passes). The class regions come from the
prediction (argmax; ``logit > 0`` for one output channel) and, when a labelled datalist is given, from the ground
truth, brought onto the preprocessed grid (a volume: resampled onto the preprocessed image's grid, nearest
neighbour, from both affines; a 2D mask: nearest-neighbour resized to the image's shape).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from xattnres_monai.routing.capture import capture_routing
from xattnres_monai.routing.layout import INPUT, spatial_dims_of
from xattnres_monai.routing.report import RoutingReport, predicted_classes
from xattnres_monai.utils.files import InputError, find_user_error, raise_if_any

__all__ = ["BundleNetwork", "Place", "load_bundle_network", "network_inputs", "run_routing_report", "scan_list"]

logger = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
_NIFTI = (".nii.gz", ".nii")
_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ------------------------------------------------------------------------------------------------------- the bundle


class BundleNetwork:
    """The trained network of a bundle and the parts of its inference config that the report uses.

    Attributes:
        network: the network with the bundle's weights, in eval mode, on ``device``.
        preprocessing: the config's ``preprocessing`` transform (applied to ``{"image": path}``).
        num_classes: the report's classes (2 for a one-channel binary network).
        class_names: their names, background first.
        spatial_dim: the axis (of the spatial axes) a 2D network slices a volume along.
        roi_size: the config's ``roi_size`` (``None``: none), the tile size of inputs of the network's dimension.
        checkpoint: the weights file.
    """

    def __init__(self, network: nn.Module, preprocessing: Any, num_classes: int, class_names: List[str],
                 spatial_dim: int, roi_size: Optional[List[int]], checkpoint: str,
                 device: torch.device) -> None:  # fmt: skip
        self.network = network
        self.preprocessing = preprocessing
        self.num_classes = num_classes
        self.class_names = class_names
        self.spatial_dim = spatial_dim
        self.roi_size = roi_size
        self.checkpoint = checkpoint
        self.device = device


def _parser(config_file: Union[PathLike, Sequence[PathLike]], bundle_root: PathLike, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(f) for f in config_file]
    for f in files:
        if not os.path.isfile(f):
            raise InputError(f, "bundle config file does not exist")
    parser = ConfigParser()
    parser.read_config(files if len(files) > 1 else files[0])
    parser["bundle_root"] = str(bundle_root)
    for key, value in dict(overrides or {}).items():
        parser[key] = value
    return parser


def _checkpoint_handler(parser: Any) -> Optional[str]:
    """The config id of the ``CheckpointLoader`` among the ``handlers`` (``None``: none)."""
    for key in ("handlers", "val_handlers"):
        handlers = parser.get(key)
        if not isinstance(handlers, list):
            continue
        for i, handler in enumerate(handlers):
            if isinstance(handler, dict) and str(handler.get("_target_", "")).endswith("CheckpointLoader"):
                return f"{key}#{i}"
    return None


def _class_names(parser: Any, out_channels: int) -> Tuple[int, List[str]]:
    from xattnres_monai.metrics.segmentation import class_names_for

    num_classes = int(parser.get_parsed_content("num_classes")) if "num_classes" in parser else out_channels
    names = parser.get_parsed_content("class_names") if "class_names" in parser else None
    if num_classes == 1:  # one sigmoid channel: background and foreground
        return 2, [str(n) for n in names] if names and len(names) == 2 else ["background", "foreground"]
    return num_classes, class_names_for(num_classes, names)


def load_bundle_network(
    config_file: Union[PathLike, Sequence[PathLike]],
    bundle_root: PathLike,
    device: Optional[Union[str, torch.device]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> BundleNetwork:
    """The bundle's network with its checked, strictly loaded weights (module docstring), and its preprocessing.

    Args:
        config_file: the inference config (or several, merged in order as ``monai.bundle run`` merges them).
        bundle_root: the bundle folder (the config's ``bundle_root``).
        device: where to run (default: CUDA when available, else the CPU).
        overrides: config overrides (``{"roi_size": [96, 96]}`` ...).

    Raises:
        InputError: a missing or unreadable checkpoint, settings that differ from the config's, or weights of
            another network configuration.

    Example::

        >>> root = "demo_output/synapse_bundle"
        >>> bundle = load_bundle_network(f"{root}/configs/inference.json", root)
        >>> type(bundle.network).__name__
        'XAttnResUNet'
    """
    from xattnres_monai.bundle.settings import SETTINGS_KEY, check_settings
    from xattnres_monai.handlers.resume import load_checkpoint
    from xattnres_monai.networks.utils import state_dict_mismatch

    parser = _parser(config_file, bundle_root, overrides or {})
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    network = parser.get_parsed_content("network_def")
    handler = _checkpoint_handler(parser)
    if handler is not None:
        path = str(parser.get_parsed_content(f"{handler}#load_path"))
        settings = parser.get_parsed_content(f"{handler}#settings") if f"{handler}#settings" in parser else None
    else:
        path = os.path.join(str(bundle_root), "models", "model.pt")
        settings = parser.get_parsed_content("trained_settings") if "trained_settings" in parser else None
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, Mapping) and SETTINGS_KEY in checkpoint:
        check_settings(path, checkpoint[SETTINGS_KEY], settings)
    state = checkpoint["model"] if isinstance(checkpoint, Mapping) and "model" in checkpoint else checkpoint
    mismatch = state_dict_mismatch(network, state)
    if mismatch:
        raise InputError(path, f"does not match this network configuration: {mismatch}")
    network.load_state_dict(state, strict=True)
    network = network.to(device).eval()
    num_classes, names = _class_names(parser, int(getattr(network, "out_channels", 2)))
    spatial_dim = 2
    for key in ("inferer#inferer#spatial_dim", "inferer#spatial_dim"):
        if key in parser:
            spatial_dim = int(parser.get_parsed_content(key))
            break
    roi_size = [int(r) for r in parser.get_parsed_content("roi_size")] if "roi_size" in parser else None
    return BundleNetwork(network, parser.get_parsed_content("preprocessing"), num_classes, names, spatial_dim,
                         roi_size, path, device)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- inputs


def scan_list(scans: Union[None, PathLike, Sequence[PathLike]], labels: Optional[PathLike] = None,
              max_scans: Optional[int] = None) -> List[Dict[str, str]]:  # fmt: skip
    """The scans to report on, as ``[{"image": path, "label": path (when known)}]``.

    Args:
        scans: a scan (NIfTI file, 2D image), a DICOM series folder, a folder of scans (NIfTI files, images, DICOM
            series sub-folders), or a list of these; ``None``: the images of ``labels``.
        labels: a datalist JSON (MONAI's ``{"training": [{"image", "label"}], ...}``, every section, or a list of
            items), paths relative to its folder; a scan is matched to its label by path, else by file name.
        max_scans: use the first ``max_scans`` scans only.

    Raises:
        InputError: missing inputs, an empty folder, an unreadable datalist.
    """
    pairs = _datalist_pairs(labels) if labels is not None else []
    if scans is None:
        if not pairs:
            raise InputError(str(labels or "."), "no scans given (pass scans or a datalist with image/label items)")
        items = [dict(p) for p in pairs]
    else:
        listed: List[str] = []
        for source in [scans] if isinstance(scans, (str, os.PathLike)) else list(scans):
            listed += _scans_of(Path(source))
        by_path = {os.path.realpath(p["image"]): p["label"] for p in pairs}
        by_name = {Path(p["image"]).name: p["label"] for p in pairs}
        items = []
        for scan in listed:
            label = by_path.get(os.path.realpath(scan)) or by_name.get(Path(scan).name)
            items.append({"image": scan, **({"label": label} if label else {})})
    if max_scans is not None:
        items = items[: max(0, int(max_scans))]
    if not items:
        raise InputError(str(scans), "no scans to report on")
    return items


def _scans_of(source: Path) -> List[str]:
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file():
        return [str(source.resolve())]
    entries = sorted(e for e in source.iterdir() if not e.name.startswith("."))
    if not entries:
        raise InputError(source, "empty folder")
    found = [str(e.resolve()) for e in entries if e.is_dir() or e.name.lower().endswith(_NIFTI + _IMAGES)]
    return found or [str(source.resolve())]  # only other files: the folder is one DICOM series


def _datalist_pairs(datalist: PathLike) -> List[Dict[str, str]]:
    from xattnres_monai.data.inputs import read_json

    path = Path(datalist)
    content = read_json(path)
    sections = [content] if isinstance(content, list) else [v for v in content.values() if isinstance(v, list)]
    pairs = []
    for section in sections:
        for item in section:
            if isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("label"), str):
                pairs.append({k: os.path.normpath(os.path.join(path.parent, item[k])) for k in ("image", "label")})
    if not pairs:
        raise InputError(path, "datalist lists no items with both 'image' and 'label'")
    return pairs


def _label_on_grid(path: str, image: Any, num_classes: int, binary: bool) -> torch.Tensor:
    """The label map of ``path`` on the grid of the preprocessed ``image`` (module docstring)."""
    from monai.transforms import LoadImage, Resize, ResampleToMatch

    spatial = list(image.shape[1:])
    if path.lower().endswith(_IMAGES):
        label = LoadImage(image_only=True, ensure_channel_first=True, reader="PILReader", reverse_indexing=False)(path)
        label = label[:1]
    else:
        label = LoadImage(image_only=True, ensure_channel_first=True)(path)
        original = getattr(image, "meta", {}).get("spatial_shape")
        if original is not None and list(label.shape[1:]) != [int(s) for s in np.asarray(original).ravel()]:
            raise InputError(path, f"label grid {list(label.shape[1:])} differs from the scan's {list(original)}")
        if len(spatial) == 3 and hasattr(image, "affine"):  # onto the preprocessed grid, from both affines
            label = ResampleToMatch(mode="nearest", padding_mode="zeros")(label.float(), img_dst=image)
    if list(label.shape[1:]) != spatial:
        label = Resize(spatial_size=spatial, mode="nearest")(label)
    label = label[0]
    label = torch.as_tensor(label.as_tensor() if hasattr(label, "as_tensor") else label)
    if binary:
        return (label > 0).long()
    if label.numel() and (float(label.min()) < 0 or float(label.max()) >= num_classes):
        found = f"{float(label.min()):g}..{float(label.max()):g}"
        raise InputError(path, f"label values {found} outside the classes 0..{num_classes - 1}")
    return label.round().long()


def _slice_indices(depth: int, count: Optional[int]) -> List[int]:
    """All slices, or ``count`` evenly spaced ones (centres of ``count`` equal parts)."""
    if count is None or count >= depth:
        return list(range(depth))
    return sorted({int((i + 0.5) * depth / count) for i in range(max(1, int(count)))})


@dataclass(frozen=True)
class Place:
    """Where a network input lies in its preprocessed image: an axial slice, a tile, or the whole image.

    Args:
        slice: the slice index along the slicing axis (2D network on a volume), else ``None``.
        origin: the corner of the tile in the (padded) image, or ``None`` for the whole image / slice.
    """

    slice: Optional[int] = None
    origin: Optional[Tuple[int, ...]] = None

    @property
    def text(self) -> str:
        """Human-readable, e.g. ``"slice 12"``, ``"tile at (0, 96, 0)"``, ``"whole image"``."""
        parts = ([f"slice {self.slice}"] if self.slice is not None else []) + (
            [f"tile at {self.origin}"] if self.origin is not None else [])  # fmt: skip
        return ", ".join(parts) or "whole image"

    @property
    def tag(self) -> str:
        """For file names, e.g. ``"slice012"``, ``"tile0-96-0"``, ``"image"``."""
        parts = ([f"slice{self.slice:03d}"] if self.slice is not None else []) + (
            ["tile" + "-".join(str(o) for o in self.origin)] if self.origin is not None else [])  # fmt: skip
        return "_".join(parts) or "image"


def _tiles(image: torch.Tensor, roi: Sequence[int]) -> Tuple[torch.Tensor, List[Tuple[int, ...]]]:
    """Non-overlapping ``roi``-sized tiles covering ``image`` ``(C, *S)`` (the last one of each axis aligned with the
    end, so it may overlap its neighbour), after zero padding, centred, of the axes shorter than ``roi``."""
    pad: List[int] = []
    for n, r in zip(reversed(image.shape[1:]), reversed(list(roi))):
        extra = max(0, int(r) - int(n))
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        image = torch.nn.functional.pad(image, pad)
    starts = []
    for n, r in zip(image.shape[1:], roi):
        axis = list(range(0, n - r, r)) + [n - r]
        starts.append(sorted(set(axis)))
    origins = [tuple(o) for o in itertools.product(*starts)]
    tiles = [image[(slice(None),) + tuple(slice(o, o + r) for o, r in zip(origin, roi))] for origin in origins]
    return torch.stack(tiles), origins


def network_inputs(image: torch.Tensor, spatial_dims: int, spatial_dim: int = 2, slices: Optional[int] = None,
                   roi_size: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, List[Place]]:  # fmt: skip
    """The network inputs of one preprocessed image ``(C, *spatial)`` and where each lies.

    - A volume for a 2D network gives its slices along ``spatial_dim`` (all, or ``slices`` evenly spaced ones), as
      the bundles' ``SliceInferer`` does; they are whole slices (the 2D bundles resize them to ``roi_size``).
    - An input of the network's own dimension is itself when it has ``roi_size`` (or none is given), else it is cut
      into ``roi_size`` tiles (:func:`_tiles`: the windows of a sliding-window inferer without overlap, zero padding
      where the image is smaller; padded positions then count as background).

    Example::

        >>> x, places = network_inputs(torch.zeros(1, 32, 32, 20), spatial_dims=2, slices=4)
        >>> x.shape, [p.slice for p in places]
        (torch.Size([4, 1, 32, 32]), [2, 7, 12, 17])
        >>> network_inputs(torch.zeros(1, 100, 96, 40), spatial_dims=3, roi_size=[96, 96, 48])[0].shape
        torch.Size([2, 1, 96, 96, 48])
    """
    if image.dim() == spatial_dims + 2:  # a volume for a 2D network: slices
        axis = 1 + int(spatial_dim)
        indices = _slice_indices(image.shape[axis], slices)
        return image.movedim(axis, 0)[indices], [Place(slice=k) for k in indices]
    if image.dim() != spatial_dims + 1:
        raise ValueError(f"routing report: a preprocessed image of shape {list(image.shape)} does not fit a "
                         f"{spatial_dims}D network")  # fmt: skip
    if roi_size is None or [int(r) for r in roi_size] == list(image.shape[1:]):
        return image[None], [Place()]
    roi = [int(r) for r in roi_size]
    if len(roi) != spatial_dims:
        raise ValueError(f"routing report: roi_size {roi} for a {spatial_dims}D network")
    tiles, origins = _tiles(image, roi)
    return tiles, [Place(origin=o) for o in origins]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ---------------------------------------------------------------------------------------------------------- display


def _display(array: np.ndarray, codes: Optional[str]) -> np.ndarray:
    """A slice ``(..., X, Y)`` as displayed: radiological (patient's right on the left, anterior on top) when its
    axes are R/L and A/P, else transposed as is (2D images are given as ``(H, W)`` and shown unchanged)."""
    if codes is None:
        return array
    if codes[0] in "RL" and codes[1] in "AP":
        if codes[0] == "R":
            array = array[..., ::-1, :]
        if codes[1] == "A":
            array = array[..., :, ::-1]
    return np.ascontiguousarray(np.swapaxes(array, -1, -2))


def _write_maps(bundle: BundleNetwork, report: RoutingReport, stem: str, image: torch.Tensor, x: torch.Tensor,
                places: List[Place], chosen: List[int], blocks: Sequence[str], folder: Path,
                overwrite: bool) -> List[Path]:  # fmt: skip
    """Attention-map pictures of the ``chosen`` inputs of ``x`` for ``blocks`` (a 3D input: its axial slice with
    the most predicted foreground, the middle one without)."""
    import nibabel as nib

    from xattnres_monai.visualize.routing import save_attention_maps

    codes = None
    if image.dim() == 4 and hasattr(image, "affine") and (places[0].slice is None or bundle.spatial_dim == 2):
        codes = "".join(nib.aff2axcodes(np.asarray(image.affine)))  # axial slices of an oriented volume
    layouts = {b.name: b for b in report.layouts}
    with torch.no_grad(), capture_routing(bundle.network, report.layouts) as weights:
        output = bundle.network(x[chosen].to(bundle.device))
    prediction = predicted_classes(output[-1] if isinstance(output, (list, tuple)) else output).cpu().numpy()
    written = []
    for row, i in enumerate(chosen):
        grey, labels = x[i].float().mean(dim=0).cpu().numpy(), prediction[row]
        where, tag = places[i].text, places[i].tag
        depth = None
        if grey.ndim == 3:  # a 3D input: one axial slice of it
            counts = (labels > 0).sum(axis=(0, 1))
            middle = (len(counts) - 1) / 2
            depth = sorted(range(len(counts)), key=lambda k: (-counts[k], abs(k - middle)))[0]
            grey, labels = grey[..., depth], labels[..., depth]
            where, tag = f"{where}, axial slice {depth} of it", f"{tag}_z{depth:03d}"
        for block in blocks:
            maps = weights[block][row].float().cpu().numpy()
            if depth is not None:
                maps = maps[..., min(maps.shape[-1] - 1, depth * maps.shape[-1] // x.shape[-1])]
            entries = list(layouts[block].entries)
            title = (f"{stem}, {where} (preprocessed grid): block {block}, weights on {len(entries) - 1} history "
                     f"entries + {INPUT}")  # fmt: skip
            written.append(save_attention_maps(folder / f"{stem}_{tag}_{block}.png", _display(grey, codes),
                                               _display(maps, codes), entries, prediction=_display(labels, codes),
                                               title=title, overwrite=overwrite))  # fmt: skip
    return written


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in _NIFTI + _IMAGES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ------------------------------------------------------------------------------------------------------------- run


def run_routing_report(
    config_file: Union[PathLike, Sequence[PathLike]],
    bundle_root: PathLike,
    scans: Union[None, PathLike, Sequence[PathLike]],
    output_dir: PathLike,
    labels: Optional[PathLike] = None,
    max_scans: Optional[int] = None,
    slices_per_scan: Optional[int] = None,
    maps: int = 0,
    map_blocks: Optional[Sequence[str]] = None,
    boundary_width: int = 1,
    batch_size: int = 16,
    device: Optional[Union[str, torch.device]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> RoutingReport:
    """The routing report of a trained bundle on scans (module docstring), written into ``output_dir``.

    Writes the files of :meth:`RoutingReport.write` (``routing_report.csv`` / ``.json``, ``routing_heatmap.png``,
    ``routing_entropy.png``) and, with ``maps``, attention-map pictures
    ``maps/<scan>_slice<k>_<block>.png`` (:func:`~xattnres_monai.visualize.routing.attention_maps_figure`) of the
    slices with the most predicted foreground.

    Args:
        config_file: the bundle's inference config (``<bundle>/configs/inference.json``), or several to merge.
        bundle_root: the bundle folder.
        scans: a scan, a DICOM series folder, a folder of scans or a list of them (``None``: the images of
            ``labels``); see :func:`scan_list`.
        output_dir: where the report is written (created).
        labels: a datalist with ``image`` / ``label`` items: ground-truth regions for the scans it lists.
        max_scans: report on the first ``max_scans`` scans only.
        slices_per_scan: evenly spaced slices per volume for a 2D network (``None``: every slice).
        maps: number of slices (in all) to draw attention maps for, spread over the scans (0: none).
        map_blocks: the blocks drawn (default: all).
        boundary_width: see :class:`RoutingReport`.
        batch_size: slices per forward pass.
        device: where to run (default: CUDA when available).
        overrides: bundle config overrides.
        overwrite: replace existing report files.

    Raises:
        InputError: bad bundle, checkpoint or inputs; scans that fail to load are reported together at the end
            (an :class:`~xattnres_monai.utils.files.InputErrorGroup`), after the report of the others is written.

    Example::

        >>> report = run_routing_report("bundle/configs/inference.json", "bundle", "data/new_scans", "routing",
        ...                             slices_per_scan=32, maps=4)
        >>> report.mean_weights()["d4"]["e1"]  # doctest: +SKIP
    """
    bundle = load_bundle_network(config_file, bundle_root, device, overrides)
    items = scan_list(scans, labels, max_scans)
    report = RoutingReport(bundle.network, bundle.num_classes, bundle.class_names, boundary_width)
    blocks = list(map_blocks) if map_blocks else report.blocks
    unknown = [b for b in blocks if b not in report.blocks]
    if unknown:
        raise ValueError(f"routing report: unknown block(s) {unknown}; the blocks are {report.blocks}")
    output = Path(output_dir)
    dims = spatial_dims_of(bundle.network)
    per_scan = int(math.ceil(int(maps) / len(items))) if maps else 0
    left = int(maps)
    failures: List[InputError] = []
    for item in items:
        try:
            image = bundle.preprocessing({"image": item["image"]})["image"]
            label = None
            if item.get("label"):
                label = _label_on_grid(item["label"], image, bundle.num_classes, bundle.num_classes == 2
                                       and int(getattr(bundle.network, "out_channels", 2)) == 1)  # fmt: skip
        except Exception as err:  # a scan that cannot be read: reported at the end, the others go on
            user = find_user_error(err)
            if user is None:
                raise
            failures.append(user if isinstance(user, InputError) else InputError(item["image"], str(user)))
            continue
        tensor = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image).float()
        x, places = network_inputs(tensor, dims, bundle.spatial_dim, slices_per_scan, bundle.roi_size)
        y = None
        if label is not None:
            y = network_inputs(label[None].float(), dims, bundle.spatial_dim, slices_per_scan, bundle.roi_size)[0][:, 0]
        foreground = []
        with torch.no_grad():
            for part in _batches(x.shape[0], int(batch_size)):
                target = None if y is None else y[part].to(bundle.device)
                out = report.run(x[part].to(bundle.device), label=target)
                foreground += (predicted_classes(out) > 0).flatten(1).sum(dim=1).tolist()
        if per_scan and left > 0:
            middle = (len(foreground) - 1) / 2  # ties (e.g. no foreground anywhere): the slices nearest the middle
            order = sorted(range(len(foreground)), key=lambda i: (-foreground[i], abs(i - middle)))
            chosen = sorted(order[: min(per_scan, left)])
            left -= len(chosen)
            _write_maps(bundle, report, _stem(item["image"]), image, x, places, chosen, blocks, output / "maps",
                        overwrite)  # fmt: skip
        logger.info(f"{item['image']}: {len(places)} input(s) reported")
    if report.images:
        report.write(output, overwrite=overwrite)
    raise_if_any(failures)
    return report
