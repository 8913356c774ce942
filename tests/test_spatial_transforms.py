"""``PathSafeSpacingd``: MONAI's ``Spacingd`` in the data MONAI Label hands a bundle (an ``image_path`` string)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, Spacingd

from xattnres_monai.transforms import PathSafeSpacingd


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 18, 7)).astype(np.float32), affine), str(path))
    return path


def _load(path):
    return Compose([LoadImaged("image"), EnsureChannelFirstd("image")])({"image": str(path)})


def test_spacing_with_a_path_entry_equals_monai_spacing_and_inverts(study):
    data = _load(study)
    expected = Spacingd("image", pixdim=(1.5, 1.5, 2.0), mode="bilinear")(dict(data))["image"]
    with pytest.raises(AttributeError, match="has no attribute 'update'"):  # the MONAI failure this works around
        Spacingd("image", pixdim=(1.5, 1.5, 2.0), mode="bilinear")(dict(data, image_path=str(study)))
    transform = PathSafeSpacingd("image", pixdim=(1.5, 1.5, 2.0), mode="bilinear")
    out = transform(dict(data, image_path=str(study)))
    assert out["image_path"] == str(study)
    torch.testing.assert_close(out["image"].as_tensor(), expected.as_tensor())
    np.testing.assert_allclose(out["image"].affine.numpy(), expected.affine.numpy())
    # the inverse (Invertd, as the bundles bring predictions back to the input grid) is Spacingd's
    out["pred"] = out["image"].clone()
    back = Invertd("pred", transform=transform, orig_keys="image", nearest_interp=False)(out)["pred"]
    assert tuple(back.shape[1:]) == (20, 18, 7)
    np.testing.assert_allclose(back.affine.numpy(), data["image"].affine.numpy(), atol=1e-5)
