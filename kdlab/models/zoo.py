"""Segmentation models from segmentation-models-pytorch with named intermediate tensors.

`SegModel(x)` returns the logits (N×C×H×W at input resolution), so the model can be
handed to anything that expects a plain segmentation network (grad-cam, evaluation).
`SegModel.forward_taps(x, taps)` returns a dict holding the logits plus the named
tensors a distiller may tap:

- ``stem``: output of the first convolution block (the first encoder feature after the input),
- ``stage1`` … ``stageK``: every encoder stage (smp's ``model.encoder(x)`` list, input and
  empty stages dropped), ``encoder_out`` = the last stage,
- ``decoder``: the decoder's last feature map before the classifier,
- ``decoder_pre_relu``: the same map before its final ReLU (where the decoder ends in one),
- ``head_logits``: the classifier output before the head's upsampling (decoder resolution),
- ``logits``: the final logits at input resolution.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import segmentation_models_pytorch as smp
import torch
from torch import nn

from kdlab.config import ModelSpec
from kdlab.errors import ConfigError

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "Unet": smp.Unet,
    "FPN": smp.FPN,
    "PSPNet": smp.PSPNet,
    "DeepLabV3": smp.DeepLabV3,
    "DeepLabV3Plus": smp.DeepLabV3Plus,
    "UPerNet": smp.UPerNet,
    "Segformer": smp.Segformer,
    "PAN": smp.PAN,
}

# How each architecture spells "dilate the encoder to this output stride".
_OUTPUT_STRIDE_ARG = {"DeepLabV3": "encoder_output_stride", "DeepLabV3Plus": "encoder_output_stride"}


def _smp_kwargs(spec: ModelSpec, num_classes: int) -> dict:
    kwargs = dict(encoder_name=spec.encoder, encoder_weights=spec.encoder_weights, classes=num_classes)
    if spec.encoder_depth is not None:
        kwargs["encoder_depth"] = spec.encoder_depth
    if spec.output_stride is not None:
        kwargs[_OUTPUT_STRIDE_ARG.get(spec.arch, "output_stride")] = spec.output_stride
        if spec.arch == "PSPNet":
            kwargs["upsampling"] = spec.output_stride
    kwargs.update(spec.extra)
    return kwargs


def validate_spec(spec: ModelSpec) -> None:
    """Unknown architecture or encoder names fail here, with the valid choices listed."""
    if spec.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch: unknown architecture {spec.arch!r}; choose from {sorted(ARCHITECTURES)}")
    known_encoders = smp.encoders.get_encoder_names()
    if spec.encoder not in known_encoders:
        close = difflib.get_close_matches(spec.encoder, known_encoders, n=8, cutoff=0.6)
        raise ConfigError(f"model.encoder: unknown encoder {spec.encoder!r} (similar: {close})")


def build_smp_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """The bare smp model for `spec`."""
    validate_spec(spec)
    try:
        return ARCHITECTURES[spec.arch](**_smp_kwargs(spec, num_classes))
    except Exception as err:
        if spec.encoder_weights is not None and _is_download_error(err):
            raise ConfigError(f"model.encoder_weights={spec.encoder_weights}: cannot download the {spec.encoder} "
                              f"weights ({type(err).__name__}; offline?); use model.encoder_weights=null or put the "
                              "weights in the Hugging Face / torch hub cache (HF_HOME, TORCH_HOME)") from err
        if isinstance(err, (TypeError, ValueError, KeyError)):
            raise ConfigError(f"model: cannot build {spec.arch}/{spec.encoder}: {err}") from err
        raise


def _is_download_error(err: BaseException) -> bool:
    """A failed fetch of pretrained weights: smp and timm download through huggingface_hub (httpx or
    requests) or torch.hub (urllib), whose errors are OSErrors (URLError, HTTPError, ConnectionError,
    LocalEntryNotFoundError, timeouts) or come from those libraries."""
    libraries = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib")
    return isinstance(err, OSError) or any(cls.__module__.split(".")[0] in libraries for cls in type(err).__mro__)


class SegModel(nn.Module):
    """An smp model plus named taps; see the module docstring for the tap names."""

    def __init__(self, spec: ModelSpec, num_classes: int):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.net = build_smp_model(spec, num_classes)
        self._stage_index = {
            f"stage{i}": i for i, ch in enumerate(self.net.encoder.out_channels) if i > 0 and ch > 0
        }
        self._decoder_relus = [m for m in self.net.decoder.modules() if isinstance(m, nn.ReLU)]
        for relu in self._decoder_relus:
            relu.inplace = False  # the pre-ReLU tap keeps a reference to the ReLU's input
        self.tap_channels = self._measure_tap_channels()

    @property
    def stage_names(self) -> list[str]:
        return list(self._stage_index)

    @property
    def tap_names(self) -> list[str]:
        return list(self.tap_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def input_divisor(self) -> int:
        """What input heights and widths must be multiples of (smp's output-stride check)."""
        return self.net.encoder.output_stride if getattr(self.net, "requires_divisible_input_shape", False) else 1

    def forward_taps(self, x: torch.Tensor, taps: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Logits plus the requested named tensors, from one forward pass.

        The logits are identical to ``self(x)``; taps that are not requested are not kept.
        """
        taps = set(taps)
        unknown = taps - set(self.tap_channels)
        if unknown:
            raise ConfigError(f"taps: {sorted(unknown)} not provided by {self.spec.arch}/{self.spec.encoder}; "
                              f"available: {self.tap_names}")
        return self._run_with_taps(x, taps)

    def _run_with_taps(self, x: torch.Tensor, taps: set[str]) -> dict[str, torch.Tensor]:
        pre_relu: list[torch.Tensor] = []
        handles = []
        if "decoder_pre_relu" in taps:
            handles = [r.register_forward_pre_hook(lambda _m, inp: pre_relu.append(inp[0]))
                       for r in self._decoder_relus]
        try:
            features = self.net.encoder(x)
            decoder_out = self.net.decoder(features)
        finally:
            for h in handles:
                h.remove()
        classifier, *upsampling = self.net.segmentation_head
        head_logits = classifier(decoder_out)
        logits = head_logits
        for layer in upsampling:
            logits = layer(logits)
        out = {"logits": logits}
        available = {"decoder": decoder_out, "head_logits": head_logits}
        if pre_relu:
            available["decoder_pre_relu"] = pre_relu[-1]
        for name, index in self._stage_index.items():
            available[name] = features[index]
        available["stem"] = features[next(iter(self._stage_index.values()))]
        available["encoder_out"] = features[-1]
        out.update({name: available[name] for name in taps if name != "logits"})
        return out

    def compile_for(self, taps: Iterable[str], backend: str) -> None:
        """Compile the encoder and decoder in place (``nn.Module.compile``: the state dict keeps its
        keys, so checkpoints load with or without it). The decoder stays eager when ``taps`` hold
        ``decoder_pre_relu``: that tap adds hooks on each call, which a compiled graph would not run."""
        self.net.encoder.compile(backend=backend)
        if "decoder_pre_relu" not in set(taps):
            self.net.decoder.compile(backend=backend)

    @torch.no_grad()
    def _measure_tap_channels(self) -> dict[str, int]:
        """Channel count of every tap, read from one tiny forward pass in eval mode."""
        was_training = self.training
        self.eval()
        probe = torch.zeros(1, 3, 64, 64)
        names = ["stem", *self._stage_index, "encoder_out", "decoder", "head_logits", "logits"]
        if self._decoder_relus:
            names.insert(names.index("decoder"), "decoder_pre_relu")
        try:
            out = self._run_with_taps(probe, set(names))
        finally:
            self.train(was_training)
        return {name: out[name].shape[1] for name in names}


def build_model(spec: ModelSpec | dict, num_classes: int) -> SegModel:
    """Build a `SegModel` from a spec (or a dict of its fields)."""
    if isinstance(spec, dict):
        unknown = set(spec) - set(ModelSpec.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"model: unknown option(s) {sorted(unknown)}; valid: {sorted(ModelSpec.__dataclass_fields__)}")
        spec = ModelSpec(**spec)
    return SegModel(spec, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
