"""edgetqs: trajectory-based quantization sensitivity (TQS) for autoregressive forecasters.

The pipeline, one package per stage: `core` (the model as a dynamical system) -> `sensitivity` (score)
-> `allocation` (plan) -> `runtimes` (convert) -> `validation` (check) -> `bundle` (build and report);
`ondevice` holds what runs on the device. The functions below are the Python API (`edgetqs.api`).

Importing the package stays light: heavy backends (onnxruntime, torch, tensorflow) load only in the
functions that need them.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .api import build, check, convert, devices, inputs, plan, score, targets

__all__ = ["__version__", "build", "check", "convert", "devices", "inputs", "plan", "score", "targets"]
