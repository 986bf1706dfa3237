"""``train.compile``: the student's encoder and decoder under torch.compile (off by default).

The tests compile with the ``aot_eager`` backend: it traces and partitions the graphs as inductor
does but runs them with eager kernels, so it needs no C++ toolchain and takes seconds, and its
numbers stay within float rounding of eager mode. The speed of inductor is `kdlab bench`'s to
measure (``train.compile=inductor``), never a test's.
"""

import json
from dataclasses import replace

import pytest
import torch

from kdlab.checkpoint import load_checkpoint
from kdlab.config import load_config
from kdlab.engine import run_config, train, train_cohort
from kdlab.errors import ConfigError
from kdlab.models.zoo import SegModel, build_model

BACKEND = "aot_eager"


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _is_compiled(module: torch.nn.Module) -> bool:
    return module._compiled_call_impl is not None


@pytest.fixture
def compiled_models(monkeypatch) -> list[SegModel]:
    """The students that `SegModel.compile_for` compiled during the test."""
    models, compile_for = [], SegModel.compile_for

    def spy(self, taps, backend):
        models.append(self)
        compile_for(self, taps, backend)

    monkeypatch.setattr(SegModel, "compile_for", spy)
    return models


def test_a_compiled_run_trains_like_an_eager_one_and_its_checkpoint_loads_without_compile(tiny_overrides,
                                                                                          compiled_models):
    eager = train(load_config(["configs/student.yaml"], tiny_overrides + ["name=eager"]), progress=False)
    assert not compiled_models
    compiled = train(load_config(["configs/student.yaml"], tiny_overrides + ["name=compiled",
                                                                             f"train.compile={BACKEND}"]),
                     progress=False)
    (model,) = compiled_models
    assert _is_compiled(model.net.encoder) and _is_compiled(model.net.decoder)
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
    a, b = load_checkpoint(eager)["model"], load_checkpoint(compiled)["model"]
    assert list(a) == list(b)  # no "_orig_mod." prefixes: the checkpoint is the eager model's
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5) for k in a)
    scores = [json.loads((run / "results.json").read_text())["mIoU"] for run in (eager, compiled)]
    assert scores[1] == pytest.approx(scores[0], abs=1e-3)


def test_a_compiled_run_resumes_and_may_resume_eagerly(tiny_overrides):
    cfg = load_config(["configs/student.yaml"], tiny_overrides + ["name=split", f"train.compile={BACKEND}"])
    partial = train(cfg, until=2, progress=False)
    assert load_checkpoint(partial)["iteration"] == 2
    resumed_cfg = run_config(partial)
    assert resumed_cfg.train.compile == BACKEND  # the run directory records how it was trained
    eagerly = replace(resumed_cfg, train=replace(resumed_cfg.train, compile=None))  # as `--resume DIR train.compile=null`
    resumed = train(eagerly, resume=True, progress=False)
    assert load_checkpoint(resumed)["iteration"] == 4 and len(_losses(resumed)) == 4


def test_each_run_of_a_compiled_cohort_trains_its_own_weights(tiny_overrides, compiled_models):
    """Each run compiles its own copy of the student (a deep copy of a compiled module is eager):
    two identical runs of one cohort end where one eager run alone ends."""
    cfgs = [load_config(["configs/student.yaml"], tiny_overrides + [f"name=c{i}", f"train.compile={BACKEND}"])
            for i in range(2)]
    runs = train_cohort(cfgs, progress=False)
    assert len({id(m) for m in compiled_models}) == 2
    assert all(_is_compiled(m.net.encoder) and _is_compiled(m.net.decoder) for m in compiled_models)
    alone = train(load_config(["configs/student.yaml"], tiny_overrides + ["name=alone"]), progress=False)
    weights = [load_checkpoint(run)["model"] for run in [*runs, alone]]
    for key in weights[2]:
        assert torch.allclose(weights[0][key].float(), weights[2][key].float(), rtol=1e-3, atol=1e-5), key
        assert torch.allclose(weights[1][key].float(), weights[2][key].float(), rtol=1e-3, atol=1e-5), key


def test_the_decoder_stays_eager_when_its_pre_relu_tap_is_needed():
    torch.manual_seed(0)
    eager = build_model({"arch": "DeepLabV3Plus", "encoder": "resnet18"}, 3).eval()
    compiled = build_model({"arch": "DeepLabV3Plus", "encoder": "resnet18"}, 3).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_for(["decoder_pre_relu", "stage2"], BACKEND)
    assert _is_compiled(compiled.net.encoder) and not _is_compiled(compiled.net.decoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, got = (m.forward_taps(x, ["decoder_pre_relu", "stage2"]) for m in (eager, compiled))
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5), name
    both = build_model({"arch": "PSPNet", "encoder": "resnet18", "encoder_depth": 3}, 3)
    both.compile_for(["stage2"], BACKEND)
    assert _is_compiled(both.net.encoder) and _is_compiled(both.net.decoder)


def test_an_unknown_backend_is_refused_before_any_work(tiny_overrides):
    with pytest.raises(ConfigError, match=r"^train.compile: must be a torch.compile backend"):
        load_config(["configs/student.yaml"], tiny_overrides + ["train.compile=turbo"])
