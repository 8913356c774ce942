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
from xattnres_monai.networks.blocks.emcad import EMCADStage, upgrade_emcad_decoder_key
from xattnres_monai.networks.nets import EMCADNet, PVTv2, PVTv2Encoder, emcad_summary, load_pvt_pretrained
from xattnres_monai.networks.nets.emcad import convert_emcad_state_dict

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
    conv = decoder.stages[1].mscb.pconv1[0].weight  # stage 3
    assert abs(conv.std().item() - 0.02) < 0.002
    assert decoder.stages[1].up.pwconv.bias.abs().max() == 0


# ---------------------------------------------------------------- XAttnRes and skip options


@pytest.mark.parametrize("skip,xattnres", [(True, False), (False, False), (False, True), (True, True)])
def test_routing_options_structure_forward_backward(skip, xattnres):
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=2, encoder="b0", skip=skip, xattnres=xattnres, deep_supervision=True)
    decoder = net.decoder
    assert decoder.stages[0].up is None and decoder.stages[0].gate is None  # stage 4: e4 is its input
    assert all((stage.gate is not None) == skip for stage in decoder.stages[1:])
    assert all((stage.routing is not None) == xattnres for stage in decoder.stages)
    routings = [m for m in net.modules() if isinstance(m, XAttnRes)]
    assert len(routings) == (4 if xattnres else 0)
    if xattnres:  # history pool: e1..e4, then d4, d3, d2
        assert decoder.stages[0].routing.history_channels == [32, 64, 160, 256]
        assert decoder.stages[3].routing.history_channels == [32, 64, 160, 256, 256, 160, 64]
    heads = net.train()(torch.randn(2, 1, 64, 64))
    loss = MutationLoss(to_onehot_y=True, softmax=True)(heads, torch.randint(0, 2, (2, 1, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss)
    grad = net.encoder.patch_embed1.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    if xattnres:
        query = decoder.stages[3].routing.query
        assert query.grad is not None and query.grad.abs().sum() > 0


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


# ---------------------------------------------------------------- stage lists: old checkpoints, unchanged numbers

# The decoder stages and heads were attributes per stage (cab4 .. cab1, head4 .. head1) and are now nn.ModuleLists.
# The key names of the old layout were dumped from the code before the change; the routing (XAttnRes) keys follow
# the block's own names (its internals are another module's business) after decoder.routing<n>.
OLD_KEYS = [  # EMCADNet(encoder='b2') state-dict keys before the change, encoder and XAttnRes blocks left out
    "decoder.cab4.fc1.weight",
    "decoder.cab4.fc2.weight",
    "decoder.mscb4.pconv1.0.weight",
    "decoder.mscb4.pconv1.1.weight",
    "decoder.mscb4.pconv1.1.bias",
    "decoder.mscb4.pconv1.1.running_mean",
    "decoder.mscb4.pconv1.1.running_var",
    "decoder.mscb4.pconv1.1.num_batches_tracked",
    "decoder.mscb4.dwconvs.0.0.weight",
    "decoder.mscb4.dwconvs.0.1.weight",
    "decoder.mscb4.dwconvs.0.1.bias",
    "decoder.mscb4.dwconvs.0.1.running_mean",
    "decoder.mscb4.dwconvs.0.1.running_var",
    "decoder.mscb4.dwconvs.0.1.num_batches_tracked",
    "decoder.mscb4.dwconvs.1.0.weight",
    "decoder.mscb4.dwconvs.1.1.weight",
    "decoder.mscb4.dwconvs.1.1.bias",
    "decoder.mscb4.dwconvs.1.1.running_mean",
    "decoder.mscb4.dwconvs.1.1.running_var",
    "decoder.mscb4.dwconvs.1.1.num_batches_tracked",
    "decoder.mscb4.dwconvs.2.0.weight",
    "decoder.mscb4.dwconvs.2.1.weight",
    "decoder.mscb4.dwconvs.2.1.bias",
    "decoder.mscb4.dwconvs.2.1.running_mean",
    "decoder.mscb4.dwconvs.2.1.running_var",
    "decoder.mscb4.dwconvs.2.1.num_batches_tracked",
    "decoder.mscb4.pconv2.0.weight",
    "decoder.mscb4.pconv2.1.weight",
    "decoder.mscb4.pconv2.1.bias",
    "decoder.mscb4.pconv2.1.running_mean",
    "decoder.mscb4.pconv2.1.running_var",
    "decoder.mscb4.pconv2.1.num_batches_tracked",
    "decoder.eucb3.dwconv.0.weight",
    "decoder.eucb3.dwconv.1.weight",
    "decoder.eucb3.dwconv.1.bias",
    "decoder.eucb3.dwconv.1.running_mean",
    "decoder.eucb3.dwconv.1.running_var",
    "decoder.eucb3.dwconv.1.num_batches_tracked",
    "decoder.eucb3.pwconv.weight",
    "decoder.eucb3.pwconv.bias",
    "decoder.cab3.fc1.weight",
    "decoder.cab3.fc2.weight",
    "decoder.mscb3.pconv1.0.weight",
    "decoder.mscb3.pconv1.1.weight",
    "decoder.mscb3.pconv1.1.bias",
    "decoder.mscb3.pconv1.1.running_mean",
    "decoder.mscb3.pconv1.1.running_var",
    "decoder.mscb3.pconv1.1.num_batches_tracked",
    "decoder.mscb3.dwconvs.0.0.weight",
    "decoder.mscb3.dwconvs.0.1.weight",
    "decoder.mscb3.dwconvs.0.1.bias",
    "decoder.mscb3.dwconvs.0.1.running_mean",
    "decoder.mscb3.dwconvs.0.1.running_var",
    "decoder.mscb3.dwconvs.0.1.num_batches_tracked",
    "decoder.mscb3.dwconvs.1.0.weight",
    "decoder.mscb3.dwconvs.1.1.weight",
    "decoder.mscb3.dwconvs.1.1.bias",
    "decoder.mscb3.dwconvs.1.1.running_mean",
    "decoder.mscb3.dwconvs.1.1.running_var",
    "decoder.mscb3.dwconvs.1.1.num_batches_tracked",
    "decoder.mscb3.dwconvs.2.0.weight",
    "decoder.mscb3.dwconvs.2.1.weight",
    "decoder.mscb3.dwconvs.2.1.bias",
    "decoder.mscb3.dwconvs.2.1.running_mean",
    "decoder.mscb3.dwconvs.2.1.running_var",
    "decoder.mscb3.dwconvs.2.1.num_batches_tracked",
    "decoder.mscb3.pconv2.0.weight",
    "decoder.mscb3.pconv2.1.weight",
    "decoder.mscb3.pconv2.1.bias",
    "decoder.mscb3.pconv2.1.running_mean",
    "decoder.mscb3.pconv2.1.running_var",
    "decoder.mscb3.pconv2.1.num_batches_tracked",
    "decoder.eucb2.dwconv.0.weight",
    "decoder.eucb2.dwconv.1.weight",
    "decoder.eucb2.dwconv.1.bias",
    "decoder.eucb2.dwconv.1.running_mean",
    "decoder.eucb2.dwconv.1.running_var",
    "decoder.eucb2.dwconv.1.num_batches_tracked",
    "decoder.eucb2.pwconv.weight",
    "decoder.eucb2.pwconv.bias",
    "decoder.cab2.fc1.weight",
    "decoder.cab2.fc2.weight",
    "decoder.mscb2.pconv1.0.weight",
    "decoder.mscb2.pconv1.1.weight",
    "decoder.mscb2.pconv1.1.bias",
    "decoder.mscb2.pconv1.1.running_mean",
    "decoder.mscb2.pconv1.1.running_var",
    "decoder.mscb2.pconv1.1.num_batches_tracked",
    "decoder.mscb2.dwconvs.0.0.weight",
    "decoder.mscb2.dwconvs.0.1.weight",
    "decoder.mscb2.dwconvs.0.1.bias",
    "decoder.mscb2.dwconvs.0.1.running_mean",
    "decoder.mscb2.dwconvs.0.1.running_var",
    "decoder.mscb2.dwconvs.0.1.num_batches_tracked",
    "decoder.mscb2.dwconvs.1.0.weight",
    "decoder.mscb2.dwconvs.1.1.weight",
    "decoder.mscb2.dwconvs.1.1.bias",
    "decoder.mscb2.dwconvs.1.1.running_mean",
    "decoder.mscb2.dwconvs.1.1.running_var",
    "decoder.mscb2.dwconvs.1.1.num_batches_tracked",
    "decoder.mscb2.dwconvs.2.0.weight",
    "decoder.mscb2.dwconvs.2.1.weight",
    "decoder.mscb2.dwconvs.2.1.bias",
    "decoder.mscb2.dwconvs.2.1.running_mean",
    "decoder.mscb2.dwconvs.2.1.running_var",
    "decoder.mscb2.dwconvs.2.1.num_batches_tracked",
    "decoder.mscb2.pconv2.0.weight",
    "decoder.mscb2.pconv2.1.weight",
    "decoder.mscb2.pconv2.1.bias",
    "decoder.mscb2.pconv2.1.running_mean",
    "decoder.mscb2.pconv2.1.running_var",
    "decoder.mscb2.pconv2.1.num_batches_tracked",
    "decoder.eucb1.dwconv.0.weight",
    "decoder.eucb1.dwconv.1.weight",
    "decoder.eucb1.dwconv.1.bias",
    "decoder.eucb1.dwconv.1.running_mean",
    "decoder.eucb1.dwconv.1.running_var",
    "decoder.eucb1.dwconv.1.num_batches_tracked",
    "decoder.eucb1.pwconv.weight",
    "decoder.eucb1.pwconv.bias",
    "decoder.cab1.fc1.weight",
    "decoder.cab1.fc2.weight",
    "decoder.mscb1.pconv1.0.weight",
    "decoder.mscb1.pconv1.1.weight",
    "decoder.mscb1.pconv1.1.bias",
    "decoder.mscb1.pconv1.1.running_mean",
    "decoder.mscb1.pconv1.1.running_var",
    "decoder.mscb1.pconv1.1.num_batches_tracked",
    "decoder.mscb1.dwconvs.0.0.weight",
    "decoder.mscb1.dwconvs.0.1.weight",
    "decoder.mscb1.dwconvs.0.1.bias",
    "decoder.mscb1.dwconvs.0.1.running_mean",
    "decoder.mscb1.dwconvs.0.1.running_var",
    "decoder.mscb1.dwconvs.0.1.num_batches_tracked",
    "decoder.mscb1.dwconvs.1.0.weight",
    "decoder.mscb1.dwconvs.1.1.weight",
    "decoder.mscb1.dwconvs.1.1.bias",
    "decoder.mscb1.dwconvs.1.1.running_mean",
    "decoder.mscb1.dwconvs.1.1.running_var",
    "decoder.mscb1.dwconvs.1.1.num_batches_tracked",
    "decoder.mscb1.dwconvs.2.0.weight",
    "decoder.mscb1.dwconvs.2.1.weight",
    "decoder.mscb1.dwconvs.2.1.bias",
    "decoder.mscb1.dwconvs.2.1.running_mean",
    "decoder.mscb1.dwconvs.2.1.running_var",
    "decoder.mscb1.dwconvs.2.1.num_batches_tracked",
    "decoder.mscb1.pconv2.0.weight",
    "decoder.mscb1.pconv2.1.weight",
    "decoder.mscb1.pconv2.1.bias",
    "decoder.mscb1.pconv2.1.running_mean",
    "decoder.mscb1.pconv2.1.running_var",
    "decoder.mscb1.pconv2.1.num_batches_tracked",
    "decoder.sab.conv.weight",
    "decoder.lgag3.W_g.0.weight",
    "decoder.lgag3.W_g.0.bias",
    "decoder.lgag3.W_g.1.weight",
    "decoder.lgag3.W_g.1.bias",
    "decoder.lgag3.W_g.1.running_mean",
    "decoder.lgag3.W_g.1.running_var",
    "decoder.lgag3.W_g.1.num_batches_tracked",
    "decoder.lgag3.W_x.0.weight",
    "decoder.lgag3.W_x.0.bias",
    "decoder.lgag3.W_x.1.weight",
    "decoder.lgag3.W_x.1.bias",
    "decoder.lgag3.W_x.1.running_mean",
    "decoder.lgag3.W_x.1.running_var",
    "decoder.lgag3.W_x.1.num_batches_tracked",
    "decoder.lgag3.psi.0.weight",
    "decoder.lgag3.psi.0.bias",
    "decoder.lgag3.psi.1.weight",
    "decoder.lgag3.psi.1.bias",
    "decoder.lgag3.psi.1.running_mean",
    "decoder.lgag3.psi.1.running_var",
    "decoder.lgag3.psi.1.num_batches_tracked",
    "decoder.lgag2.W_g.0.weight",
    "decoder.lgag2.W_g.0.bias",
    "decoder.lgag2.W_g.1.weight",
    "decoder.lgag2.W_g.1.bias",
    "decoder.lgag2.W_g.1.running_mean",
    "decoder.lgag2.W_g.1.running_var",
    "decoder.lgag2.W_g.1.num_batches_tracked",
    "decoder.lgag2.W_x.0.weight",
    "decoder.lgag2.W_x.0.bias",
    "decoder.lgag2.W_x.1.weight",
    "decoder.lgag2.W_x.1.bias",
    "decoder.lgag2.W_x.1.running_mean",
    "decoder.lgag2.W_x.1.running_var",
    "decoder.lgag2.W_x.1.num_batches_tracked",
    "decoder.lgag2.psi.0.weight",
    "decoder.lgag2.psi.0.bias",
    "decoder.lgag2.psi.1.weight",
    "decoder.lgag2.psi.1.bias",
    "decoder.lgag2.psi.1.running_mean",
    "decoder.lgag2.psi.1.running_var",
    "decoder.lgag2.psi.1.num_batches_tracked",
    "decoder.lgag1.W_g.0.weight",
    "decoder.lgag1.W_g.0.bias",
    "decoder.lgag1.W_g.1.weight",
    "decoder.lgag1.W_g.1.bias",
    "decoder.lgag1.W_g.1.running_mean",
    "decoder.lgag1.W_g.1.running_var",
    "decoder.lgag1.W_g.1.num_batches_tracked",
    "decoder.lgag1.W_x.0.weight",
    "decoder.lgag1.W_x.0.bias",
    "decoder.lgag1.W_x.1.weight",
    "decoder.lgag1.W_x.1.bias",
    "decoder.lgag1.W_x.1.running_mean",
    "decoder.lgag1.W_x.1.running_var",
    "decoder.lgag1.W_x.1.num_batches_tracked",
    "decoder.lgag1.psi.0.weight",
    "decoder.lgag1.psi.0.bias",
    "decoder.lgag1.psi.1.weight",
    "decoder.lgag1.psi.1.bias",
    "decoder.lgag1.psi.1.running_mean",
    "decoder.lgag1.psi.1.running_var",
    "decoder.lgag1.psi.1.num_batches_tracked",
    "head4.weight",
    "head4.bias",
    "head3.weight",
    "head3.bias",
    "head2.weight",
    "head2.bias",
    "head1.weight",
    "head1.bias",
]

PINNED = {  # recorded before the change: torch 2.13.0+cpu, one thread (see test_seeded_networks_unchanged)
    "emcad-b0-in1-skip1-x0-zero": {
        "sd": "54afba1fc6059d8c7f581b248bb4b75d4a18fb906cefd85439bbc419bf7afdf3",
        "eval": "0644cfc6da2cd7c51f2d3ec5b71c688a370f1f27e509393e365716c4a39a5eac",
        "train": "04b0057a942179b0691f3017ec868bb3f8c630a085766e9eb6a1f8092992ade2",
        "grad": "437da3440c83b68e6cdf9d4c306e2c90001a146ca7ce161f303431307a4fa2c9",
    },
    "emcad-b0-in1-skip1-x1-zero": {
        "sd": "f0f7c49bb91dcad5b66c7b791ab86c822ff1e0b9819e34274e59230f6358e0f7",
        "eval": "803b58f8d51dc61395ff3da2b53bbbc8da54ef2f166a0c75c5fbeff5fe12a13a",
        "train": "64b92a2a070d4e53a9c356bb91f80da237cce622e85694e892e61e936fac5a85",
        "grad": "d4db980959848f734f2b08808efa7024cbed9f2990a445fbba589ef8c44d4ab6",
    },
    "emcad-b0-in1-skip1-x1-normal": {
        "sd": "3fc7b671dffdc7eaf8dfec2f0b0ba33b071e502bc6cf61df256a7040329918d4",
        "eval": "bb3b5c2953adad5b05435b3ae3eba71ae3e2f754c2a5967ca70b21ffeca9ee9a",
        "train": "1383287ffc2103e58af0937e1cde5e0eb189fb98a0da5f8dcbe80cd6bcec6b75",
        "grad": "352c279b71d5162bd5869776bf0c7ecafbd6af25fd07aed4fcc240554c08a9de",
    },
    "emcad-b0-in1-skip0-x0-zero": {
        "sd": "c2136bd8564ff18b88e64abf8dcd89ed705514ddcd61e2e96faa35f2b2b20183",
        "eval": "383300fa283c44b32db3a537c9dfc81fef827eecad175b84ede6f83c1d691a09",
        "train": "7a8ac36b0280d9d10d9be0e23d6c785d4b600d56a4f9ad88df14098abcf8f7ac",
        "grad": "89380acb3d059a7df83d19e19602b7de0eb7dd338f63380073e76db3db264587",
    },
    "emcad-b0-in1-skip0-x1-zero": {
        "sd": "7b5b6e0dc97b8c72ff355f53d9ac86e3fee009602257ec9bb0f2893506f6773d",
        "eval": "46db8471e9dc1492a0c870e2413de04ddc14bb0def3e1c05bc72c0e1dfdf5b80",
        "train": "6aad73aa84a143096aa001680904a8b904761a55b087c413b7c48fc0c48c5f6d",
        "grad": "526bf2a03af6069a850e5c44c2d35e9ff1b79f98619395423ef79625d132358c",
    },
    "emcad-b0-in1-skip0-x1-normal": {
        "sd": "2e093853fd7b640e64f90183d914ba6942806f81925db921698b382770e9da7a",
        "eval": "a56741230c74837d5cce19f29476b819b1a2a304ac143b29e1d339422f81ab7c",
        "train": "d92be7404943484212b7418f38e4cb70ce0629027c9da324b87f58d6aefacc96",
        "grad": "0361ed9d41ffe8c4d5764b512c9a77cd06185521e8f818ddd8c238cb6c1f99c0",
    },
}
PINNED_TORCH = "2.13.0+cpu"


def _old_order(net: torch.nn.Module) -> list:
    """The old-layout key names of ``net``'s state dict, in the old registration order."""
    current = list(net.state_dict())
    routing = [k for k in current if ".routing." in k]
    old_routing = [f"decoder.routing{4 - int(k.split('.')[2])}." + k.split(".routing.", 1)[1] for k in routing]
    decoder = [k for k in OLD_KEYS if k.startswith("decoder.") and (net.decoder.skip or ".lgag" not in k)]
    heads = [k for k in OLD_KEYS if k.startswith("head")]
    stem_encoder = [k for k in current if k.startswith(("stem.", "encoder."))]
    return stem_encoder + decoder + old_routing + heads


def _old_state_dict(net: torch.nn.Module) -> dict:
    """``net``'s state dict as the code before the change saved it (old names, old order)."""
    old = _old_order(net)
    mapping = dict(zip(old, convert_emcad_state_dict(dict.fromkeys(old))))
    current = net.state_dict()
    assert sorted(mapping.values()) == sorted(current)  # the converter is a bijection onto the current keys
    return {k: current[mapping[k]] for k in old}


@pytest.mark.parametrize("xattnres", [False, True])
def test_converter_maps_old_keys_exactly(xattnres):
    net = EMCADNet(encoder="b2", xattnres=xattnres)
    current = list(net.state_dict())
    old = _old_order(net)
    converted = list(convert_emcad_state_dict(dict.fromkeys(old)))
    assert len(converted) == len(old) == len(current) and set(converted) == set(current)
    expected = {
        "decoder.cab4.fc1.weight": "decoder.stages.0.cab.fc1.weight",
        "decoder.mscb4.pconv2.1.running_var": "decoder.stages.0.mscb.pconv2.1.running_var",
        "decoder.eucb3.dwconv.0.weight": "decoder.stages.1.up.dwconv.0.weight",
        "decoder.cab1.fc2.weight": "decoder.stages.3.cab.fc2.weight",
        "decoder.lgag3.W_g.0.weight": "decoder.stages.1.gate.W_g.0.weight",
        "decoder.lgag1.psi.1.num_batches_tracked": "decoder.stages.3.gate.psi.1.num_batches_tracked",
        "decoder.sab.conv.weight": "decoder.sab.conv.weight",
        "head4.weight": "heads.0.weight",
        "head1.bias": "heads.3.bias",
        "encoder.patch_embed1.proj.weight": "encoder.patch_embed1.proj.weight",
    }
    if xattnres:
        expected.update({"decoder.routing4.query": "decoder.stages.0.routing.query",
                         "decoder.routing1.gain": "decoder.stages.3.routing.gain"})  # fmt: skip
    mapping = dict(zip(old, converted))
    assert {k: mapping[k] for k in expected} == expected
    # current names pass unchanged (converting twice is harmless), values and order are kept
    assert list(convert_emcad_state_dict(dict.fromkeys(current))) == current
    values = {k: object() for k in old}
    assert list(convert_emcad_state_dict(values).values()) == list(values.values())
    # a DataParallel checkpoint: the prefix
    assert list(convert_emcad_state_dict({"module.head2.weight": 0, "head2.weight": 1}, prefix="module.")) == [
        "module.heads.2.weight",
        "head2.weight",
    ]


@pytest.mark.parametrize("xattnres", [False, True])
def test_old_checkpoint_loads_strictly_with_identical_outputs(xattnres):
    torch.manual_seed(0)
    net = EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=xattnres, query_init="normal").eval()
    old = _old_state_dict(net)
    assert any(k.startswith("decoder.cab4.") for k in old) and "head1.weight" in old
    torch.manual_seed(1)
    other = EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=xattnres, query_init="normal").eval()
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        assert not torch.equal(other(x), net(x))
        result = other.load_state_dict(old, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(other(x), net(x))
    assert list(old)[0].startswith("stem.") and "decoder.cab4.fc1.weight" in old  # the caller's dict is not renamed
    # the converted dict loads as well; so does a network nested in another module (prefix), and the decoder alone
    other.load_state_dict(convert_emcad_state_dict(old), strict=True)
    wrapper = torch.nn.Sequential(other)
    wrapper.load_state_dict({f"0.{k}": v for k, v in old.items()}, strict=True)
    decoder_old = {k[len("decoder."):]: v for k, v in old.items() if k.startswith("decoder.")}
    EMCADDecoder(2, (256, 160, 64, 32), xattnres=xattnres).load_state_dict(decoder_old, strict=True)
    # the package's strict checkpoint loading (evaluation, inference, resume) takes old checkpoints too
    from xattnres_monai.handlers.resume import _load_objects
    from xattnres_monai.networks.utils import state_dict_mismatch

    assert state_dict_mismatch(other, old) == ""
    torch.manual_seed(2)
    fresh = EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=xattnres, query_init="normal").eval()
    _load_objects("old.pt", {"model": fresh}, {"model": old})
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    # real mismatches are still refused: an old checkpoint with skips into a network without them
    no_skip = EMCADNet(in_channels=1, out_channels=2, encoder="b0", xattnres=xattnres, skip=False)
    assert "decoder.stages.1.gate" in state_dict_mismatch(no_skip, old)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*decoder\.stages\.1\.gate"):
        no_skip.load_state_dict(old, strict=True)


def test_converter_renames_metadata_and_refuses_duplicates():
    from collections import OrderedDict

    old = OrderedDict({"decoder.lgag3.psi.1.weight": 0, "head1.weight": 1, "encoder.norm1.weight": 2})
    old._metadata = OrderedDict([("", {"version": 1}), ("decoder", {"version": 1}), ("decoder.lgag3.psi.1", {"version": 2}),
                                 ("head1", {"version": 1}), ("encoder.norm1", {"version": 1})])  # fmt: skip
    converted = convert_emcad_state_dict(old)
    assert list(converted) == ["decoder.stages.1.gate.psi.1.weight", "heads.3.weight", "encoder.norm1.weight"]
    assert list(converted._metadata) == ["", "decoder", "decoder.stages.1.gate.psi.1", "heads.3", "encoder.norm1"]
    assert converted._metadata["decoder.stages.1.gate.psi.1"] == {"version": 2}
    with pytest.raises(ValueError, match="both older and current"):
        convert_emcad_state_dict({"head1.weight": 0, "heads.3.weight": 1})
    assert upgrade_emcad_decoder_key("routing1.projections.6.weight") == "stages.3.routing.projections.6.weight"
    assert upgrade_emcad_decoder_key("eucb4.pwconv.weight") == "eucb4.pwconv.weight"  # never existed
    assert upgrade_emcad_decoder_key("stages.0.cab.fc1.weight") == "stages.0.cab.fc1.weight"


def test_stages_are_module_lists_coarse_to_fine():
    net = EMCADNet(encoder="b0", xattnres=True)
    assert isinstance(net.heads, torch.nn.ModuleList) and len(net.heads) == 4
    assert [h.in_channels for h in net.heads] == [256, 160, 64, 32]
    assert isinstance(net.decoder.stages, torch.nn.ModuleList) and len(net.decoder.stages) == 4
    assert [s.cab.fc2.out_channels for s in net.decoder.stages] == [256, 160, 64, 32]
    assert [s.up.pwconv.out_channels for s in net.decoder.stages[1:]] == [160, 64, 32]
    with pytest.raises(ValueError, match="EMCADStage: gate must be a LGAG"):
        EMCADStage(CAB(2, 8), MSCB(2, 8), gate=CAB(2, 8))


def _sha(tensors) -> str:
    import hashlib

    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(PINNED))
def test_seeded_networks_unchanged(case):
    """Seeded construction and outputs bit for bit as recorded before the stages became lists.

    ``sd``: every parameter and buffer after ``torch.manual_seed(0)`` (in the old order, so creation order
    matters); ``eval`` / ``train``: the eval output and the four deep-supervision heads of a seeded input;
    ``grad``: the gradient of the last head's bias. Digests of this torch version's CPU kernels, one thread.
    """
    if torch.__version__ != PINNED_TORCH:
        pytest.skip(f"digests recorded with torch {PINNED_TORCH}")
    _, enc, in_ch, skip, xattnres, query_init = case.split("-")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = EMCADNet(in_channels=int(in_ch[2:]), out_channels=2, encoder=enc, skip=skip == "skip1",
                       xattnres=xattnres == "x1", query_init=query_init, deep_supervision=True)  # fmt: skip
        x = torch.randn(1, int(in_ch[2:]), 64, 48)
        old = _old_state_dict(net)
        net.eval()
        with torch.no_grad():
            y = net(x)
        net.train()
        heads = net(x)
        (grad,) = torch.autograd.grad(sum(o.square().mean() for o in heads), [net.heads[-1].bias])
    finally:
        torch.set_num_threads(previous)
    digests = {"sd": _sha(old.values()), "eval": _sha([y]), "train": _sha(heads), "grad": _sha([grad])}
    assert digests == PINNED[case]
