"""TorchScript and ONNX export of every bundle's default network with the MONAI bundle CLI.

For each bundle (``bundles/*/configs/inference.json``) a checkpoint of the freshly initialised network is
written, with the zero-initialised XAttnRes pseudo-queries perturbed so that the attention is not uniform; then
``python -m monai.bundle ckpt_export`` (script mode) and ``onnx_export`` (dynamic batch) run as a user would run
them, and the exported models must reproduce the eager network (max abs diff < 1e-4, relative to the largest logit where that exceeds 1): TorchScript at the
metadata's spatial shape and at another (non-square) size, ONNX (onnxruntime) at the metadata's shape with two
batch sizes. The TorchScript file must carry the bundle metadata and the inference config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.parents[1] for p in ROOT.glob("bundles/*/configs/inference.json"))
TOLERANCE = 1e-4


def _cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", *args], check=False, capture_output=True,
                            encoding="utf-8", errors="replace", cwd=str(ROOT), timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")


def _network(configs: Path) -> torch.nn.Module:
    """The bundle's ``network_def``, parsed the way the export commands parse it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.read_meta(str(configs / "metadata.json"))
    return parser.get_parsed_content("network_def", instantiate=True)


def _non_trivial_checkpoint(configs: Path, path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    net = _network(configs)
    queries = [p for name, p in net.named_parameters() if name.rsplit(".", 1)[-1] == "query"]
    assert queries, "no XAttnRes pseudo-queries found in the default network"
    with torch.no_grad():
        for p in queries:
            p.normal_(0.0, 1.0)  # zero init gives uniform attention: make the routing matter
    torch.save(net.state_dict(), path)
    return net.eval()


# networks already compared in this session: bundles with the same network (resolved ``network_def``) and input
# format share one comparison (the three 2D bundles use the same U-Net); each bundle's own export is still checked
_COMPARED: set = set()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_exports_carry_metadata_and_reproduce_eager(bundle, tmp_path):
    from monai.data import load_net_with_metadata

    configs = bundle / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    channels, shape = int(image["num_channels"]), [int(s) for s in image["spatial_shape"]]
    out_channels = int(meta["network_data_format"]["outputs"]["pred"]["num_channels"])
    ckpt = tmp_path / "model.pt"
    net = _non_trivial_checkpoint(configs, ckpt)
    common = ["--ckpt_file", str(ckpt), "--meta_file", str(configs / "metadata.json"),
              "--config_file", str(configs / "inference.json")]
    _cli("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), *common)

    scripted, ts_meta, extra = load_net_with_metadata(str(tmp_path / "model.ts"), more_extra_files=["inference.json"])
    scripted.eval()
    signature = json.dumps([repr(net), channels, shape, out_channels])
    if signature not in _COMPARED:
        _COMPARED.add(signature)
        _compare_with_eager(net, scripted, tmp_path, common, channels, shape, out_channels)

    # the TorchScript file carries the bundle metadata and the config it was exported with
    assert json.loads(extra["inference.json"]) == json.loads((configs / "inference.json").read_text())
    changed = {k: (meta.get(k), ts_meta.get(k)) for k in set(meta) | set(ts_meta) if meta.get(k) != ts_meta.get(k)}
    # (MONAI's config parser rewrites "#" to "::" in every string it parses, metadata included: no "#" in metadata)
    assert not changed, f"metadata in the TorchScript file differs from metadata.json (exported, original): {changed}"


def _compare_with_eager(net, scripted, tmp_path, common, channels, shape, out_channels) -> None:
    import onnxruntime

    _cli("onnx_export", "network_def", "--filepath", str(tmp_path / "model.onnx"), *common, "--converter_kwargs",
         "{'input_names': ['image'], 'output_names': ['pred'], "
         "'dynamic_axes': {'image': {0: 'batch'}, 'pred': {0: 'batch'}}}")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]

    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, channels, *shape, generator=generator)
    other = (64, 96) if len(shape) == 2 else (64, 96, 32)  # another, non-cubic size: TorchScript takes any size
    small = torch.rand(1, channels, *other, generator=generator)
    with torch.no_grad():
        eager, eager_small = net(x), net(small)
        ts_out, ts_small = scripted(x[:1]), scripted(small)
    (onnx_out,) = session.run(None, {"image": x.numpy()})  # batch 2 through the dynamic batch axis
    assert eager.shape == (2, out_channels, *shape) and eager_small.shape == (1, out_channels, *other)
    assert float(eager.std()) > 1e-3, "degenerate output: the comparison would prove nothing"
    assert onnx_out.shape == tuple(eager.shape)
    diffs = {
        "torchscript": (ts_out - eager[:1]).abs().max().item(),
        f"torchscript {'x'.join(map(str, other))}": (ts_small - eager_small).abs().max().item(),
        "onnx (batch 2)": float(np.abs(onnx_out - eager.numpy()).max()),
    }
    # absolute for outputs of order 1, relative to the largest logit beyond (a 3D DynUNet's logits reach ~10, where
    # ONNX Runtime's own convolution algorithms differ from PyTorch's by a few 1e-4 in float32)
    scale = max(1.0, float(eager.abs().max()))
    assert max(diffs.values()) < TOLERANCE * scale, (diffs, f"largest |logit| {scale:.2f}")
