"""Scan and photo figures: layout, radiological orientation (checked with nibabel's own code), legend, transform.

How the checks read a figure:

- panel positions and sizes come from the documented layout (:class:`FigureLayout`);
- an organ is found in a panel by its overlay colour: classes are drawn pure red (255, 0, 0) and pure blue
  (0, 0, 255) over grey tissue, so a "reddish" pixel (R > 150, G and B < 110) belongs to class 1 and a "bluish"
  pixel to class 2 (translucent fill over grey gives (172, 58, 58), the outline pure red);
- the legend is found as solid swatches of *exactly* the class colour inside the legend column
  (``FigureLayout.legend_box``): at least ``SWATCH x SWATCH`` pixels of (255, 0, 0) and of (0, 0, 255).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from xattnres_monai.transforms.figures import SaveScanFigured, figure_path_for
from xattnres_monai.utils.files import InputError
from xattnres_monai.visualize import (
    PANEL_SIZE,
    FigureLayout,
    colours_from_channel_def,
    image_figure,
    save_image_figure,
    save_scan_figure,
    scan_figure,
)
from xattnres_monai.visualize.scan_figure import SWATCH

RED, BLUE = (255, 0, 0), (0, 0, 255)
COLOURS = {1: RED, 2: BLUE}
NAMES = ["background", "right organ", "anterior organ"]

# array axis 0 -> posterior (world -y), axis 1 -> patient's left (world -x), axis 2 -> superior: a permuted,
# LPS-like grid of 1.5 x 1.5 x 3 mm voxels
AFFINE = np.array([[0.0, -1.5, 0.0, 30.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 0.0, 3.0, -10.0], [0.0, 0.0, 0.0, 1.0]])
RAS_SHAPE = (40, 40, 16)  # voxels along R, A, S: 60 x 60 x 48 mm


def _phantom():
    """Image (HU) and labels on AFFINE's array grid, built in RAS index space and moved with nibabel."""
    labels = np.zeros(RAS_SHAPE, dtype=np.uint8)
    labels[28:36, 12:22, 3:12] = 1  # on the patient's right (high RAS x)
    labels[14:22, 20:32, 9:15] = 2  # anterior (high y) and superior (high z), near the midline
    image = np.where(labels > 0, 60.0, 40.0).astype(np.float32)
    to_array = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(AFFINE))
    return tuple(np.ascontiguousarray(apply_orientation(a, to_array)) for a in (image, labels))


def _world_centroid(mask: np.ndarray) -> np.ndarray:
    voxels = np.argwhere(mask)
    return (AFFINE @ np.c_[voxels, np.ones(len(voxels))].T).T[:, :3].mean(axis=0)


@pytest.fixture
def scan(tmp_path):
    image, labels = _phantom()
    path = tmp_path / "case0001.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(path))
    return path, labels


def _panel(rgb: np.ndarray, layout: FigureLayout, row: int, column: int) -> np.ndarray:
    left, top, right, bottom = layout.panel_box(row, column)
    return rgb[top:bottom, left:right].astype(int)


def _reddish(panel: np.ndarray) -> np.ndarray:
    return (panel[..., 0] > 150) & (panel[..., 1] < 110) & (panel[..., 2] < 110)


def _bluish(panel: np.ndarray) -> np.ndarray:
    return (panel[..., 2] > 150) & (panel[..., 0] < 110) & (panel[..., 1] < 110)


def _centre(mask: np.ndarray) -> np.ndarray:
    """(row, column) centroid of a pixel mask."""
    assert mask.sum() > 50, "organ not visible in the panel"
    return np.argwhere(mask).mean(axis=0)


def test_phantom_geometry_is_what_the_figure_test_assumes(scan):
    """Independent of the package: nibabel and the affine say the organs are where the tests expect them."""
    path, labels = scan
    loaded = nib.load(str(path))
    assert aff2axcodes(loaded.affine) == ("P", "L", "S")
    centre = _world_centroid(np.ones(labels.shape, dtype=bool))
    right, anterior = _world_centroid(labels == 1), _world_centroid(labels == 2)
    assert right[0] > centre[0] + 5  # RAS world: +x is the patient's right
    assert anterior[1] > centre[1] + 5 and anterior[2] > centre[2] + 5  # anterior and superior


def test_scan_figure_radiological_orientation_layout_legend(scan, tmp_path):
    path, labels = scan
    loaded = nib.load(str(path))
    out = save_scan_figure(tmp_path / "out" / "fig.png", loaded.get_fdata(), labels, loaded.affine, label=labels,
                           class_names=NAMES, colours=COLOURS, title="case0001")  # fmt: skip
    rgb = np.asarray(Image.open(out).convert("RGB"))
    layout = FigureLayout(n_rows=2, n_columns=3)
    assert rgb.shape == (layout.height, layout.width, 3)
    for row in range(2):
        for column in range(3):
            left, top, right, bottom = layout.panel_box(row, column)
            assert right - left >= 512 and bottom - top >= 512
            assert _panel(rgb, layout, row, column).shape[:2] == (PANEL_SIZE, PANEL_SIZE)
    half = PANEL_SIZE / 2
    for column in (1, 2):  # ground truth, prediction
        axial, coronal = _panel(rgb, layout, 0, column), _panel(rgb, layout, 1, column)
        assert _centre(_reddish(axial))[1] < half - 50  # patient's right on the viewer's left
        assert _centre(_bluish(axial))[0] < half - 20  # anterior at the top
        assert _centre(_reddish(coronal))[1] < half - 50  # right on the left in the coronal view too
        assert _centre(_bluish(coronal))[0] < half - 20  # superior at the top
    image_only = _panel(rgb, layout, 0, 0)
    assert not _reddish(image_only).any() and not _bluish(image_only).any()
    # physical aspect ratio: the coronal slice is 60 mm wide and 48 mm high -> 512 x 410 pixels, centred
    coronal_image = _panel(rgb, layout, 1, 0)
    assert abs(int((coronal_image[:, PANEL_SIZE // 4].sum(axis=-1) > 0).sum()) - 410) <= 1
    assert (coronal_image[PANEL_SIZE // 4 * 3, :].sum(axis=-1) > 0).all()
    # legend: solid swatches of exactly each class colour in the legend column
    left, top, right, bottom = layout.legend_box
    legend = rgb[top:bottom, left:right]
    for colour in (RED, BLUE):
        assert np.all(legend == colour, axis=-1).sum() >= SWATCH * SWATCH


def test_scan_figure_without_label_has_one_column_fewer(scan):
    path, labels = scan
    loaded = nib.load(str(path))
    with_label = scan_figure(loaded.get_fdata(), labels, loaded.affine, label=labels)
    without = scan_figure(torch.as_tensor(loaded.get_fdata())[None], torch.as_tensor(labels)[None], loaded.affine)
    assert with_label.shape == (FigureLayout(2, 3).height, FigureLayout(2, 3).width, 3)
    assert without.shape == (FigureLayout(2, 2).height, FigureLayout(2, 2).width, 3)
    assert without.dtype == np.uint8
    # the default palette colours class 1 red as well: still on the viewer's left
    assert _centre(_reddish(_panel(without, FigureLayout(2, 2), 0, 1)))[1] < PANEL_SIZE / 2 - 50


def test_scan_figure_bad_inputs(scan):
    path, labels = scan
    image = nib.load(str(path)).get_fdata()
    with pytest.raises(ValueError, match="prediction shape"):
        scan_figure(image, labels[:-1], AFFINE)
    with pytest.raises(ValueError, match="non-integer"):
        scan_figure(image, labels + 0.5, AFFINE)
    with pytest.raises(ValueError, match="at least 512"):
        scan_figure(image, labels, AFFINE, panel_size=256)


def test_save_scan_figure_overwrite(scan, tmp_path):
    path, labels = scan
    image = nib.load(str(path)).get_fdata()
    out = tmp_path / "fig.png"
    save_scan_figure(out, image, labels, AFFINE)
    with pytest.raises(FileExistsError):
        save_scan_figure(out, image, labels, AFFINE)
    save_scan_figure(out, image, labels, AFFINE, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_colours_from_channel_def():
    channel_def = {"0": "background", "1": "aorta", "2": "gallbladder", "3": "kidney_left", "4": "kidney_right",
                   "5": "liver", "6": "pancreas", "7": "spleen", "8": "stomach"}  # fmt: skip
    names, colours = colours_from_channel_def(channel_def)
    assert names[1] == "aorta" and names[8] == "stomach" and len(colours) == 9
    assert len(set(colours[1:])) == 8  # distinct organ colours
    shuffled = dict(reversed(list(channel_def.items())))
    assert colours_from_channel_def(shuffled) == (names, colours)  # stable: by class index, not by key order
    with pytest.raises(ValueError, match="0..1"):
        colours_from_channel_def({"0": "background", "2": "liver"})


def test_image_figure_layout_and_position(tmp_path):
    rng = np.random.default_rng(0)
    photo = rng.integers(60, 120, size=(120, 200, 3), dtype=np.uint8)  # a wide photo: 512 x 307 pixels
    mask = np.zeros((120, 200), dtype=np.uint8)
    mask[40:80, 20:60] = 1  # on the left of the photo
    rgb = image_figure(photo, mask, label=mask, class_names=["background", "polyp"])
    layout = FigureLayout(1, 3)
    assert rgb.shape == (layout.height, layout.width, 3)
    prediction = _panel(rgb, layout, 0, 2)
    assert _centre(_reddish(prediction))[1] < PANEL_SIZE / 2 - 100  # photos are not flipped
    assert not _reddish(_panel(rgb, layout, 0, 0)).any()
    assert abs(int((prediction[:, 10].sum(axis=-1) > 0).sum()) - 307) <= 1  # aspect ratio kept
    left, top, right, bottom = layout.legend_box
    assert np.all(rgb[top:bottom, left:right] == RED, axis=-1).sum() >= SWATCH * SWATCH
    # grey float photo, channel-first mask, no label: one panel fewer
    out = save_image_figure(tmp_path / "photo.png", photo[..., 0] / 255.0, mask[None].astype(np.float32))
    assert Image.open(out).size == (FigureLayout(1, 2).width, FigureLayout(1, 2).height)
    # channel-first RGB photo (MONAI's layout)
    assert image_figure(np.moveaxis(photo, -1, 0), mask).shape == rgb.shape[:1] + (FigureLayout(1, 2).width, 3)
    with pytest.raises(ValueError, match="differs"):
        image_figure(photo, mask[:, :-1])


def test_save_scan_figured(scan, tmp_path):
    path, labels = scan
    out_dir = tmp_path / "figures"
    meta = {"filename_or_obj": str(path)}
    pred = MetaTensor(torch.as_tensor(labels)[None], affine=torch.as_tensor(AFFINE), meta=meta)
    save = SaveScanFigured("pred", output_dir=out_dir, label_key="label", class_names=NAMES, colours=COLOURS)
    item = save({"pred": pred, "label": torch.as_tensor(labels)[None]})
    assert set(item) == {"pred", "label"}
    expected = figure_path_for(path, out_dir)
    assert expected == out_dir / "case0001_figure.png"
    rgb = np.asarray(Image.open(expected).convert("RGB"))
    layout = FigureLayout(2, 3)
    assert rgb.shape == (layout.height, layout.width, 3)
    assert _centre(_reddish(_panel(rgb, layout, 0, 2)))[1] < PANEL_SIZE / 2 - 50
    # an existing figure without overwrite: one-line error naming the file
    with pytest.raises(InputError, match="case0001_figure.png: figure already exists") as err:
        save({"pred": pred})
    assert "\n" not in str(err.value)
    SaveScanFigured("pred", output_dir=out_dir, overwrite=True)({"pred": pred})  # the image key's meta is optional
    # a prediction not on the scan's grid (Invertd missing)
    with pytest.raises(InputError, match="not on the scan's grid"):
        SaveScanFigured("pred", output_dir=tmp_path / "other")({"pred": MetaTensor(pred[:, :20], meta=pred.meta)})
