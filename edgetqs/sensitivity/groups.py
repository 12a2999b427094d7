"""Weight groups: the units TQS perturbs, one tensor each or a block of tensors sharing a module path.

A tensor's module path is its name when that is one (``block.q.bias``), else the module scope the exporter
recorded for it (``val_17`` read by a MatMul in ``block.q`` -> ``block.q.weight``; `edgetqs.core.weights`),
so block granularity gathers a module's folded weights with its named ones."""

from __future__ import annotations

import re

from ..core.model import Model

GRANULARITIES = ("tensor", "block")


def _split(name: str) -> list[str]:
    return [p for p in re.split(r"[./:]", name) if p]


def block_of(name: str, depth: int | None) -> str:
    """The block a tensor belongs to: its first ``depth`` name components (None: all but the last)."""
    parts = _split(name)
    if len(parts) <= 1:
        return name
    keep = len(parts) - 1 if depth is None else min(depth, len(parts) - 1)
    return ".".join(parts[:keep])


def make_groups(model: Model, granularity: str, depth: int | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(group name, tensor names) in graph order."""
    if granularity == "tensor":
        return [(w.name, (w.name,)) for w in model.weights]
    groups: dict[str, list[str]] = {}
    for w in model.weights:
        groups.setdefault(block_of(w.path or w.name, depth), []).append(w.name)
    return [(k, tuple(v)) for k, v in groups.items()]


def group_label(model: Model, name: str, tensors: tuple[str, ...]) -> str:
    """A group's readable name when it differs from its name (a tensor named by the exporter); else ''."""
    if len(tensors) != 1 or tensors[0] != name:
        return ""
    label = model.label(name)
    return "" if label == name else label
