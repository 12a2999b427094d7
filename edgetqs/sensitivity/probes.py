"""Probes: how a weight group is perturbed for its TQS sweep. Registered by name; add one with `PROBES.register`.

- ``gauss``: d ~ N(0, (s * rms(W))^2) per tensor, s small (1e-3): the linear-response gain.
- ``quant``: d = Q_b(W) - W, the residual of b-bit round-to-nearest per output channel: the damage of
  one realistic quantization.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..core.quantize import Layout, Precision, fake_quant
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model
    from .scores import ProbeSettings


class Perturb(Protocol):
    """Perturbs one tensor; the result keeps the tensor's shape and dtype."""

    def __call__(self, w: np.ndarray, layout: Layout, settings: ProbeSettings, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class Probe:
    """A registered probe.

    Attributes:
        perturb: the perturbation of one tensor.
        may_be_exact: the perturbation can be exactly zero (a rounding that represents the tensor): the sweep
            then measures that group with ``fallback`` instead, since the planner still needs its gain.
        fallback: the probe to use then.
    """

    perturb: Perturb
    may_be_exact: bool = False
    fallback: str = "gauss"


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def gauss(w: np.ndarray, layout: Layout, settings: ProbeSettings, rng: np.random.Generator) -> np.ndarray:
    # scaled per tensor: a bias and a kernel in one block each move by the same relative amount
    r = rms(w)
    s = settings.scale * (r if r > 0 else 1.0)  # an all-zero tensor still gets a probe
    return (w.astype(np.float64) + rng.standard_normal(w.shape) * s).astype(w.dtype)


def quant(w: np.ndarray, layout: Layout, settings: ProbeSettings, rng: np.random.Generator) -> np.ndarray:
    return fake_quant(w, Precision("int", settings.bits, "channel"), layout)


PROBES: Registry[Probe] = Registry("probe")
PROBES.register("gauss", Probe(gauss))
PROBES.register("quant", Probe(quant, may_be_exact=True))


def group_rng(seed: int, tensors: tuple[str, ...]) -> np.random.Generator:
    """A group's probe depends on (seed, its tensor names) only: the same numbers serially or in any worker."""
    return np.random.default_rng([seed, zlib.crc32("|".join(tensors).encode())])


def probe_delta(model: Model, tensors: tuple[str, ...], settings: ProbeSettings) -> dict[str, np.ndarray]:
    """Perturbed weights for one group (already cast to the stored dtype)."""
    rng = group_rng(settings.seed, tensors)
    perturb = PROBES.get(settings.probe).perturb
    return {t: np.ascontiguousarray(perturb(model.weight_array(t), model.layout(t), settings, rng)) for t in tensors}
