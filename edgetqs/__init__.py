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


__all__ = ["__version__", "score"]
