from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnxruntime as ort
import pytest

from edgetqs.core.model import load_model
from edgetqs.errors import BadInputError, BadModelError


def test_discovers_float_weights_and_skips_scalars(state_model: Path) -> None:
    m = load_model(state_model)
    assert [w.name for w in m.weights] == ["l1.weight", "l1.bias", "l2.weight", "l2.bias"]  # 'k' is a rank-0 constant
    assert m.n_params == 16 * 8 + 16 + 8 * 16 + 8
    assert [i.name for i in m.inputs] == ["x"] and m.inputs[0].shape == (None, 8)


def test_overridable_model_gives_the_same_output_and_accepts_overrides(state_model: Path) -> None:
    m = load_model(state_model)
    s0 = ort.InferenceSession(m.bytes)
    s1 = ort.InferenceSession(m.overridable_bytes())
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert np.array_equal(s0.run(None, {"x": x})[0], s1.run(None, {"x": x})[0])
    zero = {"l2.weight": np.zeros((8, 16), np.float32), "l2.bias": np.zeros(8, np.float32)}
    # with the second layer zeroed the residual adds 0.3*tanh(0) = 0: the output is the input
    assert np.allclose(s1.run(None, {"x": x, **zero})[0], x)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda p: p / "missing.onnx", BadInputError, "does not exist"),
        (lambda p: (p / "junk.onnx").write_bytes(b"\x00garbage\xff" * 10) and p / "junk.onnx", BadModelError, "not a readable ONNX"),
        (lambda p: models.no_weights(p / "nw.onnx"), BadModelError, "no float weight"),
        (lambda p: p, BadInputError, "is a folder, not a regular file"),
    ],
)
def test_bad_model_files_raise_clear_errors(tmp_path: Path, make, error, words) -> None:
    with pytest.raises(error, match=words):
        load_model(make(tmp_path))


def test_text_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n")
    with pytest.raises(BadModelError):
        load_model(p)


def _external_copy(src: Path, dst: Path) -> Path:
    """``src`` saved with every initializer in one external data file beside it."""
    import onnx

    proto = onnx.load(str(src))
    onnx.save(proto, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=dst.name + ".data", size_threshold=0)
    return dst


def test_model_keeps_one_copy_of_its_weights_and_builds_the_whole_model_on_demand(tmp_path: Path) -> None:
    import hashlib

    import onnx

    p = models.deep_mlp(tmp_path / "d.onnx")
    m = load_model(p)
    assert "proto" not in vars(m) and "bytes" not in vars(m)  # neither the message nor its serialization is kept
    assert all(not i.raw_data for i in m.skeleton.graph.initializer if i.name in {w.name for w in m.weights})
    again = onnx.load(str(p))
    # the file's sha256 (what sha256sum prints), read in pieces; for a file onnx wrote, also that of its serialization
    assert m.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(again.SerializeToString()).hexdigest()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    want = ort.InferenceSession(again.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(ort.InferenceSession(m.bytes).run(None, {"x": x})[0], want)
    assert m.fixed_bytes == 4  # the scalar 'k'


def test_shared_sessions_use_the_model_arrays_without_copying_them(state_model: Path) -> None:
    from edgetqs.core.model import Model
    from edgetqs.core.session import SharedSession

    loaded = load_model(state_model)
    # a model around arrays it is handed (as a sweep worker maps them from shared memory): here writable copies
    arrays = {w.name: loaded.weight_array(w.name).copy() for w in loaded.weights}
    m = Model(loaded.skeleton, state_model, arrays=arrays, sha256=loaded.sha256)
    assert m.weight_array("l2.weight") is arrays["l2.weight"]
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    feed, const = SharedSession(m, feed=True), SharedSession(m, feed=False)
    want = ort.InferenceSession(loaded.bytes).run(None, {"x": x})[0]
    assert np.array_equal(feed.run(["y"], {"x": x})[0], want) and np.array_equal(const.run(["y"], {"x": x})[0], want)
    w = m.weight_array("l2.weight")
    saved = w.copy()
    w[...] = 0  # the feed session reads this very buffer: zeroing it removes the second layer's contribution
    try:
        assert np.allclose(feed.run(["y"], {"x": x})[0], x + 0.3 * np.tanh(m.weight_array("l2.bias")))
        assert np.array_equal(const.run(["y"], {"x": x})[0], want)  # a constant session holds its own (optimised) copy
    finally:
        w[...] = saved
    zero = {"l2.weight": np.zeros((8, 16), np.float32)}
    assert np.array_equal(feed.run(["y"], {"x": x, **zero})[0], SharedSession(m, feed=False, replace=zero).run(["y"], {"x": x})[0])


def test_external_data_model_reads_its_weights_from_the_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import edgetqs.core.model as model_mod

    inline = models.deep_mlp(tmp_path / "d.onnx")
    ext = _external_copy(inline, tmp_path / "e.onnx")
    a, b = load_model(inline), load_model(ext)
    assert ext.stat().st_size < 2000 and [w.name for w in a.weights] == [w.name for w in b.weights]
    assert all(np.array_equal(a.weight_array(w.name), b.weight_array(w.name)) for w in a.weights)
    # the hash of its files: the .onnx file, then its data file (never one message: it may be above 2 GiB)
    assert b.sha256 == hashlib.sha256(ext.read_bytes() + (tmp_path / "e.onnx.data").read_bytes()).hexdigest()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert np.array_equal(ort.InferenceSession(b.bytes).run(None, {"x": x})[0], ort.InferenceSession(a.bytes).run(None, {"x": x})[0])
    monkeypatch.setattr(model_mod, "PROTOBUF_LIMIT", 1000)  # as if it were above 2 GiB: no single message to give
    c = load_model(ext)
    with pytest.raises(BadModelError, match="larger than 2 GiB"):
        _ = c.bytes
    (tmp_path / "e.onnx.data").write_bytes(b"\0" * 16)
    with pytest.raises(BadModelError, match="truncated"):
        load_model(ext)
