"""Class names and colours shared by every figure of the package (scan figures, photo figures, training curves).

Class ``k`` (``k >= 1``) gets ``DEFAULT_PALETTE[(k - 1) % len(DEFAULT_PALETTE)]`` unless colours are given, so an
organ has the same colour in the scan figures and in the per-class Dice curves of a run. Class 0 is the background
and is never drawn.
"""

from __future__ import annotations

import numbers
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "DEFAULT_PALETTE",
    "RGB",
    "class_colours",
    "class_names_for",
    "colours_from_channel_def",
    "default_colour",
    "parse_colour",
]

RGB = Tuple[int, int, int]

#: saturated colours that stay distinguishable from each other and from grey CT tissue (ITK-SNAP's first six
#: label colours, then ten more); class ``k`` uses entry ``(k - 1) % 16``.
DEFAULT_PALETTE: Tuple[RGB, ...] = (
    (255, 0, 0),  # red
    (0, 200, 0),  # green
    (40, 110, 255),  # blue
    (255, 230, 0),  # yellow
    (0, 230, 230),  # cyan
    (255, 0, 255),  # magenta
    (255, 140, 0),  # orange
    (150, 80, 255),  # violet
    (170, 110, 40),  # brown
    (255, 150, 200),  # pink
    (160, 255, 60),  # lime
    (0, 140, 140),  # teal
    (140, 140, 0),  # olive
    (0, 60, 160),  # navy
    (200, 0, 90),  # crimson
    (120, 200, 255),  # sky
)

ColourLike = Union[str, Sequence[float]]


def default_colour(index: int) -> RGB:
    """The default colour of class ``index`` (``index >= 1``; the background, 0, has black).

    Example::

        >>> default_colour(1), default_colour(17)
        ((255, 0, 0), (255, 0, 0))
    """
    if index <= 0:
        return (0, 0, 0)
    return DEFAULT_PALETTE[(index - 1) % len(DEFAULT_PALETTE)]


def parse_colour(colour: ColourLike) -> RGB:
    """An RGB triple of ints 0..255 from a matplotlib colour name / hex string, 3 ints 0..255 or 3 floats 0..1.

    Raises:
        ValueError: a colour that is none of these.

    Example::

        >>> parse_colour("red"), parse_colour((0, 128, 255)), parse_colour((0.0, 0.5, 1.0))
        ((255, 0, 0), (0, 128, 255), (0, 128, 255))
    """
    if isinstance(colour, str):
        from matplotlib.colors import to_rgb

        try:
            return tuple(int(round(c * 255)) for c in to_rgb(colour))  # type: ignore[return-value]
        except ValueError:
            raise ValueError(f"unknown colour {colour!r} (expected a matplotlib colour name or '#rrggbb')") from None
    values = list(colour)
    if len(values) not in (3, 4) or not all(isinstance(v, numbers.Real) for v in values):
        raise ValueError(f"colour {colour!r}: expected 3 numbers (0-255 ints or 0-1 floats) or a colour name")
    values = values[:3]  # an alpha component is ignored
    if all(isinstance(v, numbers.Integral) for v in values):
        if not all(0 <= int(v) <= 255 for v in values):
            raise ValueError(f"colour {colour!r}: integer components must lie in 0..255")
        return tuple(int(v) for v in values)  # type: ignore[return-value]
    if not all(0.0 <= float(v) <= 1.0 for v in values):
        raise ValueError(f"colour {colour!r}: float components must lie in 0..1 (integers: 0..255)")
    return tuple(int(round(float(v) * 255)) for v in values)  # type: ignore[return-value]


def class_colours(n_classes: int, colours: Optional[Union[Sequence[Any], Mapping[int, Any]]] = None) -> List[RGB]:
    """One colour per class ``0..n_classes-1`` (entry 0, the background, is black and never drawn).

    Args:
        n_classes: classes including the background.
        colours: given colours: a sequence indexed by class (entry 0 ignored; it may be shorter, missing classes
            get their default colour) or a mapping ``class index -> colour``; see :func:`parse_colour`.

    Example::

        >>> class_colours(3, {2: "blue"})
        [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    """
    given: Mapping[int, Any]
    if colours is None:
        given = {}
    elif isinstance(colours, Mapping):
        given = {int(k): v for k, v in colours.items()}
    else:
        given = dict(enumerate(colours))
    return [(0, 0, 0)] + [parse_colour(given[k]) if given.get(k) is not None else default_colour(k)
                          for k in range(1, n_classes)]  # fmt: skip


def class_names_for(n_classes: int, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Names of classes ``0..n_classes-1``: the given ones, ``"class k"`` for the others (0: ``"background"``).

    Example::

        >>> class_names_for(3, ["background", "liver"])
        ['background', 'liver', 'class 2']
    """
    names = [str(n) for n in (class_names or [])][:n_classes]
    defaults = ["background"] + [f"class {k}" for k in range(1, n_classes)]
    return names + defaults[len(names):]


def colours_from_channel_def(channel_def: Mapping[Any, str]) -> Tuple[List[str], List[RGB]]:
    """Class names and colours from the ``channel_def`` of a MONAI bundle's ``metadata.json`` output.

    ``channel_def`` maps ``"0"``, ``"1"``, ... to names (``{"0": "background", "1": "aorta", ...}``); the keys must
    be the integers ``0..n-1``, in any order. Class ``k`` gets :func:`default_colour` ``(k)``: the same organ gets the
    same colour in every run of a bundle (its ``channel_def`` does not change), in the scan figures and in the
    per-class curves of :class:`~xattnres_monai.handlers.training_curves.TrainingCurves`.

    Returns:
        ``(names, colours)``, both indexed by class (colour 0 = background, black, not drawn).

    Raises:
        ValueError: keys that are not the integers ``0..n-1``.

    Example::

        >>> names, colours = colours_from_channel_def({"0": "background", "1": "aorta", "2": "gallbladder"})
        >>> names, colours[1]
        (['background', 'aorta', 'gallbladder'], (255, 0, 0))
    """
    try:
        by_index = {int(k): str(v) for k, v in channel_def.items()}
    except (TypeError, ValueError):
        raise ValueError(f"channel_def keys must be class indices '0', '1', ...; got {list(channel_def)}") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"channel_def keys must be the class indices 0..{len(by_index) - 1}; got {sorted(by_index)}")
    names = [by_index[k] for k in range(len(by_index))]
    return names, class_colours(len(names))
