"""Model zoo: smp architectures wrapped to expose named intermediate tensors."""

from kdlab.models.zoo import ARCHITECTURES, ModelSpec, SegModel, build_model, count_parameters

__all__ = ["ARCHITECTURES", "ModelSpec", "SegModel", "build_model", "count_parameters"]
