"""onnxruntime sessions built on a `Model`'s own weight arrays: no serialized copy of the model, no second copy
of its weights.

The graph handed to onnxruntime is the model's skeleton (nodes, shapes, small constants) with every weight
marked as external data; the weights themselves come from the model's numpy arrays:

- ``feed`` sessions (weights declared as graph inputs, so a run may override any of them) *share* the arrays
  (``SessionOptions.add_initializer``: onnxruntime uses the buffers as they are, for the session's life). A
  weight fed per run replaces its array for that run only. This is what a TQS sweep runs on: a session
  costs the graph's working set, not the weights again; a worker mapping the weights from shared memory
  holds them once per machine.
- ``constant`` sessions (weights as constants, fully optimised: folded, pre-packed, NCHWc convolutions)
  receive the arrays through ``add_external_initializers``, which copies them into the graph, because graph
  optimisers read constant weights. ``replace`` bakes other values in for some weights (a rebuilt group).

The external-data reference of each weight points at ``/dev/null``: it is replaced before anything reads it,
and onnxruntime only checks that the file exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

_PLACEHOLDER_DIR, _PLACEHOLDER = "/dev", "null"


def graph_bytes(model: Model, *, feed: bool) -> bytes:
    """The model's skeleton with each weight as an external-data placeholder (``feed``: also a graph input)."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.skeleton)
    names = {w.name for w in model.weights}
    for init in proto.graph.initializer:
        if init.name in names:
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            e = init.external_data.add()
            e.key, e.value = "location", _PLACEHOLDER
    if feed:
        existing = {i.name for i in proto.graph.input}
        for init in proto.graph.initializer:
            if init.name in names and init.name not in existing:
                proto.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    if proto.ir_version < 4:
        proto.ir_version = 4
    return bytes(proto.SerializeToString())


class SharedSession:
    """An onnxruntime session over a model's weight arrays; ``run(output_names, feeds)`` like onnxruntime's.

    Args:
        model: the model whose `weight_array` values the session uses.
        feed: weights are graph inputs that a run may override (shared, not copied); else constants.
        threads: intra-op threads (0: onnxruntime's default, all cores).
        replace: weight name -> value to use instead of the model's (``feed=False`` only).
    """

    def __init__(self, model: Model, *, feed: bool = True, threads: int = 0, replace: Mapping[str, np.ndarray] | None = None) -> None:
        import onnxruntime as ort

        if feed and replace:
            raise ValueError("a feed session takes replacement weights per run (feeds), not at build time")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # feed sessions: "initializer appears in graph inputs" is the point here
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", _PLACEHOLDER_DIR)
        names, values = [], []
        for w in model.weights:
            arr = replace[w.name] if replace and w.name in replace else model.weight_array(w.name)
            names.append(w.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        if feed:
            for n, v in zip(names, values):
                opts.add_initializer(n, v)
        else:
            opts.add_external_initializers(names, values)
        # the OrtValues wrap the arrays without a copy: they must live as long as the session
        self._values: list[Any] = values
        self.session = ort.InferenceSession(graph_bytes(model, feed=feed), opts, providers=["CPUExecutionProvider"])
        self.runtime = {"name": "onnxruntime", "version": ort.__version__}

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(outputs, feeds))
