import pytest
import torch

from kdlab.errors import ConfigError
from kdlab.models import build_model

SPECS = [
    dict(arch="PSPNet", encoder="resnet18", encoder_depth=3),
    dict(arch="PSPNet", encoder="resnet18", encoder_depth=5, output_stride=8),
    dict(arch="DeepLabV3Plus", encoder="resnet18"),
    dict(arch="DeepLabV3Plus", encoder="mobilenet_v2", output_stride=8),
    dict(arch="FPN", encoder="resnet18"),
    dict(arch="UPerNet", encoder="resnet18"),
    dict(arch="Segformer", encoder="mit_b0"),
]


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['arch']}-{s['encoder']}")
def test_taps_do_not_change_logits_and_have_announced_channels(spec, image):
    model = build_model(spec, num_classes=5).eval()
    with torch.no_grad():
        plain = model(image)
        out = model.forward_taps(image, model.tap_names)
    assert plain.shape == (2, 5, 64, 64)
    assert torch.equal(out["logits"], plain)
    for name, channels in model.tap_channels.items():
        assert out[name].shape[:2] == (2, channels), name
    assert out["head_logits"].shape[1] == 5
    assert torch.equal(out["encoder_out"], out[model.stage_names[-1]])


def test_requesting_no_taps_returns_only_logits(image):
    model = build_model(SPECS[0], 4).eval()
    assert set(model.forward_taps(image)) == {"logits"}


def test_pre_relu_tap_is_the_input_of_the_final_relu(image):
    model = build_model(dict(arch="DeepLabV3Plus", encoder="resnet18"), 4).eval()
    with torch.no_grad():
        out = model.forward_taps(image, ["decoder", "decoder_pre_relu"])
    assert (out["decoder_pre_relu"] < 0).any()
    assert torch.equal(out["decoder"], out["decoder_pre_relu"].relu())


def test_output_stride_8_dilates_the_paper_pspnet(image):
    model = build_model(dict(arch="PSPNet", encoder="resnet18", encoder_depth=5, output_stride=8), 3).eval()
    with torch.no_grad():
        out = model.forward_taps(image, ["encoder_out", "head_logits"])
    assert out["encoder_out"].shape[1:] == (512, 8, 8)
    assert out["head_logits"].shape[-2:] == (8, 8)


@pytest.mark.parametrize("spec, option", [(dict(arch="UNetX"), "model.arch"), (dict(encoder="resnet1800"), "model.encoder"),
                                          (dict(colour="red"), "model")])
def test_unknown_model_options_are_named(spec, option):
    with pytest.raises(ConfigError, match=option):
        build_model(spec, 3)


def test_a_mistyped_encoder_name_suggests_the_close_ones():
    with pytest.raises(ConfigError, match=r"unknown encoder 'mobilenetv2' \(similar: \['mobilenet_v2'"):
        build_model(dict(encoder="mobilenetv2"), 3)


def test_unknown_tap_lists_available(image):
    model = build_model(SPECS[0], 3)
    with pytest.raises(ConfigError, match="available"):
        model.forward_taps(image, ["stage9"])
