"""One source for the 2D bundles' shared configs (``bundles/_shared/image_2d``, ``xattnres_monai.tools.bundles``).

Each 2D bundle keeps real files (a bundle is a self-contained folder: copied, zipped, served with MONAI Label), but
every file of the shared source must be byte-identical in every bundle of the family: a change made in one bundle
only (or in the source without ``sync``) fails here. The drift is shown on a temporary clone of the bundles folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xattnres_monai.tools import bundles as tool

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
FAMILY = "image_2d"
MEMBERS = tool.FAMILIES[FAMILY]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xattnres_monai.tools.bundles", *map(str, args)],
                          capture_output=True, encoding="utf-8", errors="replace", cwd=str(ROOT))  # fmt: skip


@pytest.fixture
def clone(tmp_path) -> Path:
    """A copy of the shared sources and the 2D bundles' folders (configs, docs, LICENSE), as in the repository."""
    out = tmp_path / "bundles"
    shutil.copytree(BUNDLES / tool.SHARED_DIR, out / tool.SHARED_DIR)
    for bundle in MEMBERS + tuple(tool.DERIVED) + tuple(base for base, _ in tool.DERIVED.values()):
        shutil.copytree(BUNDLES / bundle, out / bundle, ignore=shutil.ignore_patterns("data", "eval", "*.pt", "*.ts"))
    return out


def test_the_bundles_match_their_shared_source():
    problems = tool.check(BUNDLES)
    assert not problems, "\n".join(problems) + "\n(run `python -m xattnres_monai.tools.bundles sync`)"
    result = _cli("check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shared_source_covers_every_config_but_metadata():
    files = tool.shared_files(FAMILY)
    assert "LICENSE" in files and "configs/logging.conf" in files
    for name in ("train", "evaluate", "inference", "multi_gpu_train", "monai_label", "dca", "emcad", "structure_loss"):
        assert f"configs/{name}.json" in files
    assert "configs/metadata.json" not in files and "README.md" not in files
    # the source is not a bundle: globs over bundles/*/configs (tests, tools) do not pick it up
    assert not list(BUNDLES.glob(f"{tool.SHARED_DIR}/configs"))
    # what stays per bundle differs per bundle
    metas = [json.loads((BUNDLES / b / "configs" / "metadata.json").read_text()) for b in MEMBERS]
    assert len({m["name"] for m in metas}) == len(MEMBERS)


def test_a_copy_edited_in_one_bundle_alone_fails_the_check(clone):
    assert tool.check(clone) == []
    edited = clone / "clinicdb_polyp_segmentation" / "configs" / "train.json"
    config = json.loads(edited.read_text())
    config["max_epochs"] = 300  # a change made in one bundle only
    edited.write_text(json.dumps(config, indent=4) + "\n")

    problems = tool.check(clone)
    assert len(problems) == 1 and problems[0].startswith(f"{edited}: differs from its source"), problems
    assert '-    "max_epochs": 200,' in problems[0] and '+    "max_epochs": 300,' in problems[0]
    result = _cli("check", "--bundles", clone)
    assert result.returncode == 1 and f"error: {edited}: differs" in result.stderr, result.stdout + result.stderr

    # sync restores the copy from the source (the edit is not silently kept)
    assert tool.sync(clone) == [edited]
    assert json.loads(edited.read_text())["max_epochs"] == 200 and tool.check(clone) == []


def test_a_whitespace_only_edit_is_drift_too(clone):
    edited = clone / "isic2017_skin_segmentation" / "configs" / "logging.conf"
    edited.write_text(edited.read_text() + "\n")
    assert [p.split(":")[0] for p in tool.check(clone)] == [str(edited)]


def test_a_missing_or_extra_config_fails_the_check(clone):
    (clone / "colondb_polyp_segmentation" / "configs" / "dca.json").unlink()
    extra = clone / "isic2017_skin_segmentation" / "configs" / "isic_only.json"
    extra.write_text("{}\n")
    problems = tool.check(clone)
    assert any(p.startswith(str(clone / "colondb_polyp_segmentation" / "configs" / "dca.json") + ": missing")
               for p in problems), problems  # fmt: skip
    assert any(p.startswith(f"{extra}: a config of this bundle only") for p in problems), problems


def test_an_edit_of_the_source_reaches_every_bundle_through_sync(clone):
    source = clone / tool.SHARED_DIR / FAMILY / "configs" / "train.json"
    config = json.loads(source.read_text())
    config["learning_rate"] = 0.0002
    source.write_text(json.dumps(config, indent=4) + "\n")
    # not synced yet: every copy is stale
    stale = tool.check(clone)
    assert sorted(p.split(":")[0] for p in stale) == sorted(str(clone / b / "configs" / "train.json") for b in MEMBERS)

    result = _cli("sync", "--bundles", clone)
    assert result.returncode == 0 and "3 file(s) written" in result.stdout, result.stdout + result.stderr
    for bundle in MEMBERS:
        assert json.loads((clone / bundle / "configs" / "train.json").read_text())["learning_rate"] == 0.0002
    # per-bundle files are left alone
    for bundle in MEMBERS:
        assert (clone / bundle / "configs" / "metadata.json").read_bytes() == (
            BUNDLES / bundle / "configs" / "metadata.json").read_bytes()  # fmt: skip
    assert tool.check(clone) == [] and "already match" in _cli("sync", "--bundles", clone).stdout


# ------------------------------------------------------------------------------------------- derived (3D Synapse)
DERIVED = "synapse_ct_3d_segmentation"


def test_the_3d_bundle_is_the_synapse_bundle_with_its_overlay():
    """Every derived config equals MONAI's merge of the Synapse config and the overlay (what ``--config_file
    "[base, overlay]"`` would run), the overlay only names what differs, and files without one are copies."""
    from monai.bundle import ConfigParser

    base, overlay = tool.DERIVED[DERIVED]
    for rel in tool.DERIVED_FILES:
        derived = BUNDLES / DERIVED / rel
        source = BUNDLES / base / rel
        patch = BUNDLES / tool.SHARED_DIR / overlay / rel
        if patch.is_file():
            merged = ConfigParser.load_config_files([str(source), str(patch)])
            assert json.loads(derived.read_text()) == merged, rel
            assert derived.read_bytes() != source.read_bytes(), rel
        else:
            assert derived.read_bytes() == source.read_bytes(), rel
    train = json.loads((BUNDLES / DERIVED / "configs" / "train.json").read_text())
    assert train["network_def"]["_target_"] == "xattnres_monai.networks.plugins.XAttnResDynUNet"
    assert train["validate"]["inferer"]["_target_"] == "SlidingWindowInferer"
    assert [t["_target_"] for t in train["volume_transforms"]][3:5] == ["ScaleIntensityRanged", "xattnres_monai.transforms.PathSafeSpacingd"]
    synapse = json.loads((BUNDLES / base / "configs" / "train.json").read_text())
    assert train["train"]["handlers"] == synapse["train"]["handlers"]  # shared: one place
    assert "$import xattnres_monai.networks.plugins" in train["imports"]
    assert set(synapse["imports"]) <= set(train["imports"])


def test_an_edit_of_the_synapse_bundle_reaches_the_3d_bundle_through_sync_and_the_overlay_wins(clone):
    base, overlay = tool.DERIVED[DERIVED]
    source = clone / base / "configs" / "train.json"
    config = json.loads(source.read_text())
    config["weight_decay"] = 0.05  # shared with the 3D bundle
    config["roi_size"] = [256, 256]  # the 3D overlay sets its own
    source.write_text(json.dumps(config, indent=4) + "\n")
    derived = clone / DERIVED / "configs" / "train.json"
    stale = tool.check(clone)
    assert [p.split(":")[0] for p in stale] == [str(derived)], stale
    assert "differs from what" in stale[0]
    assert tool.sync(clone) == [derived]
    synced = json.loads(derived.read_text())
    assert synced["weight_decay"] == 0.05 and synced["roi_size"] == [96, 96, 96]
    assert tool.check(clone) == []
    # a config of the 3D bundle alone, or an overlay of no derived file, is refused
    (clone / DERIVED / "configs" / "extra.json").write_text("{}\n")
    (clone / tool.SHARED_DIR / overlay / "configs" / "nothing.json").write_text("{}\n")
    problems = tool.check(clone)
    assert any("extra.json: a config of this derived bundle only" in p for p in problems), problems
    assert any("nothing.json: an overlay of no derived file" in p for p in problems), problems


def test_a_shared_docs_section_is_one_source_for_every_readme(clone):
    """The measured DynUNet table is written once (``_shared/docs``) into every README that marks it; an edit made in
    one README alone, or a marker naming no source, fails the check; ``sync`` writes the source back."""
    name = "dynunet_overhead"
    source = BUNDLES / tool.SHARED_DIR / tool.DOCS_DIR / f"{name}.md"
    holders = [p for p in [ROOT / "README.md"] + sorted(BUNDLES.glob("*/docs/README.md"))
               if f"<!-- shared: {name} -->" in p.read_text(encoding="utf-8")]  # fmt: skip
    assert len(holders) == 6, holders  # the repository README and every bundle's
    for readme in holders:
        assert source.read_text(encoding="utf-8") in readme.read_text(encoding="utf-8"), readme
    readme = clone / DERIVED / "docs" / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("| parameters |", "| parameter count |"), encoding="utf-8")
    stale = tool.check(clone)
    assert len(stale) == 1 and stale[0].startswith(f"{readme}: a shared section differs"), stale
    assert tool.sync(clone) == [readme] and readme.read_text(encoding="utf-8") == text
    readme.write_text(text + "\n<!-- shared: nothing -->\nx\n<!-- /shared: nothing -->\n", encoding="utf-8")
    assert any("'nothing' has no source" in p for p in tool.check(clone))
    with pytest.raises(FileNotFoundError, match="nothing"):
        tool.sync(clone)
