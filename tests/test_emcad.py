"""PVTv2 encoder, EMCAD decoder and EMCADNet (+ XAttnRes), pretrained loading and the mutation loss."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from xattnres_monai.losses import MutationLoss
from xattnres_monai.networks.blocks import CAB, EUCB, LGAG, MSCB, SAB, EMCADDecoder, XAttnRes
from xattnres_monai.networks.nets import EMCADNet, PVTv2, PVTv2Encoder, emcad_summary, load_pvt_pretrained

B2_ENCODER_PARAMS = 24_849_856
B2_DECODER_PARAMS = 1_913_515
EMCAD_B2_PARAMS = 26_764_411  # 1-channel input (1->3 stem), 1 output class
B2_CHANNELS = (512, 320, 128, 64)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def emcad_b2():
    torch.manual_seed(0)
    return EMCADNet(in_channels=1, out_channels=1, encoder="b2").eval()


# ---------------------------------------------------------------- parameter counts


def test_pvt_b2_parameter_count_and_checkpoint_names():
    encoder = PVTv2("b2")
    assert n_params(encoder) == pytest.approx(B2_ENCODER_PARAMS, rel=1e-3)
    keys = set(encoder.state_dict())
    for name in (
        "patch_embed1.proj.weight",
        "patch_embed1.norm.bias",
        "block1.0.norm1.weight",
        "block1.0.attn.q.weight",
        "block1.0.attn.kv.bias",
        "block1.0.attn.sr.weight",
        "block1.0.attn.norm.weight",
        "block1.0.attn.proj.weight",
        "block1.2.mlp.fc1.weight",
        "block1.0.mlp.dwconv.dwconv.weight",
        "block1.0.mlp.fc2.bias",
        "norm1.weight",
        "block3.5.norm2.bias",
        "norm4.bias",
    ):
        assert name in keys, name
    assert "block4.0.attn.sr.weight" not in keys  # sr ratio 1 in the last stage
    assert not any(k.startswith("head.") for k in keys)


def test_emcad_b2_parameter_counts(emcad_b2):
    assert n_params(emcad_b2.encoder) == pytest.approx(B2_ENCODER_PARAMS, rel=1e-3)
    assert n_params(emcad_b2.decoder) == B2_DECODER_PARAMS
    assert n_params(emcad_b2) == pytest.approx(EMCAD_B2_PARAMS, rel=1e-3)
    # the decoder configurations (without the shared encoder, heads and stem: 24,850,896)
    rest = EMCAD_B2_PARAMS - B2_DECODER_PARAMS
    no_skip = n_params(EMCADDecoder(2, B2_CHANNELS, skip=False))
    both = n_params(EMCADDecoder(2, B2_CHANNELS, skip=True, xattnres=True))
    replace = n_params(EMCADDecoder(2, B2_CHANNELS, skip=False, xattnres=True))
    assert (rest + no_skip, rest + both, rest + replace) == (26_753_394, 27_761_787, 27_750_770)


# ---------------------------------------------------------------- shapes and modes


@pytest.mark.parametrize("size", [(224, 224), (200, 232)])
def test_emcad_b2_output_shapes(emcad_b2, size):
    with torch.no_grad():
        out = emcad_b2(torch.randn(1, 1, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 1) + size


@pytest.mark.parametrize("size", [(352, 352), (224, 224), (200, 232)])
def test_emcad_b0_output_shapes(size):
    torch.manual_seed(0)
    net = EMCADNet(in_channels=3, out_channels=2, encoder="b0", xattnres=True).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2) + size


@pytest.mark.slow
def test_emcad_b2_output_shape_352(emcad_b2):
    with torch.no_grad():
        assert emcad_b2(torch.randn(1, 1, 352, 352)).shape == (1, 1, 352, 352)


def test_pvt_stage_shapes_non_multiple_of_32():
    encoder = PVTv2("b0", drop_path_rate=0.0).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 200, 232))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 50, 58), (1, 64, 25, 29), (1, 160, 13, 15), (1, 256, 7, 8)]


def test_training_modes_and_deep_supervision():
    torch.manual_seed(0)
    net = EMCADNet(in_channels=3, out_channels=3, encoder="b0", deep_supervision=True)
    x = torch.randn(1, 3, 72, 88)
    heads = net.train()(x)
    assert isinstance(heads, list) and len(heads) == 4
    assert all(h.shape == (1, 3, 72, 88) for h in heads)
    assert net.stem is None
    with torch.no_grad():
        single = net.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, 72, 88)
    net.deep_supervision = False
    assert isinstance(net.train()(x), torch.Tensor)


def test_finest_head_is_the_eval_output():
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=2, encoder="b0", deep_supervision=True, drop_path_rate=0.0)
    x = torch.randn(2, 1, 64, 64)
    net.train()
    for m in net.modules():  # batch statistics off, but keep the deep-supervision branch
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        heads = net(x)
        finest = net.eval()(x)
    torch.testing.assert_close(heads[-1], finest)


def test_validation_errors():
    with pytest.raises(ValueError, match="in_channels"):
        EMCADNet(in_channels=2, encoder="b0")
    with pytest.raises(ValueError, match="spatial_dims"):
        EMCADNet(spatial_dims=3, encoder="b0")
    with pytest.raises(ValueError, match="variant"):
        EMCADNet(encoder="b9")
    for block in (lambda: CAB(3, 16), lambda: SAB(3), lambda: MSCB(3, 16), lambda: EUCB(3, 16, 8), lambda: LGAG(3, 16)):
        with pytest.raises(ValueError, match="spatial_dims"):
            block()
    with pytest.raises(ValueError, match="spatial_dims"):
        EMCADDecoder(3)
    net = EMCADNet(in_channels=1, encoder="b0").eval()
    with pytest.raises(ValueError, match="expected input with 1 channels, got 3"):
        net(torch.randn(1, 3, 32, 32))


def test_blocks():
    x = torch.randn(2, 8, 9, 11)
    assert CAB(2, 8)(x).shape == (2, 8, 1, 1)  # ratio falls back to C when C < 16
    assert CAB(2, 8).fc1.out_channels == 1 and CAB(2, 64).fc1.out_channels == 4
    assert SAB(2)(x).shape == (2, 1, 9, 11)
    assert MSCB(2, 8)(x).shape == x.shape
    assert EUCB(2, 8, 4)(x).shape == (2, 4, 18, 22)
    assert EUCB(2, 8, 4)(x, [17, 21]).shape == (2, 4, 17, 21)
    assert LGAG(2, 8)(x, x).shape == x.shape
    assert LGAG(2, 8).W_g[0].groups == 4
    decoder = EMCADDecoder(2, B2_CHANNELS)
    conv = decoder.mscb3.pconv1[0].weight
    assert abs(conv.std().item() - 0.02) < 0.002
    assert decoder.eucb3.pwconv.bias.abs().max() == 0


# ---------------------------------------------------------------- XAttnRes and skip options


@pytest.mark.parametrize("skip,xattnres", [(True, False), (False, False), (False, True), (True, True)])
def test_routing_options_structure_forward_backward(skip, xattnres):
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=2, encoder="b0", skip=skip, xattnres=xattnres, deep_supervision=True)
    decoder = net.decoder
    assert (decoder.lgag1 is not None) == skip
    assert (decoder.routing1 is not None) == xattnres
    routings = [m for m in net.modules() if isinstance(m, XAttnRes)]
    assert len(routings) == (4 if xattnres else 0)
    if xattnres:  # history pool: e1..e4, then d4, d3, d2
        assert decoder.routing4.history_channels == [32, 64, 160, 256]
        assert decoder.routing1.history_channels == [32, 64, 160, 256, 256, 160, 64]
    heads = net.train()(torch.randn(2, 1, 64, 64))
    loss = MutationLoss(to_onehot_y=True, softmax=True)(heads, torch.randint(0, 2, (2, 1, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    grad = net.encoder.patch_embed1.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    if xattnres:
        assert decoder.routing1.query.grad is not None and decoder.routing1.query.grad.abs().sum() > 0


def test_routing_options_change_parameter_count():
    counts = {
        (s, a): n_params(EMCADNet(encoder="b0", skip=s, xattnres=a))
        for s, a in itertools.product((True, False), repeat=2)
    }
    assert counts[(False, False)] < counts[(True, False)] < counts[(True, True)]
    assert counts[(False, False)] < counts[(False, True)] < counts[(True, True)]


# ---------------------------------------------------------------- TorchScript and configs


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=True, query_init="normal").eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 72, 104)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_torchscript_b2_matches_eager(emcad_b2):
    scripted = torch.jit.script(emcad_b2)
    x = torch.randn(1, 1, 200, 232)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), emcad_b2(x), rtol=0, atol=1e-5)


def test_constructor_arguments_are_json_and_bundle_instantiable():
    from monai.bundle import ConfigParser

    args = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 9,
        "encoder": "b0",
        "pretrained_path": None,
        "skip": True,
        "xattnres": True,
        "query_init": "zero",
        "deep_supervision": True,
    }
    config = json.loads(json.dumps({"network": {"_target_": "xattnres_monai.networks.nets.EMCADNet", **args}}))
    config["loss"] = {"_target_": "xattnres_monai.losses.MutationLoss", "lambda_ce": 0.3, "lambda_dice": 0.7}
    parser = ConfigParser(config)
    assert isinstance(parser.get_parsed_content("network"), EMCADNet)
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, MutationLoss) and loss.loss.lambda_ce == 0.3


# ---------------------------------------------------------------- FlexibleUNet backbone


def test_flexible_unet_backbone():
    for v in ("b0", "b1", "b2", "b3", "b4", "b5"):
        assert f"pvt_v2_{v}" in FLEXUNET_BACKBONE.register_dict
    entry = FLEXUNET_BACKBONE.register_dict["pvt_v2_b2"]
    assert entry["type"] is PVTv2Encoder
    assert entry["feature_number"] == 5 and tuple(entry["feature_channel"]) == (64, 64, 128, 320, 512)
    torch.manual_seed(0)
    net = FlexibleUNet(in_channels=3, out_channels=2, backbone="pvt_v2_b0").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)
    assert set(net.encoder.state_dict()) == set(PVTv2("b0").state_dict())
    with pytest.raises(ValueError, match="pretrained"):
        FlexibleUNet(in_channels=3, out_channels=2, backbone="pvt_v2_b0", pretrained=True)


# ---------------------------------------------------------------- pretrained weights


def _checkpoint(encoder: PVTv2) -> dict:
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.randn(1000, encoder.embed_dims[-1])
    state["head.bias"] = torch.zeros(1000)
    return state


def test_load_pretrained_loads_every_tensor(tmp_path):
    torch.manual_seed(1)
    source = PVTv2("b0")
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(_checkpoint(source), path)
    torch.manual_seed(2)
    target = PVTv2("b0")
    assert load_pvt_pretrained(target, path) == len(source.state_dict())
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)
    # nested under "model" / "state_dict", and through the constructors
    for container in ("model", "state_dict"):
        nested = tmp_path / f"nested_{container}.pth"
        torch.save({container: _checkpoint(source), "epoch": 3}, nested)
        loaded = PVTv2("b0", pretrained_path=str(nested))
        torch.testing.assert_close(loaded.norm4.weight, source.norm4.weight, rtol=0, atol=0)
    net = EMCADNet(in_channels=1, encoder="b0", pretrained_path=str(path))
    torch.testing.assert_close(net.encoder.block2[1].attn.kv.weight, source.block2[1].attn.kv.weight, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["shape", "missing", "unexpected", "no_match", "garbage", "not_a_dict"])
def test_load_pretrained_rejects_bad_files(tmp_path, case):
    encoder = PVTv2("b0")
    state = _checkpoint(encoder)
    path = tmp_path / f"{case}.pth"
    expected_key = None
    if case == "shape":
        state["block1.0.attn.q.weight"] = torch.zeros(3, 3)
        expected_key = "block1.0.attn.q.weight"
    elif case == "missing":
        del state["norm4.bias"]
        expected_key = "norm4.bias"
    elif case == "unexpected":
        state["decoder.extra.weight"] = torch.zeros(1)
        expected_key = "decoder.extra.weight"
    elif case == "no_match":
        state = {"backbone.weight": torch.zeros(2), "head.weight": torch.zeros(2)}
        expected_key = "patch_embed1.proj.weight"  # the first missing key
    if case == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif case == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save(state, path)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_pvt_pretrained(encoder, path)
    message = str(error.value)
    assert str(path) in message
    if expected_key is not None:
        assert expected_key in message
    if case == "no_match":
        assert "no key matches" in message
    for key, value in encoder.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pvt_pretrained(encoder, tmp_path / "absent.pth")


# ---------------------------------------------------------------- mutation loss


def test_mutation_loss_is_the_sum_over_15_subsets():
    torch.manual_seed(0)
    heads = [torch.randn(2, 3, 8, 8) for _ in range(4)]
    target = torch.randint(0, 3, (2, 1, 8, 8))
    kwargs = {"to_onehot_y": True, "softmax": True, "lambda_ce": 0.3, "lambda_dice": 0.7}
    reference = DiceCELoss(**kwargs)
    p1, p2, p3, p4 = heads
    combos = [
        p1, p2, p3, p4,
        p1 + p2, p1 + p3, p1 + p4, p2 + p3, p2 + p4, p3 + p4,
        p1 + p2 + p3, p1 + p2 + p4, p1 + p3 + p4, p2 + p3 + p4,
        p1 + p2 + p3 + p4,
    ]  # fmt: skip
    expected = sum(reference(c, target) for c in combos)
    loss = MutationLoss(**kwargs)
    torch.testing.assert_close(loss(heads, target), expected)
    torch.testing.assert_close(loss(tuple(heads), target), expected)
    torch.testing.assert_close(loss(p4, target), reference(p4, target))  # a single tensor: the plain loss


def test_mutation_loss_custom_loss_and_errors():
    calls = []

    def loss_fn(x, y):
        calls.append(x)
        return (x - y).abs().mean()

    heads = [torch.full((1, 1, 2, 2), float(i)) for i in (1, 2, 4)]
    value = MutationLoss(loss_fn)(heads, torch.zeros(1, 1, 2, 2))
    assert len(calls) == 7
    assert value.item() == pytest.approx(sum(sum(s) for r in range(1, 4) for s in itertools.combinations((1, 2, 4), r)))
    with pytest.raises(ValueError, match="custom loss"):
        MutationLoss(loss_fn, softmax=True)
    with pytest.raises(ValueError, match="at least one"):
        MutationLoss()([], torch.zeros(1))


# ---------------------------------------------------------------- summary


@pytest.mark.slow
def test_emcad_summary():
    text = emcad_summary(input_sizes=(224, 352))
    for expected in ("24,849,856", "26,764,411", "27,761,787", "26.76M", "28.09M", "GFLOPs", "FlopCounterMode"):
        assert expected in text
    # one FLOPs row per network and resolution, the resolution named
    flop_rows = [line for line in text.splitlines() if line.startswith("EMCAD") and ("224" in line or "352" in line)]
    assert any(" 224 " in f" {line} " for line in flop_rows) and any(" 352 " in f" {line} " for line in flop_rows)
