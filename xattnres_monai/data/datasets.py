"""Datasets of checked volumes: bad input ends a training run with one line per file, or fails one inference scan.

The voxel checks of :class:`~xattnres_monai.transforms.LoadVolumed` run where the volumes are decoded, once: while a
cache is filled (training, validation) or an item is loaded (evaluation, inference). These datasets decide what a
failing volume does there.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

from monai.data import CacheDataset, Dataset

from xattnres_monai.utils.files import InputError, exit_on_user_error, find_user_error, raise_if_any

__all__ = ["CheckedCacheDataset", "InferenceDataset"]


class CheckedCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that, when volumes fail their checks while the cache is filled, reports every bad file
    (``error: <file>: <problem>``, one line each) and exits with code 2, before any training step.

    Args:
        args, kwargs: those of ``CacheDataset``.

    Example::

        >>> ds = CheckedCacheDataset(items, transform=Compose([LoadVolumed(["image", "label"], "label", 9), ...]))
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._input_errors: List[InputError] = []
        super().__init__(*args, **kwargs)
        with exit_on_user_error():
            raise_if_any(sorted(self._input_errors, key=str))

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as err:
            found = find_user_error(err)
            if found is None:
                raise
            self._input_errors.extend(getattr(found, "errors", [found]))
            return None


class InferenceDataset:
    """A map-style dataset of scans whose loading failures are items, not exceptions: one bad scan stops no run.

    MONAI's :class:`~monai.data.Dataset` over ``data`` with ``transform``; when loading an item raises a user error
    (:class:`InputError`, also wrapped by MONAI: NaN voxels, a truncated gzip stream found while decoding ...), the
    item comes back as ``{**item, "failure": "<problem>"}`` and
    :class:`~xattnres_monai.engines.InferenceEvaluator` records it in the run's failures instead of segmenting it.
    Works with data-loader workers (the failure travels as data). Other exceptions (bugs) propagate.

    Args:
        data: the items (``InferenceInputs.items``).
        transform: the preprocessing.
    """

    def __init__(self, data: Sequence[Dict[str, Any]], transform: Callable) -> None:
        self._dataset = Dataset(data, transform)
        self.data = data

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            return self._dataset[index]
        except Exception as err:
            found = find_user_error(err)
            if found is None:
                raise
            item = dict(self.data[index])
            problem = str(found) if not isinstance(found, InputError) else found.problem
            return {**item, "failure": problem}
