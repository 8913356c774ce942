"""Collect and check the 2D images (PNG / JPEG / TIFF / BMP) given to bundle inference.

Each image is checked on its own before any is processed -- readable and complete (truncated files
are caught by decoding them), not absurdly large (from the header, before decoding), a pixel mode
that converts to RGB, finite and not constant -- and the failures are recorded with the file name
and reason while the good images still run. :class:`xattnres_monai.handlers.report.InferenceReport`
prints them at the end and exits non-zero. Grayscale, palette, RGBA and 16-bit images are accepted
and converted to RGB when loaded (:func:`xattnres_monai.transforms.to_rgb`, with a note in the log).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from xattnres_monai.data.inputs import InferenceInputs
from xattnres_monai.utils.files import InputError, as_bool

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "ImageInferenceInputs", "check_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: refuse images above this many pixels before decoding them (about 16k x 16k).
MAX_PIXELS = 16384 * 16384


def check_image(path_like: str, max_pixels: int = MAX_PIXELS) -> Tuple[int, int]:
    """Raise :class:`InputError` naming the file if it cannot be segmented; return its ``(width, height)``."""
    path = Path(path_like)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(path, f"unsupported file type {path.suffix!r}: expected one of {', '.join(IMAGE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise InputError(path, "zero-byte file")
    try:
        with Image.open(path) as image:
            size = image.size
            if size[0] * size[1] > max_pixels:  # from the header, before decoding
                raise InputError(path, f"image of {size[0]} x {size[1]} pixels exceeds the {max_pixels:,}-pixel limit")
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                raise InputError(path, f"{frames}-frame image (a stack or animation): expected one 2D image")
            image.load()  # decodes: truncated or damaged data fails here
            data = np.asarray(image)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not a readable image (PIL cannot identify the file as an image)") from None
    except Image.DecompressionBombError as err:
        raise InputError(path, f"image too large to read safely ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise InputError(path, f"truncated or corrupt image ({type(err).__name__}: {err})") from None
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(path, f"{int((~np.isfinite(data)).sum())} pixels are NaN or Inf")
    pixels = data.reshape(-1, data.shape[-1]) if data.ndim == 3 else data.reshape(-1, 1)
    if pixels.shape[0] == 0 or (pixels == pixels[0]).all():
        raise InputError(path, "constant image (every pixel has the same value)")
    return size


class ImageInferenceInputs(InferenceInputs):
    """The images of one 2D inference run: a folder (``dataset_dir``) or a list (``datalist``), each checked.

    A folder contributes every file with an image suffix (:data:`IMAGE_SUFFIXES`, any case); any other file is a
    failure ("unsupported file type"); a datalist is a JSON list of paths or ``{"image": path}`` items, or a
    MONAI datalist with a ``"test"`` section. Each image gets ``<output_dir>/<name>_mask.png`` (0 / 255) and,
    with ``save_probabilities``, ``<name>_prob.png`` (foreground probability x 255). The rules of
    :class:`~xattnres_monai.data.inputs.InferenceInputs` apply: existing outputs are skipped unless
    ``overwrite``, bad images and output-name clashes (``a.png`` and ``a.jpg``) are failures, the others run.

    Args:
        output_dir: where the masks are written.
        dataset_dir: folder of images (used when ``datalist`` is empty).
        datalist: path of a JSON list of images.
        overwrite: replace existing outputs.
        save_probabilities: also write probability maps.
        max_pixels: refuse larger images (from the header, before decoding them).

    Attributes:
        items: ``[{"image", "output", "prob_output"}]`` for the images to process.
        failures: ``[(image, reason)]``; skipped: ``[(image, reason)]``.

    Example::

        inputs = ImageInferenceInputs("out", dataset_dir="new_images")
    """

    supported = f"expected images ({', '.join(IMAGE_SUFFIXES)})"

    def __init__(
        self,
        output_dir: str,
        dataset_dir: Optional[str] = None,
        datalist: Optional[str] = None,
        overwrite: bool = False,
        save_probabilities: bool = False,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.save_probabilities = as_bool(save_probabilities, "save_probabilities")
        self.max_pixels = max_pixels
        self._collect(output_dir, dataset_dir, datalist, overwrite)

    def accepts(self, entry: Path) -> bool:
        return entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES

    def check(self, scan: str) -> None:
        check_image(scan, self.max_pixels)

    def outputs_for(self, scan: str) -> Dict[str, str]:
        stem = os.path.join(self.output_dir, Path(scan).stem)
        return {"output": f"{stem}_mask.png", "prob_output": f"{stem}_prob.png" if self.save_probabilities else ""}
