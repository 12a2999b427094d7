"""Round-to-nearest quantizers in numpy, from the weights alone.

One place for the numbers every stage needs: the `quant` TQS probe uses the residual, the planner
will use residuals and packed sizes, the converters realise the same rounding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Granularity = Literal["tensor", "channel", "block"]


def quantize_rtn(w: np.ndarray, bits: int, granularity: Granularity = "channel", block_size: int = 32) -> np.ndarray:
    """Symmetric round-to-nearest quantize-dequantize.

    Args:
        w: weights; axis 0 is the output channel (ONNX Gemm/Conv/MatMul-transposed layouts).
        bits: 2..8.
        granularity: one scale per tensor, per output channel (axis 0) or per block of
            ``block_size`` consecutive weights along the last axis within a channel.

    Returns:
        The dequantized weights, same shape and dtype as ``w``.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits={bits}; expected 2..16")
    x = np.asarray(w, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    if granularity == "tensor" or x.ndim < 2:
        amax = np.abs(x).max(keepdims=True) if x.size else np.zeros(1)
        view, back = x, None
    elif granularity == "channel":
        view, back = x.reshape(x.shape[0], -1), None
        amax = np.abs(view).max(axis=1, keepdims=True)
    else:
        flat = x.reshape(x.shape[0], -1)
        pad = (-flat.shape[1]) % block_size
        padded = np.pad(flat, ((0, 0), (0, pad)))
        view = padded.reshape(flat.shape[0], -1, block_size)
        amax = np.abs(view).max(axis=2, keepdims=True)
        back = (flat.shape, pad)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    q = np.clip(np.round(view / scale), -qmax - 1, qmax) * scale
    if back is not None:
        shape, pad = back
        q = q.reshape(shape[0], -1)[:, : shape[1]]
    return q.reshape(x.shape).astype(w.dtype)
