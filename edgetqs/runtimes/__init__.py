"""Runtimes: one module per runtime (ort, ort_mobile, tflite, tflm) behind one protocol (`base.Runtime`),
registered by name in `RUNTIMES`; `convert.convert` writes and verifies an artifact for any of them."""

from .base import RUNTIMES, ConvertError, Runtime, runtime

__all__ = ["RUNTIMES", "ConvertError", "Runtime", "runtime"]
