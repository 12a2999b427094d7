"""Telling signal from noise: paired bootstrap intervals and the win / tie / loss / saturated verdicts."""

from __future__ import annotations

import numpy as np

from edgetqs.allocation.compare import bootstrap_samples, cell_error, difference, headline, interval, judge


def test_cell_error_is_the_rms_over_contexts_and_inf_when_one_diverged() -> None:
    assert cell_error(np.array([3.0, 4.0])) == np.sqrt(12.5)
    assert cell_error(np.array([1.0, np.inf])) == np.inf


def test_a_clear_difference_wins_and_noise_ties() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, 64)
    errors = {"tqs": base * 0.7, "other": base, "noisy": base * (1 + rng.normal(0, 0.05, 64))}
    v = judge("tqs", errors, ["other"])
    assert v.outcome == "win" and v.diff < 0 and v.diff_interval[1] < 0 and v.best_other == "other"
    lo, hi = v.interval
    assert lo < v.error < hi
    assert judge("noisy", errors, ["other"]).outcome == "tie"  # 5% jitter around the same errors: no signal
    assert judge("other", errors, ["tqs"]).outcome == "loss"


def test_identical_plans_tie_and_saturated_cells_are_apart() -> None:
    e = {"tqs": np.array([0.5, 0.6, 0.4]), "u": np.array([0.4, 0.5, 0.3])}
    assert judge("tqs", e, ["u"], plans={"tqs": "same", "u": "same"}).outcome == "tie"
    sat = {"tqs": np.array([1.5, 2.0]), "u": np.array([3.0, 1.2])}
    assert judge("tqs", sat, ["u"]).outcome == "saturated"
    good, n, share = headline([judge("tqs", e, ["u"], plans={"tqs": 1, "u": 1}), judge("tqs", sat, ["u"])])
    assert (good, n, share) == (1, 1, 1.0)


def test_the_bootstrap_is_paired_and_seeded() -> None:
    s1, s2 = bootstrap_samples(10, 100, seed=3), bootstrap_samples(10, 100, seed=3)
    assert (s1 == s2).all() and s1.shape == (100, 10)
    a = np.linspace(0.1, 1.0, 10)
    d, lo, hi = difference(a, a + 0.01, s1)  # a constant offset: every resample sees it
    assert d < 0 and hi < 0
    assert interval(a, s1)[0] <= cell_error(a) <= interval(a, s1)[1]
