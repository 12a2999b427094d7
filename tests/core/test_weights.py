"""Constants vs weights, the user's --include/--exclude rules, readable names (`edgetqs.core.weights`)."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest
from onnx import helper

from edgetqs.core.model import load_model
from edgetqs.core.weights import readable, scope_of, uses_of
from edgetqs.errors import BadInputError, BadModelError
from edgetqs.sensitivity.groups import make_groups


@pytest.fixture
def masked(tmp_path: Path) -> Path:
    return models.masked_window(tmp_path / "mw.onnx")


def test_masks_ranges_zeros_and_shape_constants_are_not_weights(masked: Path) -> None:
    m = load_model(masked)
    assert [w.name for w in m.weights] == ["val_12", "dec.weight"]
    reasons = {c.name: c.reason for c in m.constants}
    assert set(reasons) == {"mask", "range_3", "zeros_like_3", "shape_f"}
    assert "infinite" in reasons["mask"] and "mask" in reasons["mask"]
    assert "range" in reasons["range_3"]
    assert reasons["zeros_like_3"] == "all zeros"
    assert "shape" in reasons["shape_f"]
    # the constants are not perturbable: the overridable graph only takes the weights as inputs
    assert m.constant_array("mask")[0, 1] == -np.inf


def test_readable_names_from_the_exporter_scope(masked: Path) -> None:
    m = load_model(masked)
    w = {x.name: x for x in m.weights}
    assert w["val_12"].label == "enc.proj (MatMul node_MatMul_5) weight" and w["val_12"].path == "enc.proj.weight"
    assert w["dec.weight"].label == "dec.weight"  # a module path already: kept
    assert m.label("val_12").startswith("enc.proj") and m.label("dec.weight") == "dec.weight"
    # block granularity groups the folded weight under its module, not under 'val_12'
    assert [g for g, _ in make_groups(m, "block")] == ["enc.proj", "dec"]


def test_scope_of_reads_name_scopes_namespace_and_legacy_names() -> None:
    n = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_MatMul_20")
    helper.set_metadata_props(n, {"pkg.torch.onnx.name_scopes": "['', 'block', 'block.q', 'linear_2']"})
    assert scope_of(n) == "block.q"
    n = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_MatMul_21")
    helper.set_metadata_props(n, {"namespace": ": Root/block: Block/block.k: Linear/linear_3: aten.linear"})
    assert scope_of(n) == "block.k"
    assert scope_of(helper.make_node("MatMul", ["a", "b"], ["c"], name="/block/v/MatMul")) == "block.v"
    assert scope_of(helper.make_node("MatMul", ["a", "b"], ["c"], name="MatMul_4")) == ""
    # no scope: the consumer op and node name; the raw name stays the path
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["y"], name="MatMul_4")], "g", [], [])
    assert readable("onnx::MatMul_7", uses_of(graph, ["onnx::MatMul_7"])["onnx::MatMul_7"]) == ("MatMul MatMul_4 weight", "onnx::MatMul_7")


@pytest.mark.parametrize("bad, words", [("nan", r"weight 'dec\.weight' .*1 NaN"), ("inf", r"weight 'val_12' \(enc\.proj .*infinite")])
def test_a_non_finite_weight_is_an_error_naming_it(tmp_path: Path, bad: str, words: str) -> None:
    p = models.masked_window(tmp_path / "bad.onnx", bad=bad)
    with pytest.raises(BadModelError, match=words) as e:
        load_model(p)
    assert "--exclude" in str(e.value)
    name = "dec.weight" if bad == "nan" else "val_12"
    m = load_model(p, exclude=(name,))  # the way out the message gives
    assert name not in [w.name for w in m.weights]
    assert next(c for c in m.constants if c.name == name).reason == f"excluded by --exclude {name}"


def test_include_and_exclude_rules(masked: Path) -> None:
    m = load_model(masked, include=("re:^range_",), exclude=("enc.proj.weight",))  # a regex on the raw name, a readable path
    assert [w.name for w in m.weights] == ["dec.weight", "range_3"]
    assert {c.name for c in m.constants} == {"mask", "zeros_like_3", "shape_f", "val_12"}
    assert load_model(masked, exclude=("re:^dec",)).weights[0].name == "val_12"
    with pytest.raises(BadInputError, match="infinite values"):
        load_model(masked, include=("mask",))
    with pytest.raises(BadInputError, match=r"match no float initializer.*val_12"):
        load_model(masked, exclude=("nothing.like.this",))
    with pytest.raises(BadInputError, match="bad regex"):
        load_model(masked, include=("re:([",))
    with pytest.raises(BadInputError, match="empty"):
        load_model(masked, exclude=("re:",))


def test_a_model_of_constants_only_says_how_to_include(tmp_path: Path) -> None:
    p = models.masked_window(tmp_path / "mw.onnx")
    with pytest.raises(BadModelError, match="every float initializer .* is a constant.*--include"):
        load_model(p, exclude=("val_12", "dec.weight"))


def test_project_file_rules_apply_and_the_call_beats_them(tmp_path: Path) -> None:
    from edgetqs import api

    p = models.masked_window(tmp_path / "mw.onnx")
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((40, 1)).astype(np.float32))
    (tmp_path / "edgetqs.toml").write_text(
        f'model = "{p}"\ncontexts = "{tmp_path / "r.npy"}"\n[score]\ninclude = ["re:^range_"]\nexclude = ["dec.weight"]\n'
    )
    inp = api.inputs(project=tmp_path / "edgetqs.toml", k=2)
    assert [w.name for w in inp.model.weights] == ["val_12", "range_3"]
    inp = api.inputs(project=tmp_path / "edgetqs.toml", k=2, include=(), exclude=())
    assert [w.name for w in inp.model.weights] == ["val_12", "dec.weight"]
