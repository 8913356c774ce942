"""A corpus of real medical files for the tests, fetched at test time from package registries (never committed).

Each source is a pinned package whose archive ships real images (see the licence of each in :data:`SOURCES`):

================  =====================================  ====================================================
name              package                                what the tests use
================  =====================================  ====================================================
``pycerr``        PyPI ``pycerr==2.5.1`` (wheel)         4 CT DICOM series + one RTSTRUCT each (ROI ``GTV-1``)
``tptbox``        PyPI ``tptbox==1.1.0`` (wheel)         spine CT + vertebra masks, spine T2w MR (NIfTI)
``mricron``       Debian ``mricron-data`` (.deb)         Colin27 T1 ``ch2`` + AAL labels (NIfTI)
``pydicom-data``  PyPI ``pydicom-data==1.0.0`` (wheel)   single CT / MR slices, uncompressed and JPEG 2000
``pydicom``       the installed ``pydicom`` wheel        single CT / MR slices (RLE, big endian, JPEG 2000)
================  =====================================  ====================================================

Everything lands in a cache outside the repository: ``$XATTNRES_CORPUS`` if set, else
``~/.cache/xattnres_monai/corpus``. Each archive is checked against its sha256 (a mismatch raises
:class:`CorpusIntegrityError`, nothing is extracted, and the tests fail even outside CI), extracted once into a temporary folder that is renamed into place
(so an interrupted or concurrent fetch never leaves a half-extracted source), and deleted after extraction.
A source already in place is never fetched again.

Command line (from the repository root)::

    .venv/bin/python -m tests.corpus fetch      # fetch everything, print where
    .venv/bin/python -m tests.corpus where      # print the cache folder

In tests, use :func:`obtain` (or the fixtures of tests/conftest.py): with ``XATTNRES_REQUIRE_CORPUS=1`` (CI) a fetch
failure fails the test; otherwise the test is skipped with the reason (e.g. no network).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

__all__ = [
    "CORPUS_ENV",
    "REQUIRE_ENV",
    "CorpusError",
    "CorpusIntegrityError",
    "PYDICOM_DATA_FILES",
    "PYDICOM_TEST_FILES",
    "SOURCES",
    "Source",
    "corpus_root",
    "fetch",
    "fetch_all",
    "mricron_aal",
    "mricron_aal_names",
    "mricron_ch2",
    "mricron_ch2bet",
    "obtain",
    "pycerr_patients",
    "pycerr_rtstruct",
    "pycerr_series",
    "pydicom_data_series",
    "pydicom_series",
    "require_corpus",
    "tptbox_ct",
    "tptbox_ct_subreg_mask",
    "tptbox_ct_vert_mask",
    "tptbox_mr",
    "tptbox_mr_vert_mask",
]

CORPUS_ENV = "XATTNRES_CORPUS"
REQUIRE_ENV = "XATTNRES_REQUIRE_CORPUS"
_DONE = ".complete"  # written last inside the temporary folder, before the rename
_TIMEOUT_S = 900


class CorpusError(RuntimeError):
    """A source could not be fetched or extracted (e.g. no network): the tests skip, unless the corpus is required."""


class CorpusIntegrityError(CorpusError):
    """An archive does not match its pinned sha256: the tests always fail."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "pypi" (a wheel, `pip download`) or "deb" (`apt-get download`)
    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    url: str = ""  # direct address, used for a .deb only when apt-get is missing or no longer offers the version

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"


SOURCES: Dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            "pycerr", "pypi", "pycerr", "2.5.1", "pycerr-2.5.1-py3-none-any.whl",
            "5c3e82cc387538c5c38143827314fc2aa743ef886e8518f7f52beff6805c635d",
            "data: CC BY-NC 3.0 (Lambin et al., CancerData doi:10.17195/candat.2016.08.1); pycerr code: GPL",
        ),
        Source(
            "tptbox", "pypi", "tptbox", "1.1.0", "tptbox-1.1.0-py3-none-any.whl",
            "975a68f4117ab81fcc2d819d6127f301b1cc50210e08e73df1b9a818ee3be984",
            "Apache-2.0 (package metadata; the data provenance is not documented)",
        ),
        Source(
            "mricron", "deb", "mricron-data", "1.2.20211006+dfsg-4", "mricron-data_1.2.20211006+dfsg-4_all.deb",
            "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
            "BSD-3-Clause (Debian copyright, C. Rorden); AAL: cite Tzourio-Mazoyer 2002 (GIN terms); "
            "Colin27: MNI/McGill permissive notice",
            url="https://deb.debian.org/debian/pool/main/m/mricron/mricron-data_1.2.20211006+dfsg-4_all.deb",
        ),
        Source(
            "pydicom-data", "pypi", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
            "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
            "MIT (pydicom-data package); the test images come from public DICOM sample sets",
        ),
    )
}

#: single files of the pydicom-data wheel (``data_store/data/``) the tests use, each made a one-slice series folder:
#: the same 512 x 512 CT slice and the same 1024 x 1024 MR slice, uncompressed and JPEG 2000 lossless
PYDICOM_DATA_FILES = ("693_UNCR.dcm", "693_J2KR.dcm", "MR2_UNCR.dcm", "MR2_J2KR.dcm")
#: single files inside the installed pydicom wheel (``pydicom/data/test_files``, no download): one CT slice and the same
#: 64 x 64 MR slice in several transfer syntaxes
PYDICOM_TEST_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
)


# ------------------------------------------------------------------------------------------------------------ helpers


def corpus_root() -> Path:
    """``$XATTNRES_CORPUS`` if set, else ``~/.cache/xattnres_monai/corpus``."""
    env = os.environ.get(CORPUS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xattnres_monai" / "corpus"


def require_corpus() -> bool:
    """``XATTNRES_REQUIRE_CORPUS`` is set to a true value (CI): a fetch failure fails the test instead of skipping."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            list(command), cwd=str(cwd), capture_output=True, text=True, timeout=_TIMEOUT_S,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except FileNotFoundError as err:
        raise CorpusError(f"{command[0]} not found ({err})") from None
    except subprocess.TimeoutExpired:
        raise CorpusError(f"{' '.join(command)} took more than {_TIMEOUT_S} s") from None


def _tail(result: subprocess.CompletedProcess, lines: int = 6) -> str:
    """The ERROR / E: lines of a command's output, else its last ``lines`` lines, on one line."""
    text = [line.strip() for line in ((result.stderr or "") + (result.stdout or "")).strip().splitlines()]
    errors = [line for line in text if line.startswith(("ERROR", "E:", "error"))]
    return " | ".join((errors or text)[-lines:]) or f"exit status {result.returncode}"


def _download_wheel(source: Source, into: Path) -> Path:
    result = _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(into),
         f"{source.package}=={source.version}"],
        into,
    )
    path = into / source.filename
    if result.returncode != 0 or not path.is_file():
        raise CorpusError(f"pip download {source.package}=={source.version} failed: {_tail(result)}")
    return path


def _download_deb(source: Source, into: Path) -> Path:
    spec = f"{source.package}={source.version}"
    problems: List[str] = []
    if shutil.which("apt-get"):
        result = _run(["apt-get", "download", spec], into)
        if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            _run(["apt-get", "update"], into)  # a fresh container has no package lists
            result = _run(["apt-get", "download", spec], into)
        if result.returncode == 0 and (into / source.filename).is_file():
            return into / source.filename
        problems.append(f"apt-get download {spec} failed: {_tail(result, 3)}")
        policy = _run(["apt-cache", "policy", source.package], into) if shutil.which("apt-cache") else None
        if policy is not None and policy.stdout.strip():
            problems.append("apt offers: " + " ".join(policy.stdout.split()))
    else:
        problems.append("apt-get not found")
    if source.url:  # the same pinned file straight from the Debian pool (sha256-checked like the rest)
        try:
            with urllib.request.urlopen(source.url, timeout=120) as response, open(into / source.filename, "wb") as out:
                shutil.copyfileobj(response, out)
            return into / source.filename
        except OSError as err:
            problems.append(f"{source.url}: {err}")
    raise CorpusError("; ".join(problems))


def _extract_pycerr(archive: Path, target: Path) -> None:
    """``pat_N/ct/DCM_IMG_*.dcm`` (only the CT slices) and ``pat_N/rtstruct/DCM_RS_*.dcm``, + README_LICENSE.txt."""
    prefix = "cerr/datasets/radiomics_phantom_dicom/"
    with zipfile.ZipFile(archive) as wheel:
        for member in wheel.namelist():
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            parts = member[len(prefix):].split("/")
            if parts == ["README_LICENSE.txt"]:
                out = target / "README_LICENSE.txt"
            elif len(parts) == 2 and parts[0].startswith("pat_") and parts[1].startswith("DCM_IMG_"):
                out = target / parts[0] / "ct" / parts[1]
            elif len(parts) == 2 and parts[0].startswith("pat_") and parts[1].startswith("DCM_RS_"):
                out = target / parts[0] / "rtstruct" / parts[1]
            else:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(wheel.read(member))
    patients = sorted(p.name for p in target.glob("pat_*"))
    if patients != ["pat_1", "pat_2", "pat_3", "pat_4"]:
        raise CorpusError(f"{archive.name}: expected pat_1..pat_4, found {patients}")
    for patient in patients:
        if len(list((target / patient / "rtstruct").glob("DCM_RS_*.dcm"))) != 1:
            raise CorpusError(f"{archive.name}: {patient} does not hold exactly one RTSTRUCT")


def _extract_tptbox(archive: Path, target: Path) -> None:
    """``sample_ct/*.nii.gz`` and ``sample_mri/*.nii.gz``."""
    prefix = "TPTBox/tests/"
    with zipfile.ZipFile(archive) as wheel:
        for member in wheel.namelist():
            rest = member[len(prefix):] if member.startswith(prefix) else ""
            if rest.startswith(("sample_ct/", "sample_mri/")) and rest.endswith(".nii.gz"):
                out = target / rest
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(wheel.read(member))


def _extract_pydicom_data(archive: Path, target: Path) -> None:
    """Each file of :data:`PYDICOM_DATA_FILES` in a folder of its own (a one-slice series): ``<stem>/<file>``."""
    with zipfile.ZipFile(archive) as wheel:
        for name in PYDICOM_DATA_FILES:
            out = target / Path(name).stem / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(wheel.read(f"data_store/data/{name}"))
        (target / "LICENSE").write_bytes(wheel.read("pydicom_data-1.0.0.dist-info/LICENSE"))


def _extract_mricron(archive: Path, target: Path) -> None:
    """``templates/`` of the package (ch2, ch2bet, aal, brodmann, ...) and Debian's copyright file."""
    unpacked = target / "_deb"
    result = _run(["dpkg-deb", "-x", str(archive), str(unpacked)], target) if shutil.which("dpkg-deb") else None
    if result is None or result.returncode != 0:
        raise CorpusError(f"dpkg-deb -x {archive.name} failed" + (f": {_tail(result)}" if result else ": no dpkg-deb"))
    shutil.move(str(unpacked / "usr/share/mricron/templates"), str(target / "templates"))
    copyright_file = unpacked / "usr/share/doc/mricron-data/copyright"
    if copyright_file.is_file():
        shutil.copy(str(copyright_file), str(target / "copyright"))
    shutil.rmtree(unpacked)


_EXTRACTORS: Dict[str, Callable[[Path, Path], None]] = {
    "pycerr": _extract_pycerr,
    "tptbox": _extract_tptbox,
    "mricron": _extract_mricron,
    "pydicom-data": _extract_pydicom_data,
}


def _publish(temporary: Path, final: Path) -> Path:
    """Rename ``temporary`` to ``final``; if another process won the race, keep its copy."""
    (temporary / _DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    try:
        os.rename(temporary, final)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not (final / _DONE).is_file():
            raise
    return final


def fetch(name: str) -> Path:
    """The extracted folder of source ``name`` (a key of :data:`SOURCES`, or ``"pydicom"``), fetching it if needed.

    Raises:
        CorpusError: download failed (no network, registry error), sha256 mismatch, extraction failed.
    """
    if name == "pydicom":
        return _pydicom_series_root()
    if name not in SOURCES:
        raise KeyError(f"unknown corpus source {name!r}; known: {sorted(SOURCES) + ['pydicom']}")
    source = SOURCES[name]
    root = corpus_root()
    final = root / source.folder
    if (final / _DONE).is_file():
        return final
    if final.exists():  # left by an older, incompatible layout: replace it
        shutil.rmtree(final)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".download-{name}-", dir=str(root)) as download_dir:
        download = Path(download_dir)
        archive = _download_wheel(source, download) if source.kind == "pypi" else _download_deb(source, download)
        digest = _sha256(archive)
        if digest != source.sha256:
            raise CorpusIntegrityError(
                f"sha256 MISMATCH for {source.filename}: got {digest}, expected {source.sha256}. "
                "Refusing to use it: the registry served different bytes for a pinned version."
            )
        temporary = Path(tempfile.mkdtemp(prefix=f".extract-{name}-", dir=str(root)))
        try:
            _EXTRACTORS[name](archive, temporary)
            (temporary / "SOURCE.txt").write_text(
                f"{source.package}=={source.version} ({source.kind}) {source.filename}\nsha256 {source.sha256}\n"
                f"licence: {source.licence}\n"
            )
            return _publish(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


def _pydicom_series_root() -> Path:
    """One-slice series folders made from files inside the installed pydicom wheel (nothing is downloaded)."""
    import pydicom
    from pydicom.data import get_testdata_file

    final = corpus_root() / f"pydicom-{pydicom.__version__}"
    if (final / _DONE).is_file():
        return final
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".extract-pydicom-", dir=str(final.parent)))
    try:
        for name in PYDICOM_TEST_FILES:
            path = get_testdata_file(name, download=False)  # these ship inside the wheel: never a download
            if path is None:
                raise CorpusError(f"{name} is not inside the installed pydicom {pydicom.__version__}")
            out = temporary / Path(name).stem / name
            out.parent.mkdir(parents=True)
            shutil.copy(str(path), str(out))
        return _publish(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def fetch_all(names: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """Fetch every source (or ``names``); ``{name: folder}``. Raises :class:`CorpusError` naming every failure."""
    folders: Dict[str, Path] = {}
    errors: List[str] = []
    for name in names or [*SOURCES, "pydicom"]:
        try:
            folders[name] = fetch(name)
        except CorpusError as err:
            errors.append(f"{name}: {err}")
    if errors:
        raise CorpusError("; ".join(errors))
    return folders


T = TypeVar("T")


def obtain(getter: Callable[..., T], *args, **kwargs) -> T:
    """``getter(*args, **kwargs)`` under the test policy: a :class:`CorpusError` fails the test if
    ``XATTNRES_REQUIRE_CORPUS=1`` (CI), else skips it with the reason; a sha256 mismatch always fails it."""
    import pytest

    try:
        return getter(*args, **kwargs)
    except CorpusIntegrityError as err:
        message = f"real-file corpus REFUSED: {err}"
        integrity = True
    except CorpusError as err:
        message = f"real-file corpus unavailable: {err}"
        integrity = False
    if integrity:
        pytest.fail(message, pytrace=False)
    if require_corpus():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


# ---------------------------------------------------------------------------------------------------- the test items


def _existing(path: Path) -> Path:
    if not path.exists():
        raise CorpusError(f"{path} is missing from the corpus cache (delete {path.parent} to fetch it again)")
    return path


def pycerr_patients() -> List[str]:
    return ["pat_1", "pat_2", "pat_3", "pat_4"]


def pycerr_series() -> List[Path]:
    """The 4 CT series folders (``.../pat_N/ct``), each holding only the ``DCM_IMG_*.dcm`` slices of one patient."""
    root = fetch("pycerr")
    return [_existing(root / patient / "ct") for patient in pycerr_patients()]


def pycerr_rtstruct(patient: str) -> Path:
    """The RTSTRUCT (ROI ``GTV-1``) of ``patient`` (``"pat_1"`` .. ``"pat_4"``, or 1..4)."""
    if isinstance(patient, int) or str(patient).isdigit():
        patient = f"pat_{int(patient)}"
    folder = _existing(fetch("pycerr") / str(patient) / "rtstruct")
    return next(folder.glob("DCM_RS_*.dcm"))


def tptbox_ct() -> Path:
    """Spine CT, 73 x 47 x 73, 1.5 mm, PIR."""
    return _existing(fetch("tptbox") / "sample_ct" / "sub-ct_label-22_ct.nii.gz")


def tptbox_ct_vert_mask() -> Path:
    """Vertebra labels {21, 22, 23} on the grid of :func:`tptbox_ct`."""
    return _existing(fetch("tptbox") / "sample_ct" / "sub-ct_seg-vert_label-22_msk.nii.gz")


def tptbox_ct_subreg_mask() -> Path:
    """Vertebral sub-region labels {41..50} on the grid of :func:`tptbox_ct`."""
    return _existing(fetch("tptbox") / "sample_ct" / "sub-ct_seg-subreg_label-22_msk.nii.gz")


def tptbox_mr() -> Path:
    """Spine T2w MR, 68 x 52 x 67, 1.5 mm."""
    return _existing(fetch("tptbox") / "sample_mri" / "sub-mri_label-6_T2w.nii.gz")


def tptbox_mr_vert_mask() -> Path:
    """Labels {5, 6, 7, 105, 106, 205, 206, 207} on the grid of :func:`tptbox_mr`."""
    return _existing(fetch("tptbox") / "sample_mri" / "sub-mri_seg-vert_label-6_msk.nii.gz")


def mricron_ch2() -> Path:
    """Colin27 T1, 181 x 217 x 181, 1 mm, RAS, uint8."""
    return _existing(fetch("mricron") / "templates" / "ch2.nii.gz")


def mricron_ch2bet() -> Path:
    """Skull-stripped :func:`mricron_ch2` (brain = ``> 0``)."""
    return _existing(fetch("mricron") / "templates" / "ch2bet.nii.gz")


def mricron_aal() -> Path:
    """AAL atlas, labels 1..116 on the grid of :func:`mricron_ch2` (identical affine)."""
    return _existing(fetch("mricron") / "templates" / "aal.nii.gz")


def mricron_aal_names() -> Path:
    """``aal.nii.txt``: one line per label, ``index name code``."""
    return _existing(fetch("mricron") / "templates" / "aal.nii.txt")


def pydicom_data_series(name: str) -> Path:
    """The one-slice series folder of a :data:`PYDICOM_DATA_FILES` file (``"693_J2KR"`` or ``"693_J2KR.dcm"``)."""
    return _existing(fetch("pydicom-data") / Path(name).stem)


def pydicom_series(name: str) -> Path:
    """The one-slice series folder of a :data:`PYDICOM_TEST_FILES` file (from the installed pydicom wheel)."""
    return _existing(fetch("pydicom") / Path(name).stem)


# ------------------------------------------------------------------------------------------------------ command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "fetch"
    if command == "where":
        print(corpus_root())
        return 0
    if command != "fetch":
        print("usage: python -m tests.corpus [fetch [NAME ...] | where]", file=sys.stderr)
        return 2
    names = argv[1:] or [*SOURCES, "pydicom"]
    failed = False
    for name in names:
        start = time.monotonic()
        try:
            folder = fetch(name)
        except (CorpusError, KeyError) as err:
            print(f"FAILED {name}: {err}", file=sys.stderr)
            failed = True
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{name:13s} {folder}  ({size / 1e6:.1f} MB, {time.monotonic() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
