"""Configuration values are checked like any other input: option checkers, and every constructor option refused
with one line naming the option, the value and what is expected (``python -m monai.bundle run`` passes ``false``
as the *string* ``"false"``, which must never be taken for its truthiness)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from xattnres_monai.networks.blocks import (
    CAB,
    EUCB,
    LGAG,
    MSCB,
    SAB,
    ChannelCrossAttention,
    DepthwiseProjection,
    DualCrossAttention,
    EMCADDecoder,
    SpatialCrossAttention,
    XAttnRes,
)
from xattnres_monai.networks.nets import EMCADNet, PVTv2, PVTv2Encoder, XAttnResUNet
from xattnres_monai.networks.nets.xattnres_unet import DecoderStage, DoubleConv, EncoderStage
from xattnres_monai.utils import files, options
from xattnres_monai.utils.options import (
    as_bool,
    as_choice,
    as_float,
    as_float_sequence,
    as_int,
    as_int_sequence,
    as_optional_path,
)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        fn(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------------- checkers


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        (" True ", True),
        ("yes", True),
        ("1", True),
        (1, True),
        (np.bool_(True), True),
        ("false", False),
        ("False", False),
        ("NO", False),
        ("0", False),
        (0, False),
        (0.0, False),
        (torch.tensor(False), False),
    ],
)
def test_as_bool_parses_command_line_spellings(value, expected):
    assert as_bool(value, "opt") is expected


@pytest.mark.parametrize("value", ["maybe", "", "none", "null", "t", 2, -1, 0.5, None, [], "truee"])
def test_as_bool_refuses_anything_else(value):
    message = one_line_error(as_bool, value, "Net: flag")
    assert message == f"Net: flag must be true or false (also 1/0, yes/no), got {value!r}."


def test_as_bool_is_reexported_from_files():
    assert files.as_bool is options.as_bool
    assert files.as_bool("false", "overwrite") is False


def test_as_int():
    assert as_int(3, "n") == 3
    assert as_int(np.int64(4), "n") == 4
    assert as_int("9", "n") == 9  # strings of decimal digits are parsed
    assert as_int(" -2 ", "n") == -2
    assert as_int("5", "n", min=1, max=5) == 5
    for value in (True, 2.0, 2.5, "2.0", "nine", "", None, [2]):
        assert one_line_error(as_int, value, "Net: n") == f"Net: n must be an integer, got {value!r}."
    assert one_line_error(as_int, 0, "Net: n", min=1) == "Net: n must be an integer >= 1, got 0."
    assert one_line_error(as_int, "7", "Net: n", max=6) == "Net: n must be an integer <= 6, got '7'."
    assert one_line_error(as_int, 3, "Net: n", min=0, max=2) == "Net: n must be an integer in [0, 2], got 3."


def test_as_float():
    assert as_float(0.5, "r") == 0.5
    assert as_float(1, "r") == 1.0
    assert as_float("1e-4", "r") == 1e-4
    assert as_float(" 0.25 ", "r", min=0, max=1) == 0.25
    for value in (True, "half", float("nan"), float("inf"), "inf", None, [0.5]):
        assert one_line_error(as_float, value, "Net: r") == f"Net: r must be a number, got {value!r}."
    expected = "Net: r must be a number in [0.0, 1.0), got 1.0."
    assert one_line_error(as_float, 1.0, "Net: r", min=0.0, max=1.0, max_open=True) == expected
    assert one_line_error(as_float, 0, "Net: r", min=0.0, min_open=True) == "Net: r must be a number > 0.0, got 0."
    assert one_line_error(as_float, -1, "Net: r", min=0.0) == "Net: r must be a number >= 0.0, got -1."


def test_as_choice():
    choices = ("none", "encoder", "decoder", "full")
    assert as_choice("full", "x", choices) == "full"
    assert as_choice("FULL", "x", choices) == "full"
    assert as_choice(" Encoder ", "x", choices) == "encoder"
    with pytest.raises(ValueError):
        as_choice("FULL", "x", choices, case_sensitive=True)
    for value in ("middle", "", False, None, 1):
        message = one_line_error(as_choice, value, "Net: xattnres", choices)
        assert message == f"Net: xattnres must be one of {choices}, got {value!r}."


def test_as_sequences():
    assert as_int_sequence((16, "32"), "c", min=1) == [16, 32]
    assert as_int_sequence(torch.Size([1, 2]), "c") == [1, 2]
    assert as_int_sequence(np.array([3, 4]), "c") == [3, 4]
    assert as_float_sequence([0.75, "1", 1.25], "r", min=0, min_open=True) == [0.75, 1.0, 1.25]
    # a string is refused, never iterated character by character
    message = one_line_error(as_int_sequence, "16,32", "Net: channels", min=1)
    assert message == "Net: channels must be a list of integers >= 1, got '16,32'."
    assert one_line_error(as_int_sequence, 16, "Net: channels").endswith("got 16.")
    assert one_line_error(as_int_sequence, [16, 0], "Net: channels", min=1) == (
        "Net: channels[1] must be an integer >= 1, got 0."
    )
    assert "at least 2" in one_line_error(as_int_sequence, [16], "Net: channels", min_length=2)
    assert "exactly 4" in one_line_error(as_int_sequence, [1, 2, 3], "Net: channels", length=4)
    assert "rates[1]" in one_line_error(as_float_sequence, [1.0, 0.0], "rates", min=0, min_open=True)


def test_as_optional_path():
    assert as_optional_path(None, "p") is None
    assert as_optional_path("a.pth", "p") == "a.pth"
    for value in ("", False, 3):
        assert one_line_error(as_optional_path, value, "Net: p") == f"Net: p must be a file path or null, got {value!r}."


# ------------------------------------------------------------------------------- the routing flags of the bug


def test_unet_bool_strings_build_the_configuration_they_name():
    baseline = count(XAttnResUNet(2, 1, 9, skip=True, xattnres="none"))
    no_skip = count(XAttnResUNet(2, 1, 9, skip=False, xattnres="none"))
    assert no_skip != baseline
    for word in ("false", "False", "FALSE", "0", "no"):
        net = XAttnResUNet(2, 1, 9, skip=word, xattnres="none")
        assert net.skip is False
        assert count(net) == no_skip
    for word in ("true", "TRUE", "1", "yes"):
        assert count(XAttnResUNet(2, 1, 9, skip=word, xattnres="none")) == baseline
    replace, both = XAttnResUNet(2, 1, 9, skip=False, xattnres="full"), XAttnResUNet(2, 1, 9)
    assert count(XAttnResUNet(2, 1, 9, skip="false", xattnres="full")) == count(replace) != count(both)
    assert count(XAttnResUNet(2, 1, 9, skip="TRUE", xattnres="FULL")) == count(both)
    message = one_line_error(XAttnResUNet, 2, 1, 9, skip="maybe")
    assert message == "XAttnResUNet: skip must be true or false (also 1/0, yes/no), got 'maybe'."


def test_unet_dca_false_string_adds_no_dca():
    plain = XAttnResUNet(2, 1, 9, xattnres="none")
    off = XAttnResUNet(2, 1, 9, xattnres="none", dca="false")
    on = XAttnResUNet(2, 1, 9, xattnres="none", dca="true")
    assert off.dca is None and not any(name.startswith("dca.") for name, _ in off.named_parameters())
    assert count(off) == count(plain)
    assert on.dca is not None and count(on) == count(plain) + 33_520
    with pytest.raises(ValueError, match="needs skip=True"):
        XAttnResUNet(2, 1, 9, skip="false", dca="true")


def test_unet_parses_numbers_and_choices_given_as_strings():
    net = XAttnResUNet("2", "1", "9", encoder_channels=("8", 16), decoder_channels=[8], xattnres="Decoder",
                       query_init="Normal")
    assert (net.spatial_dims, net.in_channels, net.out_channels, net.xattnres) == (2, 1, 9, "decoder")
    assert net.decoder[0].routing.query_init == "normal"


def test_emcad_xattnres_false_string_is_plain_emcad():
    plain = count(EMCADNet(in_channels=1, encoder="b0", xattnres=False))
    routed = count(EMCADNet(in_channels=1, encoder="b0", xattnres=True))
    assert plain != routed
    assert count(EMCADNet(in_channels=1, encoder="b0", xattnres="false")) == plain
    assert count(EMCADNet(in_channels=1, encoder="b0", xattnres="True", skip="false")) == count(
        EMCADNet(in_channels=1, encoder="b0", xattnres=True, skip=False)
    )
    assert EMCADNet(in_channels=1, encoder="b0", deep_supervision="false").deep_supervision is False


# ------------------------------------------------------------------------- every constructor option refused

BAD_OPTIONS = [
    # (constructor, valid arguments, option, bad value, expected wording)
    (XAttnResUNet, {}, "spatial_dims", 4, "2 or 3"),
    (XAttnResUNet, {}, "spatial_dims", "two", "an integer"),
    (XAttnResUNet, {}, "in_channels", 0, "an integer >= 1"),
    (XAttnResUNet, {}, "out_channels", 2.5, "an integer >= 1"),
    (XAttnResUNet, {}, "encoder_channels", "16,32", "a list of"),
    (XAttnResUNet, {}, "encoder_channels", (16, -32), "an integer >= 1"),
    (XAttnResUNet, {}, "decoder_channels", 16, "a list of"),
    (XAttnResUNet, {}, "skip", "maybe", "true or false"),
    (XAttnResUNet, {}, "skip", None, "true or false"),
    (XAttnResUNet, {}, "xattnres", "middle", "one of ('none', 'encoder', 'decoder', 'full')"),
    (XAttnResUNet, {}, "xattnres", False, "one of ('none', 'encoder', 'decoder', 'full')"),
    (XAttnResUNet, {}, "query_init", "ones", "one of ('zero', 'normal', 'kaiming_uniform', 'xavier_uniform')"),
    (XAttnResUNet, {}, "dca", "on", "true or false"),
    (DoubleConv, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}, "mid_channels", 0, "an integer >= 1"),
    (EncoderStage, {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "routing": None}, "downsample", "x",
     "true or false"),
    (DecoderStage, {"spatial_dims": 2, "in_channels": 4, "skip_channels": 2, "out_channels": 2, "routing": None},
     "skip_channels", -1, "an integer >= 0"),
    (EMCADNet, {"encoder": "b0"}, "spatial_dims", 3, "spatial_dims=2"),
    (EMCADNet, {"encoder": "b0"}, "in_channels", 2, "1 (grey"),
    (EMCADNet, {"encoder": "b0"}, "in_channels", "three", "an integer"),
    (EMCADNet, {"encoder": "b0"}, "out_channels", 0, "an integer >= 1"),
    (EMCADNet, {}, "encoder", "b9", "a PVTv2 variant, one of ['b0'"),
    (EMCADNet, {}, "encoder", 2, "a PVTv2 variant, one of ['b0'"),
    (EMCADNet, {"encoder": "b0"}, "pretrained_path", False, "a file path or null"),
    (EMCADNet, {"encoder": "b0"}, "skip", "nope", "true or false"),
    (EMCADNet, {"encoder": "b0"}, "xattnres", "full", "true or false"),
    (EMCADNet, {"encoder": "b0"}, "query_init", "one", "one of ('zero'"),
    (EMCADNet, {"encoder": "b0"}, "deep_supervision", "sometimes", "true or false"),
    (EMCADNet, {"encoder": "b0"}, "drop_path_rate", 1.0, "a number in [0.0, 1.0)"),
    (PVTv2, {"variant": "b0"}, "in_channels", 0, "an integer >= 1"),
    (PVTv2, {"variant": "b0"}, "drop_path_rate", "-0.1", "a number in [0.0, 1.0)"),
    (PVTv2, {}, "variant", None, "variant must be one of"),
    (PVTv2, {"variant": "b0"}, "pretrained_path", "", "a file path or null"),
    (PVTv2Encoder, {"variant": "b0"}, "pretrained", "maybe", "true or false"),
    (PVTv2Encoder, {"variant": "b0"}, "spatial_dims", 3, "spatial_dims=2"),
    (XAttnRes, {"spatial_dims": 2, "channels": 4, "history_channels": [4]}, "spatial_dims", 1, "2 or 3"),
    (XAttnRes, {"spatial_dims": 2, "channels": 4, "history_channels": [4]}, "channels", "four", "an integer"),
    (XAttnRes, {"spatial_dims": 2, "channels": 4, "history_channels": [4]}, "history_channels", "44", "a list of"),
    (XAttnRes, {"spatial_dims": 2, "channels": 4, "history_channels": [4]}, "query_init", "ones", "one of ('zero'"),
    (XAttnRes, {"spatial_dims": 2, "channels": 4, "history_channels": [4]}, "eps", 0, "a number > 0.0"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "spatial_dims", "3d", "an integer"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "channels", "48", "a list of"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "patch_size", 0, "an integer >= 1"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "num_heads", 1.5, "an integer >= 1"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "max_tokens", -5, "an integer >= 1"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "channel_attention", "off", "true or false"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "spatial_attention", "none", "true or false"),
    (DualCrossAttention, {"spatial_dims": 2, "channels": [4, 8]}, "eps", -1e-6, "a number > 0.0"),
    (ChannelCrossAttention, {"channels": [4]}, "eps", "tiny", "a number > 0.0"),
    (SpatialCrossAttention, {"channels": [4]}, "num_heads", 0, "an integer >= 1"),
    (DepthwiseProjection, {}, "channels", 0, "an integer >= 1"),
    (CAB, {"spatial_dims": 2, "channels": 16}, "ratio", 0, "an integer >= 1"),
    (CAB, {"spatial_dims": 2, "channels": 16}, "spatial_dims", "2d", "an integer"),
    (SAB, {"spatial_dims": 2}, "kernel_size", 4, "a positive odd integer"),
    (MSCB, {"spatial_dims": 2, "channels": 8}, "kernel_sizes", (1, 2), "a positive odd integer"),
    (MSCB, {"spatial_dims": 2, "channels": 8}, "expansion_factor", 0, "an integer >= 1"),
    (EUCB, {"spatial_dims": 2, "in_channels": 8, "out_channels": 4}, "kernel_size", 2, "a positive odd integer"),
    (EUCB, {"spatial_dims": 2, "in_channels": 8, "out_channels": 4}, "out_channels", "x", "an integer >= 1"),
    (LGAG, {"spatial_dims": 2, "channels": 8}, "kernel_size", 0, "an integer >= 1"),
    (EMCADDecoder, {"spatial_dims": 2, "channels": (32, 16, 8, 4)}, "skip", "maybe", "true or false"),
    (EMCADDecoder, {"spatial_dims": 2, "channels": (32, 16, 8, 4)}, "xattnres", "full", "true or false"),
    (EMCADDecoder, {"spatial_dims": 2, "channels": (32, 16, 8, 4)}, "query_init", "x", "one of ('zero'"),
    (EMCADDecoder, {"spatial_dims": 2, "channels": (32, 16, 8, 4)}, "lgag_kernel_size", 4, "positive odd"),
    (EMCADDecoder, {"spatial_dims": 2, "channels": (32, 16, 8, 4)}, "kernel_sizes", 3, "a list of"),
]


@pytest.mark.parametrize(
    "cls, kwargs, option, value, expected",
    BAD_OPTIONS,
    ids=[f"{c.__name__}-{o}-{v!r}" for c, _, o, v, _ in BAD_OPTIONS],
)
def test_bad_option_is_refused_naming_option_and_value(cls, kwargs, option, value, expected):
    message = one_line_error(cls, **{**kwargs, option: value})
    assert re.search(rf"\b{option}\b", message), message
    item = re.search(rf"\b{option}\[(\d+)\] must", message)  # a bad item of a list is named with its index
    assert repr(value if item is None else value[int(item.group(1))]) in message, message
    assert expected in message, message
    assert message.startswith(f"{cls.__name__}") or message.startswith(("PVTv2", "XAttnRes")), message


# ------------------------------------------------------------- bundle components that take configuration values


def test_bundle_components_parse_and_refuse_options(tmp_path):
    from xattnres_monai.engines import MultiScalePrepareBatch
    from xattnres_monai.handlers import BinarySegmentationReport, EpochCheckpoint, GradientClipping
    from xattnres_monai.handlers.report import SegmentationReport
    from xattnres_monai.losses import MutationLoss, StructureLoss

    clipping = GradientClipping("0.5", "NORM")
    assert (clipping.clip, clipping.mode) == (0.5, "norm")
    assert "GradientClipping: clip" in one_line_error(GradientClipping, 0)
    assert "one of ('value', 'norm')" in one_line_error(GradientClipping, 0.5, "max")

    checkpoint = EpochCheckpoint(str(tmp_path), {}, resume="false", n_saved="3", overwrite="TRUE")
    assert (checkpoint.resume, checkpoint.n_saved, checkpoint.overwrite) == (False, 3, True)
    assert one_line_error(EpochCheckpoint, str(tmp_path), {}, n_saved=0) == (
        "EpochCheckpoint: n_saved must be an integer >= 1, got 0."
    )
    assert "EpochCheckpoint: resume" in one_line_error(EpochCheckpoint, str(tmp_path), {}, resume="later")

    assert "SegmentationReport: num_classes" in one_line_error(SegmentationReport, str(tmp_path), num_classes="x")
    assert "SegmentationReport: overwrite" in one_line_error(SegmentationReport, str(tmp_path), overwrite="nah")
    report = BinarySegmentationReport(str(tmp_path), flops_input_shape=["1", 3, 64, 64], overwrite="false")
    assert report.flops_input_shape == (1, 3, 64, 64) and report.overwrite is False
    assert "flops_input_shape" in one_line_error(BinarySegmentationReport, str(tmp_path), flops_input_shape="1x3")

    assert StructureLoss("7", "2.5").kernel_size == 7
    assert "StructureLoss: boundary_weight" in one_line_error(StructureLoss, 31, -1)
    assert "kernel_size" in one_line_error(StructureLoss, 4)
    loss = MutationLoss(sigmoid="true", lambda_ce="0.3", lambda_dice=0.7)
    assert loss.loss.dice.sigmoid is True and loss.loss.lambda_ce == pytest.approx(0.3)
    assert "MutationLoss: softmax" in one_line_error(MutationLoss, softmax="false-ish")
    assert "MutationLoss: lambda_ce" in one_line_error(MutationLoss, lambda_ce=-1)

    assert MultiScalePrepareBatch("352", ["0.75", 1.0, 1.25], "32").sizes == ((256, 256), (352, 352), (448, 448))
    assert "MultiScalePrepareBatch: rates" in one_line_error(MultiScalePrepareBatch, 352, "0.75,1.0")
    assert "rates[0]" in one_line_error(MultiScalePrepareBatch, 352, [0.0, 1.0])
    assert "MultiScalePrepareBatch: multiple" in one_line_error(MultiScalePrepareBatch, 352, (1.0,), 0)
    assert "MultiScalePrepareBatch: base_size" in one_line_error(MultiScalePrepareBatch, "big")


def test_slice_dataset_options():
    from xattnres_monai.data.slices import SliceDataset

    identity = lambda item: item  # noqa: E731
    assert "SliceDataset: slice_dim" in one_line_error(SliceDataset, [], identity, slice_dim=3)
    assert "SliceDataset: num_workers" in one_line_error(SliceDataset, [], identity, num_workers=-1)
    assert "SliceDataset: keys" in one_line_error(SliceDataset, [], identity, keys=[])
    assert "SliceDataset: volume_transform" in one_line_error(SliceDataset, [], "LoadImaged")
    assert "SliceDataset: data" in one_line_error(SliceDataset, "datalist.json", identity)
