"""One source for the configs that bundles share: ``python -m xattnres_monai.tools.bundles sync|check``.

The three 2D bundles (ColonDB, ClinicDB, ISIC 2017) run the same pipeline: every config but ``metadata.json`` is the
same file. The shared files live once, in ``bundles/_shared/image_2d/`` (laid out like a bundle: ``LICENSE``,
``configs/...``), and ``sync`` writes byte-identical copies of them into each bundle of the family; ``check`` (run by
``tests/test_bundle_sources.py``) fails when a bundle's copy differs from the source, is missing, or when a bundle
has a config that is neither shared nor one of its own (``configs/metadata.json``).

Why generated copies, not references or links: a MONAI bundle is a self-contained folder in the Model Zoo layout.
Users copy it, zip it, serve it with MONAI Label (``xattnres_monai.tools.label_server``), export it
(``ckpt_export``), verify it (``verify_metadata``) and run it from any working directory; a config that pointed
outside the bundle folder (``%../../_shared/...`` macros, ``--config_file`` lists with a shared file) would break all
of these, and symbolic links break on zip archives, on Windows checkouts and in sdists. Copies keep every bundle
complete; the check keeps them one source.

What stays per bundle: ``configs/metadata.json`` (name, version, changelog, data description), ``docs/`` (README,
data licence) and ``models/``. A dataset-specific default goes into the bundle's documented command line or an extra
config of its own, listed in ``PER_BUNDLE``.

Derived bundles: the 3D Synapse bundle (``synapse_ct_3d_segmentation``: DynUNet + XAttnRes on 3D patches) runs the
Synapse bundle's pipeline with another network, resampling, patch sampling and inferer. Its configs are the Synapse
bundle's merged with a small overlay (``bundles/_shared/synapse_3d/configs/<name>.json``: only what differs, as MONAI
config ids such as ``"network_def"``, ``"volume_transforms#4"``, ``"+imports"``), merged by MONAI's own
``ConfigParser.load_config_files`` (the same merge as ``--config_file "[a.json, b.json]"``) and written as a complete
config; files without an overlay are copied. A change to the Synapse bundle reaches the 3D bundle at the next ``sync``,
and ``check`` fails until it has.

Shared documentation: a section that several READMEs carry word for word (the measured DynUNet table) lives once, in
``bundles/_shared/docs/<name>.md``; every bundle's ``docs/README.md`` and the repository's ``README.md`` hold it
between ``<!-- shared: <name> -->`` and ``<!-- /shared: <name> -->`` (invisible when rendered). ``sync`` rewrites
those regions from the source, ``check`` fails on a region that differs or names no source.

To change a shared config: edit ``bundles/_shared/image_2d/<path>``, run ``python -m xattnres_monai.tools.bundles
sync``, and commit the source with the copies (bump each bundle's version in its ``metadata.json`` when the change
is user-visible).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from xattnres_monai.utils.files import atomic_write

#: the repository's bundles folder (the default of ``--bundles``)
BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
#: where the shared sources are, relative to the bundles folder
SHARED_DIR = "_shared"
#: family -> the bundles generated from ``<bundles>/_shared/<family>/``
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "image_2d": ("clinicdb_polyp_segmentation", "colondb_polyp_segmentation", "isic2017_skin_segmentation"),
}
#: derived bundle -> (the bundle it derives from, its overlay folder under ``<bundles>/_shared/``)
DERIVED: Dict[str, Tuple[str, str]] = {"synapse_ct_3d_segmentation": ("synapse_ct_segmentation", "synapse_3d")}
#: the files a derived bundle takes from its base bundle (a config with an overlay of the same path is merged)
DERIVED_FILES = (
    "LICENSE",
    "docs/data_license.txt",
    "configs/logging.conf",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/routing.json",
)
#: shared documentation sections, relative to ``<bundles>/_shared/``: ``<name>.md`` for ``<!-- shared: <name> -->``
DOCS_DIR = "docs"
#: a shared section in a README: the opening marker, the text sync writes, the closing marker
SHARED_SECTION = re.compile(r"(<!-- shared: ([\w.-]+) -->\n)(.*?)(<!-- /shared: \2 -->)", re.S)
#: files under a family or derived bundle's ``configs/`` that are its own (not generated)
PER_BUNDLE = ("configs/metadata.json",)
#: files of the source folder that are about the source and not copied
NOT_COPIED = ("README.md",)


def source_dir(family: str, bundles_dir: Path = BUNDLES_DIR) -> Path:
    return Path(bundles_dir) / SHARED_DIR / family


def shared_files(family: str, bundles_dir: Path = BUNDLES_DIR) -> List[str]:
    """The shared files of ``family`` (paths relative to a bundle folder, ``/``-separated, sorted)."""
    root = source_dir(family, bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no shared source for the bundle family {family!r}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f for f in files if f not in NOT_COPIED]


def _diff(source: Path, copy: Path, limit: int = 20) -> str:
    try:
        a = source.read_text(encoding="utf-8").splitlines()
        b = copy.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return "    (binary files differ)"
    lines = list(difflib.unified_diff(a, b, str(source), str(copy), lineterm="", n=1))
    more = f"\n    ... {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join("    " + line for line in lines[:limit]) + more


def overlay_files(bundle: str, bundles_dir: Path = BUNDLES_DIR) -> List[str]:
    """The overlay files of a derived bundle (paths relative to a bundle folder, sorted)."""
    root = Path(bundles_dir) / SHARED_DIR / DERIVED[bundle][1]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no overlay for the derived bundle {bundle!r}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f for f in files if f not in NOT_COPIED]


def derived_content(bundle: str, rel: str, bundles_dir: Path = BUNDLES_DIR) -> bytes:
    """What ``sync`` writes to ``<bundles>/<bundle>/<rel>`` of a derived bundle: the base bundle's file, merged with the
    overlay of the same path when there is one (MONAI's ``ConfigParser.load_config_files``, JSON indented by 4)."""
    from monai.bundle import ConfigParser

    base_name, overlay_name = DERIVED[bundle]
    base = Path(bundles_dir) / base_name / rel
    overlay = Path(bundles_dir) / SHARED_DIR / overlay_name / rel
    if not base.is_file():
        raise FileNotFoundError(f"{base}: missing (the derived bundle {bundle!r} takes {rel} from it)")
    if not overlay.is_file():
        return base.read_bytes()
    merged = ConfigParser.load_config_files([str(base), str(overlay)])
    return (json.dumps(merged, indent=4) + "\n").encode("utf-8")


def _check_derived(bundles_dir: Path) -> List[str]:
    problems = []
    for bundle, (base_name, overlay_name) in DERIVED.items():
        folder = bundles_dir / bundle
        if not folder.is_dir():
            problems.append(f"{folder}: the derived bundle is missing")
            continue
        for rel in overlay_files(bundle, bundles_dir):
            if rel not in DERIVED_FILES:
                problems.append(f"{bundles_dir / SHARED_DIR / overlay_name / rel}: an overlay of no derived file "
                                f"(one of {', '.join(DERIVED_FILES)})")  # fmt: skip
        for rel in DERIVED_FILES:
            copy = folder / rel
            expected = derived_content(bundle, rel, bundles_dir)
            if not copy.is_file():
                problems.append(f"{copy}: missing (derived from {bundles_dir / base_name / rel}; run `{_sync_command()}`)")
            elif copy.read_bytes() != expected:
                problems.append(
                    f"{copy}: differs from what {bundles_dir / base_name / rel} and its overlay in "
                    f"{bundles_dir / SHARED_DIR / overlay_name} give (edit those, then run `{_sync_command()}`)"
                )
        for path in _unlisted_configs(folder, DERIVED_FILES):
            problems.append(f"{path}: a config of this derived bundle only (list it in DERIVED_FILES or PER_BUNDLE "
                            f"of {Path(__file__).name})")  # fmt: skip
    return problems


def _readmes(bundles_dir: Path) -> List[Path]:
    """The READMEs that may hold shared sections: the repository's (next to the bundles folder) and each bundle's."""
    found = [bundles_dir.parent / "README.md"] + sorted(bundles_dir.glob("*/docs/README.md"))
    return [p for p in found if p.is_file() and SHARED_DIR not in p.relative_to(bundles_dir.parent).parts]


def shared_sections(text: str, bundles_dir: Path = BUNDLES_DIR) -> Tuple[str, List[str]]:
    """``text`` with every shared section rewritten from its source, and the names of sections without a source.

    Args:
        text: a README's text.
        bundles_dir: the bundles folder (its ``_shared/docs/`` holds the sources).

    Example::

        >>> text, missing = shared_sections(Path("README.md").read_text(encoding="utf-8"))
    """
    missing: List[str] = []

    def replace(match: re.Match) -> str:
        source = Path(bundles_dir) / SHARED_DIR / DOCS_DIR / f"{match.group(2)}.md"
        if not source.is_file():
            missing.append(match.group(2))
            return match.group(0)
        body = source.read_text(encoding="utf-8")
        return match.group(1) + body + ("" if body.endswith("\n") else "\n") + match.group(4)

    return SHARED_SECTION.sub(replace, text), missing


def _check_docs(bundles_dir: Path) -> List[str]:
    problems = []
    for readme in _readmes(bundles_dir):
        text = readme.read_text(encoding="utf-8")
        expected, missing = shared_sections(text, bundles_dir)
        for name in missing:
            problems.append(f"{readme}: the shared section {name!r} has no source "
                            f"{bundles_dir / SHARED_DIR / DOCS_DIR / (name + '.md')}")  # fmt: skip
        if expected != text:
            problems.append(f"{readme}: a shared section differs from its source in {bundles_dir / SHARED_DIR / DOCS_DIR} "
                            f"(edit the source, then run `{_sync_command()}`)")  # fmt: skip
    return problems


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (an interrupted sync leaves the old file, never half a new one)."""
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_bytes(data)


def _sync_docs(bundles_dir: Path) -> List[Path]:
    written = []
    for readme in _readmes(bundles_dir):
        text = readme.read_text(encoding="utf-8")
        expected, missing = shared_sections(text, bundles_dir)
        if missing:
            raise FileNotFoundError(f"{readme}: the shared section(s) {', '.join(missing)} have no source in "
                                    f"{bundles_dir / SHARED_DIR / DOCS_DIR}")  # fmt: skip
        if expected != text:
            _write(readme, expected.encode("utf-8"))
            written.append(readme)
    return written


def _unlisted_configs(folder: Path, generated: Sequence[str]) -> List[Path]:
    """Files under ``folder/configs`` that are neither ``generated`` nor listed in :data:`PER_BUNDLE`."""
    configs = folder / "configs"
    own = set(generated) | set(PER_BUNDLE)
    paths = sorted(configs.rglob("*")) if configs.is_dir() else []
    return [p for p in paths if p.is_file() and p.relative_to(folder).as_posix() not in own]


def _sync_derived(bundles_dir: Path) -> List[Path]:
    written = []
    for bundle in DERIVED:
        for rel in DERIVED_FILES:
            copy = bundles_dir / bundle / rel
            expected = derived_content(bundle, rel, bundles_dir)
            if copy.is_file() and copy.read_bytes() == expected:
                continue
            _write(copy, expected)
            written.append(copy)
    return written


def check(bundles_dir: Path = BUNDLES_DIR, families: Sequence[str] = tuple(FAMILIES)) -> List[str]:
    """Problems (one line or short block each) where a family bundle is not what ``sync`` would write; [] if none."""
    bundles_dir = Path(bundles_dir)
    problems = []
    for family in families:
        source = source_dir(family, bundles_dir)
        files = shared_files(family, bundles_dir)
        for bundle in FAMILIES[family]:
            folder = bundles_dir / bundle
            if not folder.is_dir():
                problems.append(f"{folder}: bundle of the family {family!r} is missing")
                continue
            for rel in files:
                copy = folder / rel
                if not copy.is_file():
                    problems.append(f"{copy}: missing (a copy of {source / rel}; run `{_sync_command()}`)")
                elif copy.read_bytes() != (source / rel).read_bytes():
                    problems.append(
                        f"{copy}: differs from its source {source / rel} (edit the source, then run "
                        f"`{_sync_command()}`; per-dataset values belong in configs/metadata.json or docs/)\n"
                        + _diff(source / rel, copy)
                    )
            for path in _unlisted_configs(folder, files):
                problems.append(
                    f"{path}: a config of this bundle only (add it to {source / 'configs'} for the whole "
                    f"family, or list it in PER_BUNDLE of {Path(__file__).name})"
                )
    return problems + _check_derived(bundles_dir) + _check_docs(bundles_dir)


def sync(bundles_dir: Path = BUNDLES_DIR, families: Sequence[str] = tuple(FAMILIES)) -> List[Path]:
    """Write the shared files of each family into its bundles; return the files that changed."""
    bundles_dir = Path(bundles_dir)
    written = []
    for family in families:
        source = source_dir(family, bundles_dir)
        files = shared_files(family, bundles_dir)
        for bundle in FAMILIES[family]:
            folder = bundles_dir / bundle
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: bundle of the family {family!r} is missing")
            for rel in files:
                copy, content = folder / rel, (source / rel).read_bytes()
                if copy.is_file() and copy.read_bytes() == content:
                    continue
                _write(copy, content)
                written.append(copy)
    return written + _sync_derived(bundles_dir) + _sync_docs(bundles_dir)


def _sync_command() -> str:
    return "python -m xattnres_monai.tools.bundles sync"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xattnres_monai.tools.bundles",
        description="Write (sync) or verify (check) the configs that bundles of a family share, from "
        f"<bundles>/{SHARED_DIR}/<family>/ (families: {', '.join(f'{k}: {len(v)} bundles' for k, v in FAMILIES.items())}).",
    )
    parser.add_argument("command", choices=("sync", "check"))
    parser.add_argument("--bundles", type=Path, default=BUNDLES_DIR, help="the bundles folder (default: %(default)s)")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only this family (repeatable)")
    args = parser.parse_args(argv)
    families = args.family or list(FAMILIES)
    try:
        if args.command == "sync":
            written = sync(args.bundles, families)
            for path in written:
                print(f"wrote {path}")
            print(f"{len(written)} file(s) written" if written else "all bundles already match their shared source")
        problems = check(args.bundles, families)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s); the shared sources are in {Path(args.bundles) / SHARED_DIR}", file=sys.stderr)
        return 1
    if args.command == "check":
        print("all bundles match their shared source")
    return 0


if __name__ == "__main__":
    sys.exit(main())
