"""Every ``--key value`` override the docs give reaches the bundle as meant, through the real MONAI bundle CLI.

``python -m monai.bundle run ... --network_def#skip false`` passes the *string* ``"false"`` (fire parses only
``True`` / ``False`` as literals); when it was taken for its truthiness, "replace" trained the "both" network and
"no skip" the baseline, silently. This test greps the overrides out of README.md and bundles/*/docs/README.md
(a newly documented override is picked up automatically) and runs each through ``monai.bundle``'s command line:

* ``--network_def#...`` overrides (with the config files documented alongside, e.g. the EMCAD / DCA overlays)
  and every documented network overlay on its own: the network the CLI builds must have the parameter count and
  routing attributes of the same configuration built in-process with proper Python values, and must differ
  from the bundle's default network wherever the override changes a value;
* overrides of top-level bool keys (``--resume false``, ``--overwrite True`` ...): the value the CLI passes
  must mean what the docs say;
* overrides of other top-level keys the config defines (``--tta_flip_axes "[0,1]"``, ``--min_size 50``): the
  value the CLI passes must be the documented literal (a list as a list, a number as a number);
* overrides of a component's option (``--train#handlers#2#mode norm``): the component built by the CLI has it;
  a whole list item replaced (``--preprocessing#transforms#4 "{'_target_': 'Spacingd', ...}"``): the CLI builds
  that class there;
* any other key must be listed in :data:`NOT_CHECKED` (paths, data, numbers), else the test fails.

The CLI is ``monai.bundle``'s ``__main__`` module (fire parsing ``sys.argv``), run with :mod:`runpy` several
times per process to save the interpreter and import start-up (~8 s); one case also runs as a plain
``python -m monai.bundle run`` subprocess to show that both give the same.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parent.parent for p in ROOT.glob("bundles/*/docs/README.md"))
DOCS = [ROOT / "README.md"] + [b / "docs" / "README.md" for b in BUNDLES]

#: arguments of ``monai.bundle run`` itself, not config overrides.
RUN_ARGUMENTS = {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id"}

#: documented keys whose value is a path, a name or a number for data / logging: not checked here (with why).
NOT_CHECKED = {
    "datalist": "a data file",
    "dataset_dir": "a data folder",
    "output_dir": "an output folder",
    "bundle_root": "a folder",
    "pretrained_path": "a local weights file (placeholder path in the docs)",
    "tracking_uri": "an MLflow location",
    "experiment_name": "an MLflow name",
    "run_name": "an MLflow name",
    "eval_split": "a datalist section name",
    "hu_window": "a list literal, parsed by fire",
    "cache_rate": "a number, parsed by fire",
    "batch_size": "a number, parsed by fire",
    "max_epochs": "a number, parsed by fire",
    "val_interval": "a number, parsed by fire",
    # options of other commands that the docs quote inline, not bundle overrides
    "input_shape": "an argument of monai.bundle ckpt_export / onnx_export",
    "labels": "an option of the label-mapping tool (argparse)",
    "onto": "an option of the label-mapping tool (argparse)",
    "window": "an option of the data-preparation tool (argparse)",
    "bundle": "an option of the label server / bundle-copy tool (argparse)",
    "set": "an option of python -m xattnres_monai predict (argparse), taking key=value overrides",
}

#: the routing configurations that must stay documented for every bundle (typed network overrides).
REQUIRED = {
    "baseline": {"xattnres": "none"},
    "no skip": {"skip": False, "xattnres": "none"},
    "replace": {"skip": False, "xattnres": "full"},
    "encoder only": {"xattnres": "encoder"},
    "decoder only": {"xattnres": "decoder"},
}

SPAN = re.compile(r"`([^`]+)`")
OVERRIDE = re.compile(r"--([A-Za-z_][\w#]*)\s+(\"[^\"]*\"|'[^']*'|[^\s`\\]+)")
CONFIG_LIST = re.compile(r"\"(\[[^\"]*configs/[^\"]*\])\"")


def unquoted(value: str) -> str:
    """The argument as the shell passes it: ``"[0,1]"`` -> ``[0,1]``."""
    return shlex.split(value)[0] if value[:1] in "\"'" else value


def typed(value: str) -> Any:
    """The value as the docs mean it: ``false`` / ``True`` as bools, numbers as numbers, lists as lists."""
    value = unquoted(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def doc_groups() -> List[Tuple[str, str, List[Tuple[str, str]], Optional[List[str]]]]:
    """(doc, where, [(key, value)], config files) for every documented override group.

    A group is one ``monai.bundle run`` command (code-block lines joined at ``\\``), or the inline code of
    one markdown line: the ``--key value`` spans of a table row or sentence, with a ``"['configs/...']"``
    span of the same line as its config files. ``--key a`` / ``b`` on one line documents ``--key b`` too.
    """
    groups = []
    for doc in DOCS:
        rel = str(doc.relative_to(ROOT))
        text = doc.read_text(encoding="utf-8")
        in_block = False
        joined = ""
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            if in_block:
                joined += line.rstrip().rstrip("\\") + " "
                if line.rstrip().endswith("\\"):
                    continue
                command, joined = joined, ""
                if "monai.bundle run" in command:
                    args = re.split(r"\s#\s", command.split("monai.bundle run", 1)[1])[0]  # no shell comment
                    pairs = OVERRIDE.findall(args)
                    files = CONFIG_LIST.search(args)
                    groups.append((rel, f"{rel}:{number}", pairs, _config_list(files)))
                continue
            spans = SPAN.findall(line)
            pairs: List[Tuple[str, str]] = []
            files = None
            for i, span in enumerate(spans):
                span = span.strip()
                if "monai.bundle run" in span:
                    span = span.split("monai.bundle run", 1)[1]
                elif not span.startswith("--"):
                    if CONFIG_LIST.fullmatch(span):
                        files = _config_list(CONFIG_LIST.fullmatch(span))
                    continue
                found = OVERRIDE.findall(span)
                pairs.extend(found)
                # "`--network_def#xattnres encoder` / `decoder`": the same key with the other value
                if found and i + 1 < len(spans):
                    alternative = spans[i + 1].strip()
                    pattern = re.escape(f"`{spans[i]}`") + r"\s*/\s*" + re.escape(f"`{spans[i + 1]}`")
                    if re.fullmatch(r"[\w.-]+", alternative) and re.search(pattern, line):
                        groups.append((rel, f"{rel}:{number}", [(found[-1][0], alternative)], files))
            if pairs:
                groups.append((rel, f"{rel}:{number}", pairs, files))
    return groups


def _config_list(match: Optional[re.Match]) -> Optional[List[str]]:
    if match is None:
        return None
    return [os.path.relpath(p, ".") for p in ast.literal_eval(match.group(1))]


def bundles_for(doc: str) -> List[Path]:
    """The bundles a doc's overrides apply to: its own, or every bundle for the top-level README."""
    if doc == "README.md":
        return BUNDLES
    return [ROOT / Path(doc).parent.parent]


def config_defining(bundle: Path, key: str) -> Optional[str]:
    for name in ["train.json", "evaluate.json", "inference.json"] + sorted(
        p.name for p in (bundle / "configs").glob("*.json")
    ):
        path = bundle / "configs" / name
        if path.is_file() and key in json.loads(path.read_text()):
            return f"configs/{name}"
    return None


def load_config(bundle: Path, files: List[str]) -> Dict[str, Any]:
    """The merged config files, with ``"a#b": v`` entries of later files set inside ``a`` (as MONAI merges)."""
    merged: Dict[str, Any] = {}
    for f in files:
        for key, value in json.loads((bundle / f).read_text()).items():
            *path, last = key.split("#")
            target = merged
            for part in path:
                target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
            if isinstance(target, list):
                target[int(last)] = value
            else:
                target[last] = value
    return merged


def network_overlays(bundle: Path) -> List[List[str]]:
    """Documented config-file lists whose extra files change ``network_def`` (the DCA / EMCAD overlays)."""
    lists = []
    for doc in DOCS:
        for match in CONFIG_LIST.finditer(doc.read_text(encoding="utf-8")):
            files = _config_list(match)
            if not files or not all((bundle / f).is_file() for f in files) or files in lists:
                continue
            if any(k.startswith("network_def") for f in files[1:] for k in json.loads((bundle / f).read_text())):
                lists.append(files)
    return lists


# ------------------------------------------------------------------------------------------ the network check

#: the fingerprint of a built network, as one ``$`` expression of the bundle config (``NET`` = the network).
FINGERPRINT = (
    "(lambda net: {'class': type(net).__name__, 'params': sum(p.numel() for p in net.parameters()), "
    "'skip': getattr(net, 'skip', None), 'xattnres': getattr(net, 'xattnres', None), "
    "'dca': getattr(net, 'dca', None) is not None, "
    "'deep_supervision': getattr(net, 'deep_supervision', None), "
    "'query_init': sorted(set(str(m.query_init) for m in net.modules() if hasattr(m, 'query_init')))})(NET)"
)


_BUILT: Dict[str, Dict[str, Any]] = {}


def fingerprint_in_process(bundle: Path, files: List[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The same configuration built in this process with proper Python values (no command line involved).

    Bundles with the same network definition share one build (EMCAD takes ~3 s to initialise).
    """
    from monai.bundle import ConfigParser

    config = load_config(bundle, files)
    network = dict(config["network_def"], **{k.split("#", 1)[1]: v for k, v in overrides.items()})
    refs = {k: config.get(k) for k in re.findall(r"@(\w+)", json.dumps(network))}
    key = json.dumps([network, refs], sort_keys=True)
    if key in _BUILT:
        return _BUILT[key]

    parser = ConfigParser()
    parser.read_config([str(bundle / f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    _BUILT[key] = eval(FINGERPRINT.replace("NET", "net"), {}, {"net": net})
    return _BUILT[key]


DRIVER = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback
    cases = json.loads(sys.argv[1])
    for case in cases:
        os.chdir(case["cwd"])
        sys.argv = ["monai.bundle"] + case["argv"]
        print("@@CASE", case["id"], flush=True)
        try:
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=False)
        except BaseException as error:  # SystemExit of fire included: report, go on with the next case
            message = " ".join(traceback.format_exception_only(type(error), error))
            print("@@ERROR", json.dumps({"id": case["id"], "error": message}))
        sys.stdout.flush()
    """
)


def cli_case(case_id: str, files: List[str], pairs: List[Tuple[str, str]], expression: str) -> Dict[str, Any]:
    """Arguments of ``monai.bundle run`` as a shell user types them: the documented strings, unchanged."""
    config = files[0] if len(files) == 1 else repr(files)
    # no '@' in the marker (it marks a reference), no "import" (MONAI then parses the raw text as an import)
    run = repr([f"$print('=RESULT=', repr({expression}))"])
    argv = ["run", "--config_file", config, "--run", run, "--initialize", "[]", "--finalize", "[]"]
    for key, value in pairs:
        argv += [f"--{key}", unquoted(value)]
    return {"id": case_id, "argv": argv}


def run_driver(cases: List[Dict[str, Any]]) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=600
    )
    return parse_results(proc.stdout, proc.stderr)


def parse_results(stdout: str, stderr: str) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("@@CASE "):
            current = line.split(" ", 1)[1]
        elif line.startswith("=RESULT= ") and current is not None:
            results[current] = ast.literal_eval(line.split(" ", 1)[1])
        elif line.startswith("@@ERROR "):
            error = json.loads(line.split(" ", 1)[1])
            results[error["id"]] = {"error": error["error"]}
    results["__stderr__"] = stderr[-3000:]
    return results


def build_cases() -> Tuple[Dict[str, List[Dict[str, Any]]], Dict[str, Tuple[Path, List[str], Dict[str, Any], str]]]:
    """CLI cases per bundle, and for each case what to compare with: (bundle, files, typed overrides, kind)."""
    per_bundle: Dict[str, List[Dict[str, Any]]] = {}
    expect: Dict[str, Tuple[Path, List[str], Dict[str, Any], str]] = {}
    unknown = []

    def add(bundle: Path, files: List[str], pairs: List[Tuple[str, str]], kind: str, expression: str, where: str):
        case_id = f"{bundle.name}|{' '.join(files)}|{' '.join(f'--{k} {v}' for k, v in pairs)}|{kind}"
        if case_id in expect:
            return
        expect[case_id] = (bundle, files, {k: typed(v) for k, v in pairs}, kind)
        case = cli_case(case_id, files, pairs, expression)
        case["cwd"] = str(bundle)
        case["where"] = where
        per_bundle.setdefault(bundle.name, []).append(case)

    for bundle in BUNDLES:
        add(bundle, ["configs/train.json"], [], "network", FINGERPRINT.replace("NET", "@network_def"), "default")
        for files in network_overlays(bundle):
            add(bundle, files, [], "network", FINGERPRINT.replace("NET", "@network_def"), "overlay")
    for doc, where, pairs, documented_files in doc_groups():
        for bundle in bundles_for(doc):
            # config files of another layout (``bundles/<name>/configs/...``, a user's copy): the bundle's own
            own = documented_files and all((bundle / f).is_file() for f in documented_files)
            files = documented_files if own else None
            network = [(k, v) for k, v in pairs if k.startswith("network_def#")]
            if network:
                config = files or ["configs/train.json"]
                if all((bundle / f).is_file() for f in config):
                    add(bundle, config, network, "network", FINGERPRINT.replace("NET", "@network_def"), where)
            for key, value in pairs:
                if key.startswith("network_def#") or key in RUN_ARGUMENTS or key in NOT_CHECKED:
                    continue
                if "#" in key:  # an option of a component: build the component, read the option back
                    parent, option = key.rsplit("#", 1)
                    config = files or [config_defining(bundle, key.split("#")[0])]
                    if config[0] is None:
                        unknown.append(f"{where}: --{key} (no config of {bundle.name} defines it)")
                        continue
                    if option.isdigit() and isinstance(typed(value), dict):  # a whole component replaced
                        add(bundle, config, [(key, value)], "replaced", f"type(@{key}).__name__", where)
                        continue
                    expression = f"getattr(@{parent}, {option!r}, None)"
                    add(bundle, config, [(key, value)], "component", expression, where)
                    continue
                default_file = files[0] if files else config_defining(bundle, key)
                defaults = load_config(bundle, files) if files else (
                    json.loads((bundle / default_file).read_text()) if default_file else {}
                )
                if isinstance(defaults.get(key), bool):
                    expression = f"xattnres_monai.utils.options.as_bool(@{key}, {key!r})"  # as the handlers read it
                    add(bundle, files or [default_file], [(key, value)], "bool", expression, where)
                elif doc == "README.md" and key not in defaults:
                    continue  # a top-level README override for other bundles only
                elif key in defaults:  # another top-level option (a list, a name, a size): the value as documented
                    add(bundle, files or [default_file], [(key, value)], "value", f"@{key}", where)
                else:
                    unknown.append(f"{where}: --{key} {value}")
    build_cases.unknown = unknown  # type: ignore[attr-defined]
    return per_bundle, expect


@pytest.fixture(scope="module")
def cli_results():
    per_bundle, expect = build_cases()
    # two processes (two cores), each running the cases of half of the bundles
    chunks: List[List[Dict[str, Any]]] = [[], []]
    for cases in sorted(per_bundle.values(), key=len, reverse=True):
        min(chunks, key=len).extend(cases)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(run_driver, [c for c in chunks if c]))
    results: Dict[str, Any] = {}
    for out in outputs:
        stderr = out.pop("__stderr__")
        for case_id, result in out.items():
            results[case_id] = result
        results.setdefault("__stderr__", []).append(stderr)
    return per_bundle, expect, results


def test_every_documented_override_key_is_checked_or_listed():
    _, expect = build_cases()
    assert not build_cases.unknown, (  # type: ignore[attr-defined]
        "documented overrides this test does not know how to check; check them or add the key to NOT_CHECKED: "
        + "; ".join(build_cases.unknown)  # type: ignore[attr-defined]
    )
    for bundle in BUNDLES:
        documented = [o for (b, files, o, kind) in expect.values() if b == bundle and kind == "network"]
        plain = [{k.split("#", 1)[1]: v for k, v in o.items()} for o in documented]
        for name, overrides in REQUIRED.items():
            assert overrides in plain, f"{bundle.name}: the '{name}' configuration is no longer documented"
        overlays = [files for (b, files, o, kind) in expect.values() if b == bundle and len(files) > 1]
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        if len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 2:  # DCA and EMCAD are 2D networks
            assert any("configs/dca.json" in f for f in overlays) and any("configs/emcad.json" in f for f in overlays)
        else:
            assert not (bundle / "configs" / "dca.json").exists() and not (bundle / "configs" / "emcad.json").exists()


def test_documented_overrides_build_what_they_say_through_the_cli(cli_results):
    per_bundle, expect, results = cli_results
    failures = []
    defaults: Dict[Tuple[str, Tuple[str, ...]], Dict[str, Any]] = {}
    for cases in per_bundle.values():
        for case in cases:
            bundle, files, overrides, kind = expect[case["id"]]
            got = results.get(case["id"])
            shown = f"{case['where']}: {bundle.name} {case['argv'][2]} {' '.join(case['argv'][9:])}"
            if got is None or isinstance(got, dict) and "error" in got:
                failures.append(f"{shown}: no result ({(got or {}).get('error')})")
                continue
            if kind == "network":
                wanted = fingerprint_in_process(bundle, files, overrides)
                if not overrides:
                    defaults[(bundle.name, tuple(files))] = wanted
                if got != wanted:
                    failures.append(f"{shown}: CLI built {got}, expected {wanted}")
                base = defaults.get((bundle.name, tuple(files))) or fingerprint_in_process(bundle, files, {})
                config = load_config(bundle, files)["network_def"]
                changes = {k: v for k, v in overrides.items() if config.get(k.split("#", 1)[1]) != v}
                if changes and got == base:
                    failures.append(f"{shown}: the override {changes} changed nothing (same network as the default)")
            elif kind == "bool":
                (value,) = overrides.values()
                if got is not value:
                    failures.append(f"{shown}: the CLI value means {got!r}, the docs mean {value!r}")
            elif kind == "replaced":
                (value,) = overrides.values()
                if got != value["_target_"].rsplit(".", 1)[-1]:
                    failures.append(f"{shown}: the CLI built a {got}, the docs mean a {value['_target_']}")
            elif kind == "value":
                (value,) = overrides.values()
                if got != value or type(got) is not type(value):
                    failures.append(f"{shown}: the CLI passes {got!r}, the docs mean {value!r}")
            else:  # component option
                (value,) = overrides.values()
                if got != value:
                    failures.append(f"{shown}: the component has {got!r}, the docs mean {value!r}")
    assert not failures, "\n".join(failures) + "\n" + "\n".join(results.get("__stderr__", []))[-2000:]


def test_runpy_driver_matches_a_plain_cli_process():
    """The in-process driver runs the very ``python -m monai.bundle run`` of a shell: compare one case."""
    bundle = BUNDLES[0]
    case = cli_case("plain", ["configs/train.json"], [("network_def#skip", "false"), ("network_def#xattnres", "none")],
                    FINGERPRINT.replace("NET", "@network_def"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle"] + case["argv"], cwd=bundle, capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("=RESULT= "))
    got = ast.literal_eval(line.split(" ", 1)[1])
    assert got == fingerprint_in_process(bundle, ["configs/train.json"], {"network_def#skip": False,
                                                                          "network_def#xattnres": "none"})
    assert got["skip"] is False and got["xattnres"] == "none"
    print(shlex.join([sys.executable, "-m", "monai.bundle"] + case["argv"]))
