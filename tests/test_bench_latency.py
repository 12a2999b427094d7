"""The latency bench's own LiteRT caller (`scripts/bench_ort_kernels.py`): it runs on the device, without edgetqs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_ort_kernels as bok  # scripts/ is not a package: imported by path


def _lite(shapes: list[list[int]]) -> bok._Lite:
    lite = bok._Lite.__new__(bok._Lite)  # the pairing alone: no interpreter
    lite.ins = [{"name": f"serving_default_{i}", "shape": np.array(s)} for i, s in enumerate(shapes)]
    return lite


def test_feeds_pair_with_inputs_by_size_whatever_the_converters_order_and_layout() -> None:
    """blizzard's timing failed with "cannot reshape array of size 7128 into shape (1,1,33,36)": the converter put
    the one-channel static field first, and the feeds were zipped by position."""
    feeds = {"state": np.zeros((1, 6, 33, 36), np.float32), "static": np.ones((1, 1, 33, 36), np.float32)}
    assert _lite([[1, 33, 36, 1], [1, 33, 36, 6]]).pair(feeds) == ["static", "state"]  # as the converter ordered them
    with pytest.raises(ValueError, match=r"no feed of 10 values for the TFLite input serving_default_0 \[1, 10\]"):
        _lite([[1, 10]]).pair(feeds)


def test_the_median_over_processes_gets_a_bootstrap_interval() -> None:
    """Per-process ratios under qemu spread 0.48-0.66: the table gives the median's 95% interval beside it."""
    import bench_latency

    assert bench_latency.median_interval([0.6, 0.62]) == "-"
    lo, hi = (float(x) for x in bench_latency.median_interval([0.48, 0.60, 0.61, 0.62, 0.62, 0.63, 0.66]).split("-"))
    assert 0.48 <= lo <= 0.62 <= hi <= 0.66 and lo < hi


def test_artifact_labels_with_slashes_make_safe_file_names(tmp_path: Path) -> None:
    """`call_timing` copies each artifact under a name made from its label: "l2/l3 dynamic" made a path into a
    folder that does not exist (FileNotFoundError before any timing)."""
    import json

    import bench_latency
    import models

    onnx_path = models.state_mlp(tmp_path / "m.onnx")
    arts = {"fp32": onnx_path, "l1 centred, l2/l3 dynamic": onnx_path}
    assert bench_latency.call_timing("m", arts, [], 10, tmp_path / "w") == ""
    index = json.loads((tmp_path / "w" / "m" / "calls" / "index.json").read_text())
    assert [r["file"] for r in index] == ["00-fp32.onnx", "01-l1-centred-l2-l3-dynamic.onnx"]
    assert all((tmp_path / "w" / "m" / "calls" / r["file"]).is_file() for r in index)
