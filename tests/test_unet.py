"""XAttnResUNet: every routing configuration of Tables 3-5, 2D and 3D, export, sizes, bad configurations."""

from __future__ import annotations

import pytest
import torch

from xattnres_monai.networks.nets import XAttnResUNet
from xattnres_monai.networks.summary import UNET_CONFIGURATIONS
from xattnres_monai.networks.utils import capture_attention, count_parameters

SMALL_3D = {"encoder_channels": (4, 8, 16), "decoder_channels": (8, 4)}


@pytest.mark.parametrize("config", sorted(UNET_CONFIGURATIONS))
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_configuration_trains_and_scripts(config, spatial_dims):
    torch.manual_seed(0)
    kwargs = dict(UNET_CONFIGURATIONS[config])
    if spatial_dims == 3:
        kwargs.update(SMALL_3D)
        x = torch.randn(2, 2, 17, 12, 10)
    else:
        x = torch.randn(2, 2, 33, 47)
    net = XAttnResUNet(spatial_dims, in_channels=2, out_channels=3, **kwargs)
    out = net(x)
    assert out.shape == (2, 3) + x.shape[2:]
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        eager = net(x)
        scripted = torch.jit.script(net)(x)
    torch.testing.assert_close(scripted, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(225, 193), (64, 64), (31, 97)])
def test_any_input_size(size):
    net = XAttnResUNet(2, 1, 2).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_parameter_counts_match_the_paper_scale():
    counts = {name: count_parameters(XAttnResUNet(2, 1, 1, **kw)) for name, kw in UNET_CONFIGURATIONS.items()}
    assert abs(counts["baseline"] - 1.06e6) / 1.06e6 < 0.05
    # XAttnRes adds a pseudo-query, an RMSNorm gain and 1x1 projections only
    assert 0 < counts["both"] - counts["baseline"] < 0.25e6
    assert counts["replace"] < counts["baseline"] and counts["no_skip"] < counts["replace"]
    assert counts["both"] - counts["baseline"] == (counts["encoder_only"] - counts["baseline"]) + (
        counts["decoder_only"] - counts["baseline"]
    )


def test_routing_placement_follows_eq_10_and_11():
    net = XAttnResUNet(2, 1, 2)  # default: skip + full
    enc_routing = [stage.routing for stage in net.encoder]
    assert enc_routing[0] is None  # the first stage has no history yet
    # encoder stage i reads e_1..e_{i-1}; decoder stage j reads all encoder and earlier decoder outputs
    assert [r.history_channels for r in enc_routing[1:]] == [[16], [16, 32], [16, 32, 64], [16, 32, 64, 128]]
    assert [len(s.routing.history_channels) for s in net.decoder] == [5, 6, 7, 8]
    assert [s.routing.channels for s in net.decoder] == [128, 64, 32, 16]  # channels of Up(x_{j+1})
    assert all(stage.routing is None for stage in XAttnResUNet(2, 1, 2, xattnres="decoder").encoder)
    assert all(stage.routing is None for stage in XAttnResUNet(2, 1, 2, xattnres="encoder").decoder)
    assert not any(s.use_skip for s in XAttnResUNet(2, 1, 2, skip=False).decoder)


def test_zero_init_replace_network_starts_as_uniform_averaging():
    net = XAttnResUNet(2, 1, 2, skip=False, xattnres="full").eval()
    with capture_attention(net) as weights, torch.no_grad():
        net(torch.randn(2, 1, 64, 48))
    assert len(weights) == 8
    for name, w in weights.items():
        k = w.shape[1]
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / k))
    assert weights["decoder.3.routing"].shape == (2, 9, 64, 48)
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in net.modules())


def test_onnx_export_of_default_2d_network(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = XAttnResUNet(2, 1, 9).eval()
    x = torch.randn(1, 1, 96, 80)
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["pred"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_out), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"xattnres": "middle"}, r"xattnres must be one of \('none', 'encoder', 'decoder', 'full'\), got 'middle'"),
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
        ({"decoder_channels": (32, 16)}, r"decoder_channels must have len\(encoder_channels\) - 1 = 4 entries, got 2"),
        ({"encoder_channels": (16,), "decoder_channels": ()}, "at least 2 entries"),
        ({"query_init": "ones"}, "query_init must be one of"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        XAttnResUNet(**kwargs)


def test_wrong_input_channels_and_dimensionality():
    net = XAttnResUNet(2, in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=r"expected input with 1 channels, got 3 \(input shape \[1, 3, 32, 32\]\)"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected a 4D input .* got shape \[1, 1, 8, 8, 8\]"):
        net(torch.randn(1, 1, 8, 8, 8))
    scripted = torch.jit.script(net.eval())
    with pytest.raises(Exception, match="expected input with 1 channels, got 3"):
        scripted(torch.randn(1, 3, 32, 32))


def test_summary_command_prints_every_configuration(capsys):
    from xattnres_monai.networks.summary import main

    main([])
    out = capsys.readouterr().out
    for name in UNET_CONFIGURATIONS:
        assert name in out
    assert "1,080,641" in out


def test_double_conv_act_norm_monai_style():
    from monai.networks.blocks import Convolution

    from xattnres_monai.networks.nets.xattnres_unet import DoubleConv

    # the defaults are the classic block: same modules, keys and parameter count as before act / norm existed
    torch.manual_seed(0)
    default = XAttnResUNet(2, 1, 3)
    torch.manual_seed(0)
    spelled = XAttnResUNet(2, 1, 3, act="relu", norm="batch")
    assert count_parameters(default) == 1_153_315 and list(default.state_dict()) == list(spelled.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), spelled.state_dict().values()))
    block = default.encoder[0].conv
    assert isinstance(block.conv_0, Convolution) and isinstance(block.conv_1.adn.N, torch.nn.BatchNorm2d)
    assert isinstance(block.conv_0.adn.A, torch.nn.ReLU) and block.conv_0.conv.bias is None
    # other layers, MONAI's way, reach every DoubleConv
    net = XAttnResUNet(2, 1, 3, act=("leakyrelu", {"negative_slope": 0.1}), norm=("instance", {"affine": True}))
    convs = [m for m in net.modules() if isinstance(m, DoubleConv)]
    assert len(convs) == 9
    for conv in convs:
        for layer in (conv.conv_0, conv.conv_1):
            assert isinstance(layer.adn.A, torch.nn.LeakyReLU) and layer.adn.A.negative_slope == 0.1
            assert isinstance(layer.adn.N, torch.nn.InstanceNorm2d) and layer.adn.N.affine
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert isinstance(XAttnResUNet(3, 1, 2, norm="batch").encoder[0].conv.conv_0.adn.N, torch.nn.BatchNorm3d)
    assert not hasattr(DoubleConv(2, 4, 8, norm=None).conv_0.adn, "N")
    with pytest.raises(ValueError, match=r"XAttnResUNet: norm must be .* got 'foo'\."):
        XAttnResUNet(2, 1, 3, norm="foo")
    with pytest.raises(ValueError, match="DoubleConv: act must be"):
        DoubleConv(2, 4, 8, act=("relu", 3))
