"""2D axial slices cut on the fly from cached, preprocessed 3D volumes."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from xattnres_monai.data.datasets import CheckedCacheDataset
from monai.transforms import apply_transform
from torch.utils.data import Dataset

__all__ = ["SliceDataset"]


class SliceDataset(Dataset):
    """Map-style dataset of 2D slices of 3D volumes, for training 2D networks on CT/MR volumes.

    The deterministic volume-level preprocessing (loading, HU window, in-plane resize) runs once per
    volume and is cached in memory by a MONAI :class:`~monai.data.CacheDataset`; slices are views
    into the cached volumes, so no second copy of the data set is written to disk. Random 2D
    augmentation runs per slice. Unlike MONAI's ``GridPatchDataset`` (an iterable dataset), this one
    is map-style: the data loader can shuffle all slices of all volumes, and a
    ``DistributedSampler`` can split them between ranks.

    Args:
        data: datalist items (dicts with ``image`` / ``label`` file paths).
        volume_transform: deterministic transform producing channel-first volumes ``(C, H, W, D)``.
        slice_transform: transform applied to each 2D slice dict ``{key: (C, H, W)}`` (may be random).
        keys: keys sliced from each volume; other entries of the item are dropped.
        slice_dim: spatial dimension along which to slice (2: the last axis, axial in RAS).
        num_workers: threads used to fill the volume cache.

    Example::

        >>> ds = SliceDataset(datalist, volume_transform=LoadAndWindow, slice_transform=Augment)
        >>> ds[0]["image"].shape  # the first slice of the first volume
        torch.Size([1, 224, 224])
    """

    def __init__(
        self,
        data: Sequence[Dict],
        volume_transform: Callable,
        slice_transform: Optional[Callable] = None,
        keys: Sequence[str] = ("image", "label"),
        slice_dim: int = 2,
        num_workers: int = 1,
    ) -> None:
        from xattnres_monai.utils.options import as_int  # options as a command line passes them

        if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
            raise ValueError(f"SliceDataset: data must be a list of datalist items, got {type(data).__name__}.")
        if not callable(volume_transform):
            raise ValueError(f"SliceDataset: volume_transform must be callable, got {volume_transform!r}.")
        if slice_transform is not None and not callable(slice_transform):
            raise ValueError(f"SliceDataset: slice_transform must be callable or None, got {slice_transform!r}.")
        keys = (keys,) if isinstance(keys, str) else keys  # one key, as MONAI's KeysCollection allows
        if not isinstance(keys, Sequence) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"SliceDataset: keys must be a non-empty list of item keys, got {keys!r}.")
        slice_dim = as_int(slice_dim, "SliceDataset: slice_dim", min=0, max=2)
        num_workers = None if num_workers is None else as_int(num_workers, "SliceDataset: num_workers", min=0)
        self.keys = tuple(keys)
        self.slice_dim = slice_dim
        self.slice_transform = slice_transform
        # copy_cache=False: slices are read-only views of the cached volume, never modified in place
        self.volumes = CheckedCacheDataset(
            data, volume_transform, cache_rate=1.0, num_workers=num_workers, copy_cache=False, progress=False
        )
        self.index: List[Tuple[int, int]] = []
        for v in range(len(self.volumes)):
            depth = self.volumes[v][self.keys[0]].shape[1 + slice_dim]
            self.index.extend((v, z) for z in range(depth))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        v, z = self.index[i]
        volume = self.volumes[v]
        # plain tensors: the 3D affine of the volume does not describe a 2D slice
        item = {k: torch.as_tensor(volume[k]).select(1 + self.slice_dim, z).clone() for k in self.keys}
        return apply_transform(self.slice_transform, item) if self.slice_transform is not None else item
