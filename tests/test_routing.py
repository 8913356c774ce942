"""See the learned routing (``xattnres_monai.routing``): names, weights, regions, entropy, pictures, bundle report.

Fast tests use small networks and inputs (one thread); the slow test trains the Synapse bundle for one epoch at
32 x 32 (as tests/test_trained_bundle.py does) and runs the report and its command on it.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xattnres_monai.networks.nets import EMCADNet, XAttnResUNet
from xattnres_monai.networks.utils import capture_attention
from xattnres_monai.routing import (
    INPUT,
    RoutingReport,
    attention_entropy,
    capture_routing,
    has_routing,
    routing_entropy_series,
    routing_layout,
    topology_matrix,
    weak_connections,
)
from xattnres_monai.routing.bundle import network_inputs, run_routing_report
from xattnres_monai.visualize.routing import (
    ENTROPY_HEIGHT,
    ENTROPY_WIDTH,
    HEATMAP_HEIGHT,
    HEATMAP_WIDTH,
    MAP_COLUMNS,
    MAP_GAP,
    MAP_HEADER,
    MAP_MARGIN,
    MAP_TITLE,
    attention_maps_size,
    save_attention_maps,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_unet(spatial_dims: int = 2, out_channels: int = 3, **kwargs) -> XAttnResUNet:
    torch.manual_seed(0)
    return XAttnResUNet(spatial_dims, 1, out_channels, encoder_channels=(4, 8, 8, 16, 16),
                        decoder_channels=(8, 8, 4, 4), **kwargs).eval()  # fmt: skip


def _favour(net: XAttnResUNet, decoder_stage: int, entry: int, strength: float = 30.0) -> None:
    """Make the decoder block read history ``entry``: its 1x1 projection maps the (non-negative, post-ReLU) entry to
    ``-sum(entry) * (1, ..., 1)`` and the query is ``-strength * (1, ..., 1)``, so the entry's logit is the largest
    possible, ``strength * C`` (Cauchy-Schwarz), while every identity-projected entry (non-negative) gets at most 0
    and the randomly projected ones stay well below."""
    block = net.decoder[decoder_stage].routing
    with torch.no_grad():
        projection = block.projections[entry]
        assert isinstance(projection, torch.nn.Conv2d), "choose an entry whose channels differ (a real projection)"
        projection.weight.fill_(-1.0)
        block.query.fill_(-strength)


def _assert_uniform(report: RoutingReport, source: str = "all", region: str = "all") -> None:
    weights = report.mean_weights(source, region)
    positions = report.positions(source, region)
    for layout in report.layouts:
        if not positions[layout.name]:
            continue
        expected = 1.0 / len(layout.entries)
        for entry, value in weights[layout.name].items():
            assert abs(value - expected) < 1e-6, (layout.name, entry, value, expected, source, region)
        assert abs(report.mean_entropy(source, region)[layout.name] - 1.0) < 1e-5


# ------------------------------------------------------------------------------------------------------ names


def test_unet_blocks_and_entries_are_named_by_stage():
    layouts = routing_layout(XAttnResUNet(2, 1, 2))
    names = [(b.module, b.name) for b in layouts]
    assert names[0] == ("encoder.1.routing", "e2") and names[3] == ("encoder.4.routing", "e5")
    assert names[4] == ("decoder.0.routing", "d1") and names[-1] == ("decoder.3.routing", "d4")
    d4 = layouts[-1]
    assert d4.entries == ("e1", "e2", "e3", "e4", "e5", "d1", "d2", "d3", INPUT)
    # the plain U-Net feeds d1 from the bottleneck e5 with skip e4, d4 from d3 with skip e1; e3 from e2
    assert layouts[4].fixed_entries == ("e5", INPUT, "e4") and d4.fixed_entries == ("d3", INPUT, "e1")
    assert layouts[1].fixed_entries == ("e2", INPUT)
    topology = topology_matrix(layouts)
    assert topology.shape == (8, 9) and np.isnan(topology[0, 1])
    assert topology[-1].tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 1]
    decoder_only = routing_layout(XAttnResUNet(3, 1, 2, encoder_channels=(4, 8, 8), decoder_channels=(8, 4),
                                               xattnres="decoder"))  # fmt: skip
    assert [(b.name, b.entries) for b in decoder_only] == [("d1", ("e1", "e2", "e3", INPUT)),
                                                           ("d2", ("e1", "e2", "e3", "d1", INPUT))]  # fmt: skip
    with pytest.raises(ValueError, match="no XAttnRes block"):
        routing_layout(XAttnResUNet(2, 1, 2, xattnres="none"))


def test_emcad_blocks_use_emcad_stage_names():
    layouts = routing_layout(EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=True))
    assert [b.name for b in layouts] == ["d4", "d3", "d2", "d1"]
    assert layouts[0].module == "decoder.stages.0.routing" and layouts[0].entries == ("e1", "e2", "e3", "e4", INPUT)
    assert layouts[-1].entries == ("e1", "e2", "e3", "e4", "d4", "d3", "d2", INPUT)
    assert layouts[1].fixed_entries == ("d4", INPUT, "e3") and layouts[0].fixed_entries == ("e4", INPUT)


# ------------------------------------------------------------------------------------------------------ weights


def test_capture_routing_gives_the_weights_of_capture_attention():
    net = _small_unet(query_init="normal")
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "query") and isinstance(module.query, torch.nn.Parameter):
                module.query.normal_(0.0, 2.0)  # decided weights, far from uniform
        x = torch.randn(2, 1, 40, 36)
        with capture_attention(net) as reference:
            net(x)
        with capture_routing(net) as fast:
            net(x)
    for layout in routing_layout(net):
        assert torch.allclose(fast[layout.name], reference[layout.module], atol=1e-5), layout.name


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_zero_queries_give_uniform_weights_everywhere(spatial_dims):
    net = _small_unet(spatial_dims)
    size = (32, 32) if spatial_dims == 2 else (16, 16, 16)
    label = torch.zeros((2,) + size, dtype=torch.long)
    label[:, 4:20, 6:14] = 1
    label[:, 20:, 20:] = 2
    report = RoutingReport(net)
    with torch.no_grad():
        report.run(torch.randn((2, 1) + size), label=label)
    assert report.images == 2 and report.sources == ["prediction", "label"]
    _assert_uniform(report)
    for region in report.regions:
        _assert_uniform(report, "label", region)
        _assert_uniform(report, "prediction", region)


def test_zero_queries_give_uniform_weights_in_emcad():
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=3, encoder="b0", xattnres=True).eval()
    report = RoutingReport(net)
    with torch.no_grad():
        out = report.run(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    _assert_uniform(report)
    assert report.blocks == ["d4", "d3", "d2", "d1"] and report.columns[-1] == INPUT


def test_plug_in_networks_are_named_by_stage_and_report_uniform_weights_at_zero_queries():
    from xattnres_monai.networks.plugins import XAttnResBasicUNet, XAttnResDynUNet

    torch.manual_seed(0)
    dynunet = XAttnResDynUNet(3, 1, 3, [3, 3, 3, 3], [1, 2, 2, [2, 2, 1]], [2, 2, [2, 2, 1]],
                              filters=[4, 8, 8, 16]).eval()  # fmt: skip
    names = [(b.module, b.name, b.entries, b.fixed_entries) for b in routing_layout(dynunet)]
    assert names == [
        ("routing.downsamples.1", "e3", ("e1", "e2", INPUT), ("e2", INPUT)),  # no block before e2 (see the plug-in)
        ("routing.bottleneck", "e4", ("e1", "e2", "e3", INPUT), ("e3", INPUT)),
        ("routing.upsamples.0", "d1", ("e1", "e2", "e3", "e4", INPUT), ("e4", INPUT, "e3")),
        ("routing.upsamples.1", "d2", ("e1", "e2", "e3", "e4", "d1", INPUT), ("d1", INPUT, "e2")),
        ("routing.upsamples.2", "d3", ("e1", "e2", "e3", "e4", "d1", "d2", INPUT), ("d2", INPUT, "e1")),
    ]
    label = torch.zeros((1, 16, 16, 8), dtype=torch.long)
    label[:, 2:10, 4:12] = 1
    report = RoutingReport(dynunet)
    with torch.no_grad():
        report.run(torch.randn(1, 1, 16, 16, 8), label=label)
    _assert_uniform(report)
    _assert_uniform(report, "label", "class:class1")
    _assert_uniform(report, "label", "boundary")
    basic = XAttnResBasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4), xattnres="decoder").eval()
    assert [b.name for b in routing_layout(basic)] == ["d1", "d2", "d3", "d4"]
    assert routing_layout(basic)[0].fixed_entries == ("e5", INPUT, "e4")


def test_a_favoured_entry_shows_in_the_report_and_the_maps(tmp_path):
    net = _small_unet()
    _favour(net, decoder_stage=3, entry=2)  # block d4 reads e3
    report = RoutingReport(net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        report.run(x)
    d4 = report.mean_weights()["d4"]
    assert d4["e3"] > 0.99 and max(v for e, v in d4.items() if e != "e3") < 0.01
    assert report.mean_entropy()["d4"] < 0.05 and report.mean_entropy()["d3"] > 0.999  # the others are untouched
    matrix = report.matrix()
    assert report.columns[int(np.nanargmax(matrix[-1]))] == "e3"
    weak = weak_connections(report, threshold=0.01)
    assert ("d4", "e1") in weak and ("d4", "e3") not in weak and not [w for w in weak if w[0] != "d4"]
    # the maps: the e3 panel is bright (weight 1 everywhere), the others dark
    with torch.no_grad(), capture_routing(net) as weights:
        net(x)
    entries = report.layouts[-1].entries
    path = save_attention_maps(tmp_path / "maps.png", x[0, 0], weights["d4"][0], entries, title="favoured e3")
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert (rgb.shape[1], rgb.shape[0]) == attention_maps_size(len(entries))

    def panel_brightness(k: int) -> float:
        row, column = divmod(k, MAP_COLUMNS)
        left = MAP_MARGIN + column * (256 + MAP_GAP)
        top = MAP_TITLE + row * (MAP_HEADER + 256 + MAP_GAP) + MAP_HEADER
        return float(rgb[top + 20 : top + 236, left + 20 : left + 236].mean())

    brightness = [panel_brightness(k) for k in range(len(entries))]
    assert int(np.argmax(brightness)) == entries.index("e3")
    assert brightness[entries.index("e3")] > 2 * max(b for k, b in enumerate(brightness) if entries[k] != "e3")


# ------------------------------------------------------------------------------------------------------ regions


def test_class_and_boundary_regions_are_measured_at_each_block_resolution():
    net = _small_unet(out_channels=2, query_init="normal")
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "query") and isinstance(module.query, torch.nn.Parameter):
                module.query.normal_(0.0, 1.0)
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    label[:, :, 16:] = 1  # left half background, right half class 1
    x = torch.randn(1, 1, 32, 32)
    report = RoutingReport(net, num_classes=2, class_names=["background", "organ"], boundary_width=1)
    with torch.no_grad():
        report.run(x, label=label)
        with capture_routing(net) as weights:
            net(x)
    boundary = report.positions("label", "boundary")
    assert boundary["d4"] == 2 * 32 and boundary["d3"] == 2 * 16 and boundary["e5"] == 2 * 2  # two columns
    assert report.positions("label", "interior")["d4"] == 32 * 32 - 64
    assert report.positions("label", "class:organ")["d4"] == 32 * 16
    # the per-region means are the means of the captured weights over the masks
    d4 = weights["d4"][0]
    organ = d4[:, :, 16:].mean(dim=(1, 2))
    edge = d4[:, :, 15:17].mean(dim=(1, 2))
    for n, entry in enumerate(report.layouts[-1].entries):
        assert abs(report.mean_weights("label", "class:organ")["d4"][entry] - float(organ[n])) < 1e-5
        assert abs(report.mean_weights("label", "boundary")["d4"][entry] - float(edge[n])) < 1e-5
    entropy = attention_entropy(weights["d4"])[0]
    assert abs(report.mean_entropy("label", "class:background")["d4"] - float(entropy[:, :16].mean())) < 1e-5
    with pytest.raises(ValueError, match="outside the classes"):
        report.update(weights, {"label": label * 5})


def test_entropy_is_normalised():
    uniform = torch.full((2, 5, 3, 3), 0.2)
    assert torch.allclose(attention_entropy(uniform), torch.ones(2, 3, 3))
    one_hot = torch.zeros(1, 4, 2, 2)
    one_hot[:, 1] = 1.0
    assert torch.equal(attention_entropy(one_hot), torch.zeros(1, 2, 2))
    assert abs(float(attention_entropy(uniform, normalise=False)[0, 0, 0]) - math.log(5)) < 1e-6


# ------------------------------------------------------------------------------------------------------ files


def test_write_creates_csv_json_and_pictures_of_the_documented_size(tmp_path):
    net = _small_unet()
    report = RoutingReport(net)
    with pytest.raises(ValueError, match="nothing accumulated"):
        report.write(tmp_path / "empty")
    label = torch.zeros(1, 32, 32, dtype=torch.long)
    label[:, 8:24, 8:24] = 1
    with torch.no_grad():
        report.run(torch.randn(1, 1, 32, 32), label=label)
    paths = report.write(tmp_path / "out")
    assert Image.open(paths["heatmap"]).size == (HEATMAP_WIDTH, HEATMAP_HEIGHT)
    assert Image.open(paths["entropy"]).size == (ENTROPY_WIDTH, ENTROPY_HEIGHT)
    rows = list(csv.DictReader(open(paths["csv"], encoding="utf-8")))
    assert rows[0]["block"] == "e2" and rows[0]["source"] == "all" and float(rows[0]["e1"]) == pytest.approx(0.5)
    assert rows[0]["e3"] == ""  # e3 is not in the pool of e2
    assert {r["region"] for r in rows if r["source"] == "label"} >= {"class:class1", "boundary", "interior"}
    data = json.loads(paths["json"].read_text())
    assert [b["block"] for b in data["blocks"]] == report.blocks and data["images"] == 1
    assert data["blocks"][-1]["fixed_topology"] == ["e1", "d3", INPUT]
    assert weak_connections(paths["json"], threshold=0.5, everywhere=False)[:1] == [("e3", "e1")]
    with pytest.raises(FileExistsError):
        report.write(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_attention_maps_size_is_documented(tmp_path):
    weights = torch.softmax(torch.randn(4, 8, 8), dim=0)
    prediction = np.zeros((40, 40), dtype=np.int64)
    prediction[10:30, 5:20] = 1
    path = save_attention_maps(tmp_path / "m.png", np.random.rand(3, 40, 40), weights, ["e1", "e2", "e3", INPUT],
                               prediction=prediction, panel_size=128)  # fmt: skip
    assert Image.open(path).size == attention_maps_size(4, 128) == (12 + 5 * 138 + 110, 50 + 28 + 128 + 12)
    with pytest.raises(FileExistsError):
        save_attention_maps(path, np.zeros((8, 8)), weights, ["e1", "e2", "e3", INPUT])


# ------------------------------------------------------------------------------------------------------ training


def test_routing_entropy_series_gives_one_value_per_block_and_keeps_the_mode():
    net = _small_unet()
    net.train()
    net.encoder[0].conv.eval()  # a submodule deliberately in eval mode stays so
    series = routing_entropy_series(net, [{"image": torch.randn(3, 1, 32, 32)}], max_items=2)
    values = series(None)
    assert list(values) == [b.name for b in routing_layout(net)]
    assert all(abs(v - 1.0) < 1e-5 for v in values.values())  # zero queries: uniform
    assert net.training and net.decoder[0].training and not net.encoder[0].conv.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    series(None)  # eval mode: batch norm statistics untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    # a volume batch for a 2D network: slices of the first volume; a given tensor; an evaluator's data loader
    volumes = routing_entropy_series(net, torch.randn(1, 1, 32, 32, 6), max_items=3)
    assert volumes.batch().shape == (3, 1, 32, 32) and len(volumes(None)) == 8
    # a whole validation volume for a patch-trained 3D network: centre-cropped / padded to the patch size
    net3d = _small_unet(3)
    whole = routing_entropy_series(net3d, torch.randn(1, 1, 40, 36, 10), roi_size=[16, 16, 16])
    assert whole.batch().shape == (1, 1, 16, 16, 16) and len(whole(None)) == 8

    class Evaluator:
        data_loader = [{"image": torch.randn(2, 1, 32, 32)}]

    assert len(routing_entropy_series(net, Evaluator())(None)) == 8
    baseline = XAttnResUNet(2, 1, 2, xattnres="none")
    assert has_routing(net) and not has_routing(baseline)  # what a bundle config tests before adding the series
    with pytest.raises(ValueError, match="no XAttnRes block"):
        routing_entropy_series(baseline, torch.zeros(1, 1, 32, 32))


def test_fetching_the_entropy_batch_leaves_the_global_random_state_alone():
    """A DataLoader iterator draws its base seed from torch's global generator; the series fetches its batch
    mid-training, and a draw there made resumed training differ from an uninterrupted run (CI, stop 22)."""
    from torch.utils.data import DataLoader

    net = _small_unet()
    loader = DataLoader([{"image": torch.randn(1, 32, 32)} for _ in range(2)], batch_size=2)
    torch.manual_seed(0)
    expected = torch.get_rng_state()
    next(iter(loader))
    assert not torch.equal(torch.get_rng_state(), expected)  # the draw this guards against is real
    torch.manual_seed(0)
    routing_entropy_series(net, loader)(None)
    assert torch.equal(torch.get_rng_state(), expected)


def test_routing_entropy_is_a_training_curve(tmp_path):
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import ValidationHandler
    from monai.losses import DiceCELoss
    from torch.utils.data import DataLoader

    from xattnres_monai.handlers.training_curves import TrainingCurves
    from xattnres_monai.visualize.curves import read_curves_csv

    net = _small_unet()
    data = [{"image": torch.randn(1, 32, 32), "label": torch.randint(0, 3, (1, 32, 32)).float()} for _ in range(4)]
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=2),
                                    network=net)  # fmt: skip
    curves = TrainingCurves(tmp_path / "progress.png", validator=evaluator,
                            extra_series={"routing_entropy": routing_entropy_series(net, evaluator, max_items=2)})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(data, batch_size=2), network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=0.05), loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True), curves],
    )  # fmt: skip
    trainer.run()
    rows = read_curves_csv(tmp_path / "progress.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    columns = [f"routing_entropy/{b.name}" for b in routing_layout(net)]
    assert all(0.0 < r[c] <= 1.0 + 1e-6 for r in rows for c in columns)
    assert any(rows[-1][c] < 1.0 - 1e-6 for c in columns)  # training moved the queries off zero


def test_network_inputs_slice_volumes_for_2d_networks_and_tile_others():
    x, places = network_inputs(torch.zeros(1, 32, 32, 20), spatial_dims=2, slices=4)
    assert x.shape == (4, 1, 32, 32) and [p.slice for p in places] == [2, 7, 12, 17] and places[1].tag == "slice007"
    x, places = network_inputs(torch.zeros(3, 32, 24), spatial_dims=2, roi_size=[32, 24])
    assert x.shape == (1, 3, 32, 24) and places[0].text == "whole image"
    volume = torch.arange(100 * 40 * 20, dtype=torch.float32).view(1, 100, 40, 20)
    x, places = network_inputs(volume, spatial_dims=3, roi_size=[48, 48, 16])
    assert x.shape == (3 * 1 * 2, 1, 48, 48, 16)  # x: 0, 48, 52; y: padded 40 -> 48; z: 0, 4
    assert [p.origin for p in places][:3] == [(0, 0, 0), (0, 0, 4), (48, 0, 0)] and places[-1].origin == (52, 0, 4)
    assert torch.equal(x[-1, 0, :, 4:44], volume[0, 52:, :, 4:])  # the last tiles end with the volume
    assert float(x[0, 0, :, :4].abs().sum()) == 0.0  # zero padding, centred


# ------------------------------------------------------------------------------------------------------ bundle


def _stamped_bundle(root: Path, roi=(16, 16)) -> Path:
    """A copy of the Synapse bundle with a (random-weight) model stamped with its settings as training does, and
    three phantoms with their datalist."""
    from xattnres_monai.bundle import update_bundle_configs
    from xattnres_monai.data.synapse import prepare_synapse
    from xattnres_monai.demo import make_bundle
    from xattnres_monai.networks.definition import network_definition
    from xattnres_monai.testing.phantoms import write_phantoms

    bundle = root / "bundle"
    make_bundle("synapse", bundle, fresh=False)
    write_phantoms(bundle / "data" / "raw", cases=3, size=(24, 24, 16), seed=0)
    prepare_synapse(bundle / "data" / "raw", bundle / "data" / "datalist.json", split="random", num_val=1)
    torch.manual_seed(0)
    net = XAttnResUNet(2, 1, 9)
    settings = {"network_def": network_definition(net), "roi_size": list(roi), "hu_window": [-125, 275],
                "num_classes": 9, "class_names": None}  # fmt: skip
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "settings": settings}, bundle / "models" / "model.pt")
    update_bundle_configs(str(bundle), settings)
    return bundle


def test_run_routing_report_on_a_bundle(tmp_path):
    from xattnres_monai.utils.files import InputError

    bundle = _stamped_bundle(tmp_path)
    config = bundle / "configs" / "inference.json"
    out = tmp_path / "routing"
    report = run_routing_report(config, bundle, None, out, labels=bundle / "data" / "datalist.json",
                                slices_per_scan=3, maps=1, map_blocks=["d4"], device="cpu")  # fmt: skip
    assert report.images == 3 * 3 and report.sources == ["prediction", "label"]
    _assert_uniform(report)  # the model's queries are still zero
    assert {p.name for p in out.iterdir()} == {"routing_report.csv", "routing_report.json", "routing_heatmap.png",
                                               "routing_entropy.png", "maps"}  # fmt: skip
    (figure,) = list((out / "maps").iterdir())
    assert figure.name.endswith("_d4.png") and Image.open(figure).size == attention_maps_size(9)
    assert sum(report.positions("label", r)["d4"] for r in report.regions[:9]) == 9 * 16 * 16
    with pytest.raises(InputError, match="roi_size"):  # the checkpoint's settings are checked
        run_routing_report(config, bundle, bundle / "data" / "raw", tmp_path / "x", overrides={"roi_size": [32, 32]})


@pytest.mark.slow
def test_routing_report_of_a_trained_bundle_and_its_command(tmp_path):
    from tests.reliability.helpers import bundle_env
    from xattnres_monai.demo import make_bundle

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, *args], capture_output=True, encoding="utf-8", errors="replace",
                                timeout=900, cwd=REPO, env=bundle_env())  # fmt: skip
        assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    bundle = tmp_path / "synapse_bundle"
    make_bundle("synapse", bundle, fresh=False)
    data = bundle / "data"
    cli("-m", "xattnres_monai.data.phantoms", "--output", str(data / "raw"), "--cases", "3", "--seed", "0",
        "--size", "48", "48", "16")  # fmt: skip
    cli("-m", "xattnres_monai.data.synapse", "--input", str(data / "raw"), "--output", str(data / "datalist.json"))
    cli("-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root",
        str(bundle), "--roi_size", "[32,32]", "--max_epochs", "1", "--val_interval", "1", "--num_workers", "0",
        "--batch_size", "8")  # fmt: skip
    out = tmp_path / "routing"
    report = run_routing_report(bundle / "configs" / "inference.json", bundle, None, out,
                                labels=data / "datalist.json", maps=2, device="cpu")  # the datalist's 3 scans
    assert report.images == 3 * 16 and report.matrix().shape == (8, 9)
    trained = report.mean_weights()["d4"]
    assert abs(sum(trained.values()) - 1.0) < 1e-5 and max(trained.values()) > 1.0 / 9  # no longer uniform
    assert len(list((out / "maps").glob("*.png"))) == 2 * len(report.blocks)
    for name, size in (("routing_heatmap.png", (HEATMAP_WIDTH, HEATMAP_HEIGHT)),
                       ("routing_entropy.png", (ENTROPY_WIDTH, ENTROPY_HEIGHT))):  # fmt: skip
        assert Image.open(out / name).size == size
    # the program (python -m xattnres_monai.cli.routing; the dispatcher's ``routing`` command calls the same main)
    scan = data / "raw" / "img0001.nii.gz"
    result = cli("-m", "xattnres_monai.cli.routing", "--bundle", str(bundle), "-i", str(scan),
                 "--labels", str(data / "datalist.json"), "-o", str(tmp_path / "cli"), "--slices-per-scan", "4",
                 "--maps", "1", "--blocks", "d4", "--device", "cpu")  # fmt: skip
    assert "strongest entry" in result.stdout and "routing report of 4 input(s)" in result.stdout
    written = json.loads((tmp_path / "cli" / "routing_report.json").read_text())
    assert written["images"] == 4 and written["sources"] == ["prediction", "label"]
    assert len(list((tmp_path / "cli" / "maps").glob("*_d4.png"))) == 1


# ------------------------------------------------------------------------------------------------------- pruning


def test_a_pruned_block_equals_a_block_that_never_had_the_entry():
    """Dropping entry 0 of a block = the same block built over the other entries only (same weights)."""
    from xattnres_monai.networks.blocks.xattnres import XAttnRes

    torch.manual_seed(0)
    pruned = XAttnRes(2, 8, [4, 6, 8], query_init="normal", dropped=[0])
    plain = XAttnRes(2, 8, [6, 8], query_init="normal")
    plain.load_state_dict(pruned.state_dict())  # the same parameter names: projections of the entries read
    history = [torch.randn(2, 4, 32, 32), torch.randn(2, 6, 16, 16), torch.randn(2, 8, 8, 8)]
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(pruned(x, history), plain(x, history[1:]))
    assert pruned.attention_weights(x, history).shape == (2, 3, 8, 8)
    assert len(pruned.projections) == 2 and "dropped=[0]" in repr(pruned)
    with pytest.raises(ValueError, match="dropped entries must index"):
        XAttnRes(2, 8, [4, 8], dropped=[2])


def test_pruned_connections_of_the_unet_are_named_by_stage_and_leave_the_report():
    full = XAttnResUNet(2, 1, 3)
    pruned = XAttnResUNet(2, 1, 3, pruned_connections=["d4:e5", "d4:d1", "e3:e1"])
    # each pruned connection removes one 1x1 projection: e5 (128 channels) and d1 (64) into d4's 16, e1 (16) into e3's 32
    removed = 128 * 16 + 64 * 16 + 16 * 32
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in pruned.parameters()) == removed
    entries = {b.name: b.entries for b in routing_layout(pruned)}
    assert entries["d4"] == ("e1", "e2", "e3", "e4", "d2", "d3", "input") and entries["e3"] == ("e2", "input")
    pruned.eval()
    with capture_routing(pruned) as weights:
        out = pruned(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64) and weights["d4"].shape[1] == 7
    # zero queries: uniform over what is read
    torch.testing.assert_close(weights["d4"], torch.full_like(weights["d4"], 1 / 7))
    from xattnres_monai.networks.definition import network_definition

    assert network_definition(pruned)["pruned_connections"] == ["d4:d1", "d4:e5", "e3:e1"]
    assert "pruned_connections" not in network_definition(full)  # unpruned models keep their recorded settings
    with pytest.raises(ValueError, match="not connections of this network"):
        XAttnResUNet(2, 1, 3, pruned_connections=["d1:d2"])  # d1 is produced before d2
    with pytest.raises(ValueError, match="'block:entry' stage names"):
        XAttnResUNet(2, 1, 3, pruned_connections=["d9:e1"])


def test_weak_connections_of_a_report_prune_the_network(tmp_path):
    """The report's weak connections are accepted as they are by the network option."""
    net = XAttnResUNet(2, 1, 3, query_init="normal")
    report = RoutingReport(net)
    net.eval()
    with torch.no_grad():
        report.run(torch.randn(2, 1, 64, 64))
    weak = weak_connections(report, threshold=2.0)  # every connection (weights < 1)
    names = [f"{b}:{e}" for b, e in weak]
    pruned = XAttnResUNet(2, 1, 3, pruned_connections=names)
    assert all(len(b.entries) == 1 for b in routing_layout(pruned))  # only "input" left anywhere
