"""The score cache: a sweep depends only on (model, contexts, probe settings, rollout), so it is kept under
that key and reused by `score` and `build` for every target and budget.

An entry is reused only when it parses against the scores schema, its model and contexts hashes, settings
and rollout equal the key's, its groups are exactly the model's weight groups, and its numbers are finite
and in range; anything else is recomputed with a one-line notice. Entries are written atomically under
unique temporary names, so concurrent builds never trip over each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..core.contexts import Contexts
from ..core.model import Model
from ..core.rollout import RolloutSpec
from ..errors import EdgetqsError
from .groups import group_label, make_groups
from .scores import MAX_HORIZON_CAP, ProbeSettings, Scores
from .sweep import Progress, run_sweep


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETQS_CACHE_DIR", Path.home() / ".cache" / "edgetqs")).expanduser() / "scores"


def score_key(model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings) -> str:
    blob = json.dumps(
        {
            "model": model.sha256,
            "contexts": contexts.sha256(),
            "settings": settings.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings) -> Path:
    return cache_dir() / f"{score_key(model, spec, contexts, settings)[:32]}.json"


def checkpoint_path(entry: Path) -> Path:
    """Where the sweep of a cache entry keeps its finished tasks until it completes (same key; see
    `edgetqs.sensitivity.checkpoint`): a killed sweep resumes from there."""
    return entry.with_suffix(".partial")


def verify(scores: Scores, model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings) -> str | None:
    """Why a cached entry cannot be reused for this key (None: it can)."""
    if scores.model_sha256 != model.sha256:
        return "it was scored for another model"
    if scores.contexts_sha256 != contexts.sha256():
        return "it was scored on other contexts"
    if scores.settings != settings:
        return "its probe settings differ"
    if scores.rollout != spec:
        return "its rollout differs"
    why = verify_groups(scores, model)
    if why is not None:
        return why
    if [g.label for g in scores.groups] != [group_label(model, g.name, tuple(g.tensors)) for g in scores.groups]:
        return "its groups lack this edgetqs's readable names"
    if settings.horizon is not None and scores.horizon != settings.horizon:
        return "its horizon differs"
    return None


def verify_groups(scores: Scores, model: Model) -> str | None:
    """Why ``scores`` cannot be the scores of ``model``'s weight groups (None: they can): the groups must be
    exactly the model's at the scores' granularity, with the right parameter counts, and every number
    finite and in range. `plan` checks a scores.json with this; the cache checks every entry it reuses."""
    if scores.model_sha256 != model.sha256:
        return "it was scored for another model"
    if not 1 <= scores.horizon <= MAX_HORIZON_CAP:
        return f"its horizon {scores.horizon} is out of range"
    want = make_groups(model, scores.settings.granularity, scores.settings.block_depth)
    got = [(g.name, tuple(g.tensors)) for g in scores.groups]
    if got != want:
        return "its groups are not this model's weight groups"
    if [e.name for e in scores.excluded] != [c.name for c in model.constants]:
        return "its constants (initializers that are not weights) differ"
    sizes = {w.name: w.size for w in model.weights}
    for g in scores.groups:
        if g.n_params != sum(sizes[t] for t in g.tensors):
            return f"group '{g.name}' has the wrong parameter count"
        numbers = [g.eps, *(x for x in (g.gamma, g.gain) if x is not None), *(x for x in g.gamma_curve if x is not None)]
        numbers += [v for v in (g.gain_by_bits or {}).values() if v is not None]
        if not all(math.isfinite(v) for v in numbers) or g.eps < 0 or (g.gain is not None and g.gain < 0):
            return f"group '{g.name}' has numbers out of range"
        if g.diverged_step is not None and not 1 <= g.diverged_step <= scores.horizon:
            return f"group '{g.name}' has a divergence step out of range"
        if len(g.gamma_curve) != scores.horizon:
            return f"group '{g.name}' has a gamma curve of the wrong length"
        if g.gamma is not None and (
            not g.gamma_curve or g.gamma_curve[-1] is None or abs(g.gamma_curve[-1] - g.gamma) > 1e-9 * (1 + abs(g.gamma))
        ):
            return f"group '{g.name}' has a gamma that is not the end of its curve"
        if g.gain is not None and g.gain > 0 and g.gamma is not None:
            # gamma = mean ln(e_T/eps)/T and gain = mean e_T/eps come from the same rollouts: ln(gain)/T >= gamma
            # (Jensen), and the gap is the spread of e_T over contexts; a gain scaled by hand leaves that band.
            # With a relative separation gamma's eps is eps / rms(W): gamma is ln(rms W)/T above the absolute one
            gamma = g.gamma
            if scores.settings.eps == "relative" and g.weight_rms > 0:
                gamma -= math.log(g.weight_rms) / scores.horizon
            gap = math.log(g.gain) / scores.horizon - gamma
            if gap < -1e-9 * (1 + abs(g.gamma)) or gap > math.log(1e3) / scores.horizon:
                return f"group '{g.name}' has a gain that does not fit its gamma"
    return None


def reuse_line(path: Path, scores: Scores) -> str:
    """What `score`, `build` and `plan` print when they reuse a cache entry."""
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    except OSError:
        when = "earlier"
    return (
        f"reusing scores from {path} ({len(scores.groups)} groups, T={scores.horizon}, scored {when}; "
        "same model, contexts and probe settings: --force scores again)"
    )


def score_cached(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    *,
    force: bool = False,
    progress: Progress | None = None,
    notes: tuple[str, ...] = (),
    workers: int | None = None,
    strategy: str = "auto",
    log: Callable[[str], None] | None = None,
    backend: str | None = None,
    address: str | None = None,
    before_sweep: Callable[[], None] | None = None,
) -> tuple[Scores, bool, Path]:
    """(Scores, whether they came from the cache, cache file). ``force`` recomputes and overwrites.

    A sweep that is computed checkpoints its finished tasks beside the entry (`checkpoint_path`), so running
    the same command again after a kill resumes it; ``force`` starts over. ``before_sweep`` is called when a
    sweep is about to run (not on a cache hit): `edgetqs.bundle.build` prints its time projection there."""
    path = cache_path(model, spec, contexts, settings)
    if path.exists() and not force:
        try:
            cached = Scores.load(path)
            why = verify(cached, model, spec, contexts, settings)
        except EdgetqsError as exc:
            why = str(exc)
        if why is None:
            return cached, True, path
        if log:
            log(f"note: the cached scores {path.name} were not reused ({why[:200]}); scoring again")
    ckpt = checkpoint_path(path)
    if force:
        ckpt.unlink(missing_ok=True)
        for part in ckpt.parent.glob(ckpt.name + ".*"):  # a ladder's sub-sweeps
            part.unlink(missing_ok=True)
    if before_sweep is not None:
        before_sweep()
    scores = run_sweep(
        model,
        spec,
        contexts,
        settings,
        workers=workers,
        progress=progress,
        notes=tuple(notes),
        strategy=strategy,
        backend=backend,
        address=address,
        checkpoint=ckpt,
        log=log,
    )
    try:
        scores.save(path, policy="replace")
    except (OSError, EdgetqsError) as exc:  # a read-only or full cache folder costs the reuse, not the result
        if log:
            log(f"could not write the score cache {path} ({exc})")
    return scores, False, path
