"""The benchmark's baselines behind the plan interface, and the Hutchinson trace estimator."""

from __future__ import annotations

import models
import numpy as np
import pytest

from edgetqs.allocation.methods import METHODS, hutchinson_traces, method_plan, weight_error_gains
from edgetqs.allocation.plan import InfeasibleBudgetError, PlanOptions
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.errors import BadInputError
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

PI = find_target("raspberrypi")
EXTRA: dict = {}  # what the measured methods need besides the scores (filled by the fixture)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("b")
    m = load_model(models.deep_mlp(d / "deep.onnx"))
    spec = infer_spec(m)
    np.save(d / "r.npy", np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32))
    ctx = select_contexts(read_record(d / "r.npy", spec), m, spec, 4)
    EXTRA.update(spec=spec, contexts=ctx, ladder=run_sweep(m, spec, ctx, ProbeSettings(horizon=6, ladder=(2, 4, 8))))
    return m, run_sweep(m, spec, ctx, ProbeSettings(horizon=6))


def test_every_method_fits_the_budget(scored) -> None:
    from edgetqs.allocation.rescore import RescoreSettings

    m, s = scored
    traces = {g.name: float(i + 1) for i, g in enumerate(s.groups)}
    for method in METHODS.names():
        p = method_plan(
            method, s, m, PI, PlanOptions(ratio=0.3), traces=traces, bits=4, rescore=RescoreSettings(rollout_budget=20), **EXTRA
        )
        assert p.weight_bytes <= p.budget_bytes, method


def test_uniform_bits_is_the_papers_rtn_baseline_at_its_own_size(scored) -> None:
    m, s = scored
    for b in (3, 5, 8):
        p = method_plan("uniform-bits", s, m, PI, PlanOptions(), bits=b)
        by = {t.name: t.precision.name for t in p.tensors}
        assert all(v == f"int{b}-channel" for k, v in by.items() if k.endswith("weight"))  # every weight matrix
        assert all(v == "fp32" for k, v in by.items() if k.endswith("bias"))  # biases and normalisers stay float
        assert p.weight_bytes < p.budget_bytes  # sized by itself, not by a budget


def test_uniform_is_int8_if_it_fits_else_int4(scored) -> None:
    m, s = scored
    wide = method_plan("uniform", s, m, PI, PlanOptions(ratio=0.5))
    assert {t.precision.name for t in wide.tensors} <= {"int8-channel", "int8-tensor"}
    narrow = method_plan("uniform", s, m, PI, PlanOptions(ratio=0.2))
    assert {t.precision.name for t in narrow.tensors} <= {"int4-channel", "int4-tensor"}
    with pytest.raises(InfeasibleBudgetError):
        method_plan("uniform", s, m, PI, PlanOptions(ratio=0.05))


def test_weight_error_ignores_the_model_run(scored) -> None:
    m, s = scored
    shuffled = s.model_copy(
        update={"groups": tuple(g.model_copy(update={"gain": float(i) ** 3, "gamma": -float(i)}) for i, g in enumerate(s.groups))}
    )
    a = method_plan("weight-error", s, m, PI, PlanOptions(ratio=0.3))
    b = method_plan("weight-error", shuffled, m, PI, PlanOptions(ratio=0.3))
    assert a.precisions() == b.precisions()
    g = weight_error_gains(s, m)
    w = m.weight_array("fc0.weight")
    assert g["fc0.weight"] == pytest.approx(1 / np.sqrt(np.mean(w.astype(np.float64) ** 2)))


def test_random_is_seeded(scored) -> None:
    m, s = scored
    a = method_plan("random", s, m, PI, PlanOptions(ratio=0.3), seed=1)
    b = method_plan("random", s, m, PI, PlanOptions(ratio=0.3), seed=1)
    assert a.precisions() == b.precisions()
    with pytest.raises(BadInputError, match="needs traces"):
        method_plan("hessian", s, m, PI, PlanOptions(ratio=0.3))


def test_hutchinson_is_exact_on_a_diagonal_hessian() -> None:
    torch = pytest.importorskip("torch")
    mod = torch.nn.Module()
    mod.a = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    mod.b = torch.nn.Parameter(torch.tensor([[0.5, -1.0]]))
    ca, cb = torch.tensor([2.0, 4.0, 6.0]), torch.tensor([[10.0, 1.0]])

    def loss():
        return 0.5 * (ca * mod.a**2).sum() + 0.5 * (cb * mod.b**2).sum() + (mod.a[0] * 0).sum()

    traces, secs, n = hutchinson_traces(mod, loss, {"A": ["a"], "B": ["b"]}, samples=4)
    # Rademacher probes v_i^2 = 1, so a diagonal Hessian's trace comes out exactly
    assert traces["A"] == pytest.approx(12.0) and traces["B"] == pytest.approx(11.0) and n == 4
