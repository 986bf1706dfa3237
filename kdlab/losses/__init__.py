"""Distillation methods, one per file, registered by name in `REGISTRY`.

`kdlab.losses.functional` holds the pure functions (METHODS.md section 7); each method module is a
thin `DistillMethod` around them holding the method's trainable parts.
"""

from kdlab.losses import (  # noqa: F401  (registration)
    at, bcd, bpkd, cirkd, cwd, ifvd, kd, local_pairwise, mimic, ppd, skd, skd_holistic, skd_pairwise,
)
from kdlab.losses.base import REGISTRY, DistillMethod, MethodContext, Step, build_method, register

__all__ = ["REGISTRY", "DistillMethod", "MethodContext", "Step", "build_method", "register"]
