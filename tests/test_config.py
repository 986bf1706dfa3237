import pytest
import yaml

from kdlab.config import RunConfig, config_from_dict, config_to_dict, dump_config, load_config, parse_override
from kdlab.errors import ConfigError


def test_defaults_and_overrides_merge_in_order(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("train:\n  lr: 0.05\n  iterations: 10\nmodel:\n  encoder: resnet34\n")
    second = tmp_path / "b.yaml"
    second.write_text("train:\n  iterations: 20\n")
    cfg = load_config([first, second], ["train.batch_size=3", "model.extra={decoder_channels: 64}"])
    assert cfg.train.lr == 0.05 and cfg.train.iterations == 20 and cfg.train.batch_size == 3
    assert cfg.model.encoder == "resnet34" and cfg.model.extra == {"decoder_channels": 64}
    assert cfg.data == RunConfig().data


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config([], ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.iterations"):
        load_config([], ["train.iterations=1.5"])


def test_optional_fields_take_null():
    assert load_config([], ["train.grad_clip=null"]).train.grad_clip is None
    assert load_config([], ["train.grad_clip=5"]).train.grad_clip == 5.0


@pytest.mark.parametrize("override, key", [("train.lrr=0.1", "train.lrr"), ("modle.arch=FPN", "modle"),
                                           ("eval.band_widths=[1, x]", "eval.band_widths[1]")])
def test_unknown_or_mistyped_keys_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config([], [override])


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config([bad])


def test_override_needs_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config([], ["name=x", "train.grad_clip=2.5", "model.output_stride=8"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_exponent_without_dot_is_a_float():
    assert load_config([], ["train.lr=1e-4"]).train.lr == 1e-4
    with pytest.raises(ConfigError, match="train.lr"):
        load_config([], ["train.lr=fast"])


@pytest.mark.parametrize("override, key", [
    ("train.iterations=0", "train.iterations"), ("train.iterations=-4", "train.iterations"),
    ("train.log_interval=0", "train.log_interval"), ("train.batch_size=0", "train.batch_size"),
    ("data.crop_size=0", "data.crop_size"), ("eval.mode=foo", "eval.mode"), ("train.lr=-1", "train.lr"),
    ("eval.band_widths=[]", "eval.band_widths"), ("data.scale_max=0.1", "data.scale_max"),
])
def test_out_of_range_values_are_refused_before_any_work(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: must be"):
        load_config(["configs/student.yaml"], [override])
