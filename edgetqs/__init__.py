"""edgetqs: trajectory-based quantization sensitivity (TQS) for autoregressive forecasters.

Importing the package stays light: heavy backends (onnxruntime, torch, tensorflow) load only in
the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from .tqs import Scores


def score(model: Any, contexts: Any = None, **kwargs: Any) -> "Scores":
    """Score a model's quantization sensitivity with TQS; see `edgetqs.score.score_model`."""
    from .tqs import score_model

    return score_model(model, contexts, **kwargs)


def plan(scores: Any, model: Any, target: Any, **options: Any):
    """Bits per tensor under the target's budget; see `edgetqs.api.plan`."""
    from .api import plan as run

    return run(scores, model, target, **options)


def convert(model: Any, plan: Any, fmt: str, out_dir: Any = "artifacts", **kwargs: Any):
    """Write and verify an artifact; see `edgetqs.api.convert`."""
    from .api import convert as run

    return run(model, plan, fmt, out_dir, **kwargs)


def check(artifact: Any, **kwargs: Any):
    """Check an artifact's rollout on a device; see `edgetqs.api.check`."""
    from .api import check as run

    return run(artifact, **kwargs)


def build(model: Any = None, target: Any = "raspberrypi", **kwargs: Any):
    """Score, plan, convert, check and report into one bundle; see `edgetqs.api.build`."""
    from .api import build as run

    return run(model, target, **kwargs)


__all__ = ["__version__", "score", "plan", "convert", "check", "build"]


class _Package(__import__("types").ModuleType):
    """Keeps ``edgetqs.plan``, ``convert``, ``check`` and ``build`` the API functions: importing the
    submodules of the same names (the pipeline's stages) would otherwise replace them on the package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, __import__("types").ModuleType):
            return  # the submodule stays reachable as sys.modules["edgetqs." + name]
        super().__setattr__(name, value)


_API = frozenset(__all__[1:])
__import__("sys").modules[__name__].__class__ = _Package
