"""Every shipped bundle's metadata against the local copy of MONAI's schema, and its network against the metadata's
input / output format, with the functions behind ``python -m monai.bundle verify_metadata`` / ``verify_net_in_out``
(called in this process: the command-line forms run on trained bundles in tests/test_from_zero.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
BUNDLES = sorted(p.parents[1] for p in BUNDLES_DIR.glob("*/configs/metadata.json"))
SCHEMA = BUNDLES_DIR / "schema" / "meta_schema_20240725.json"


def test_every_bundle_is_checked():
    names = {b.name for b in BUNDLES}
    assert {"synapse_ct_segmentation", "synapse_ct_3d_segmentation", "clinicdb_polyp_segmentation",
            "colondb_polyp_segmentation", "isic2017_skin_segmentation"} <= names, names  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata_and_network_io_verify(bundle, caplog):
    from monai.bundle import verify_metadata, verify_net_in_out

    configs = bundle / "configs"
    with caplog.at_level(logging.INFO):
        verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(SCHEMA))  # raises on a violation
        verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                          config_file=str(configs / "inference.json"))  # fmt: skip
    text = caplog.text
    assert "metadata is verified with no error" in text and "data shape of network is verified with no error" in text
