"""The runtime plug-in interface and its registry.

A runtime (``ort``, ``ort-mobile``, ``tflite``, ``tflm``) says, in one place, everything the pipeline
needs to know about it: the artifact's file suffix, which plans it can realise, how it stores scales
(the planner's byte prices), what a device must have installed, which on-device runner executes it,
how to convert a plan, how to open a host session and how to parse an artifact. Adding a runtime is
one module plus one `RUNTIMES.register` line in `edgetqs.runtimes._load`; nothing else switches on
runtime names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.quantize import ONNX_STORAGE, Storage
from ..errors import EdgetqsError, Hint
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..allocation.plan import Plan
    from ..allocation.targets import Target
    from ..core.contexts import Contexts
    from ..core.model import Model
    from ..core.rollout import RolloutSpec
    from .convert import TensorCheck


class ConvertError(EdgetqsError):
    """A converter cannot realise the plan (missing tensor, unsupported op or precision, over budget)."""


@dataclass
class ConvertJob:
    """What a converter gets: the float model, the plan, where to write, and the rollout for calibration."""

    model: Model
    plan: Plan
    work: Path  # a private temporary folder; the artifact goes in here
    file_name: str
    contexts: Contexts
    spec: RolloutSpec
    horizon: int
    target: Target | None
    activations: str = "auto"
    activation_goal: float | None = None  # ort int8: what the per-op choice aims at (None: its default)
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)
    _prepared: dict[str, Any] = field(default_factory=dict, repr=False)

    def activation_mode(self, runtime: str) -> str:
        """The activations the artifact runs: the ones asked for, else the plan's, else the target's first for
        ``runtime`` (float where it lists none); refused with the ones offered when the target does not list them."""
        offered = list(self.target.activations.get(runtime, ())) if self.target is not None else []
        offered = offered or ["float"]
        plan = getattr(self.plan, "activations", None)
        asked = self.activations if self.activations not in ("auto", None) else (plan or offered[0])
        if asked not in offered:
            raise ConvertError(
                f"activations {asked}: target '{self.plan.target}' offers {', '.join(offered)} for {runtime} "
                f"([activations] {runtime} in its file); use --activations {offered[0]}"
            )
        return asked

    def check_settings(self) -> tuple[int, float]:
        """(steps, tolerance) of the check the artifact will face: the target's ``[validation]``; without a target,
        the conversion's horizon and 0.1."""
        if self.target is None:
            return self.horizon, 0.1
        return self.target.validation_horizon, self.target.validation_tolerance

    def check_contexts(self, horizon: int) -> Contexts | None:
        """The contexts a check of ``horizon`` steps draws from the record (None: the conversion's own)."""
        from ..validation.reference import check_contexts

        ctx = check_contexts(self.model, self.spec, self.contexts, horizon)
        return None if ctx is self.contexts else ctx

    def rows(self) -> list[dict[str, Any]]:
        """Every batch-1 input the float model sees in its closed-loop rollouts of the contexts (the
        calibration set of full-integer routes, and the inputs legalisation deviations are measured on)."""
        if self._rows is None:
            from ..core.rollout import closed_loop_inputs

            self._rows = closed_loop_inputs(self.model, self.spec, self.contexts, self.horizon)
        return self._rows

    def prepared(self, route: str) -> Any:
        """The model canonicalised and legalised for ``route`` (`edgetqs.runtimes.prepare.Prepared`), once."""
        if route not in self._prepared:
            from .prepare import prepare

            self._prepared[route] = prepare(self.model, route, feeds=self.rows())
        return self._prepared[route]

    def plan_integers(self) -> dict[str, Any] | None:
        """Tensor name -> the integers and scales the plan's rounding chose (`QuantizedTensor`), for
        roundings other than round-to-nearest; None: converters round to nearest themselves."""
        from ..allocation.rounding import plan_integers

        cal = self.plan.calibration
        if cal is not None and cal.get("contexts_sha256") != self.contexts.sha256():
            args = ["--contexts", str(cal.get("source")), "-k", str(cal.get("k"))]
            span = cal.get("span") or [0.0, 1.0]
            if list(span) != [0.0, 1.0]:
                args += ["--span", f"{span[0]:g}:{span[1]:g}"]
            if cal.get("pick", "even") != "even":
                args += ["--pick", str(cal["pick"])]
            raise ConvertError(
                f"the plan's {self.plan.rounding} integers were computed on other contexts ({cal.get('source')}, k={cal.get('k')})",
                hint=Hint("convert-contexts", tuple(args), say="convert with the contexts the plan was made with: {args}"),
            )
        return plan_integers(self.model, self.plan, self.contexts, self.spec, self.plan.horizon)


@dataclass
class Converted:
    """What a converter returns: the artifact, its read-back, and what the host rollout needs."""

    artifact: Path
    checks: list[TensorCheck]
    weight_bytes: int  # every stored constant, read back from the file
    session: Any  # an object with ``run(output_names, feeds)`` for the host rollout
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # runtime-specific: activations, arena bytes...
    versions: dict[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    """One runtime. Attributes are plain data; methods do the work (and import heavy packages lazily)."""

    name: str
    description: str
    suffix: str  # artifact file name = <model><suffix>
    accepts: tuple[str, ...]  # plan runtimes this format can realise
    storage: Storage  # what scales and wide integers cost in its files
    extra: str | None  # the edgetqs extra its host conversion needs
    device_packages: str  # pip names a device needs to run it
    runner: str  # the on-device runner (`edgetqs.ondevice.runners.RUNNERS`)
    emulated: bool  # whether the emulated ARM Python can run it
    full_integer: bool  # activations are integers too (calibrated)
    integer_activations: bool  # a float runtime that also takes integer activations (ort: QDQ; tflite: dynamic range)
    activations: tuple[str, ...]  # the activation modes it can write (a target's [activations] lists some of them)
    also_reads: tuple[str, ...]

    def convert(self, job: ConvertJob) -> Converted: ...

    def open(self, artifact: Path, model: Model, facts: dict[str, Any]) -> Any:
        """A host session for ``artifact`` (``run(output_names, feeds)``)."""
        ...

    def validate(self, artifact: Path) -> None:
        """Parse the artifact on the host; raise on a corrupted file."""
        ...

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        """Runtime-specific fields of the on-device job (runner, arena, I/O order...)."""
        ...

    def pricing(self, model: Model, activations: str, exact: bool = False, auto: bool = False) -> Any:
        """What the artifact will store per weight and precision (`edgetqs.runtimes.pricing.Pricing`).

        ``exact``: price from the graph the converter writes; ``auto``: the activation width was not asked
        for, so the runtime may narrow it where a kernel refuses the wider one (saying so in the notes)."""

    def constant_states(self, artifact: Path, constants: dict[str, Any]) -> dict[str, str]:
        """How the artifact stores each of the model's constants (name -> value): ``exact``, ``changed``,
        ``missing``, ``folded`` (not found as such: folded into another constant by a converter, still
        float) or ``integer`` (a full-integer graph, where every constant is quantized)."""
        ...


@dataclass(frozen=True)
class RuntimeInfo:
    """Shared plain-data part of a runtime (subclass and add the methods)."""

    name: str
    description: str
    suffix: str
    accepts: tuple[str, ...]
    storage: Storage = ONNX_STORAGE
    extra: str | None = None
    device_packages: str = "onnxruntime"
    runner: str = "onnxruntime"
    emulated: bool = True
    full_integer: bool = False
    integer_activations: bool = False  # a float runtime that also takes integer activations (ort: QDQ; tflite: dynamic range)
    activations: tuple[str, ...] = ("float",)  # float | int8 (static) | int16 | dynamic (quantized per call)
    also_reads: tuple[str, ...] = ()  # other suffixes recognised as this format (``.onnx`` for ``ort``)

    def pricing(self, model: Model, activations: str, exact: bool = False, auto: bool = False) -> Any:
        """Tensor-by-tensor prices from `storage` (what the ONNX routes and weight-only TFLite store)."""
        from .pricing import storage_pricing

        return storage_pricing(self.name, self.storage, activations)

    def constant_states(self, artifact: Path, constants: dict[str, Any]) -> dict[str, str]:
        """ONNX and ORT-format artifacts keep every initializer by name: compare the stored bytes."""
        from . import readback

        stored = readback.float_initializers(artifact, set(constants))
        out = {}
        for name, want in constants.items():
            got = stored.get(name)
            out[name] = "missing" if got is None else "exact" if readback.same_values(got, want) else "changed"
        return out


def _load() -> None:
    from . import ort, ort_mobile, tflite, tflm

    for mod in (ort, ort_mobile, tflite, tflm):
        RUNTIMES.register(mod.RUNTIME.name, mod.RUNTIME)


RUNTIMES: Registry[Runtime] = Registry("runtime", _load)


def runtime(name: str) -> Runtime:
    """The registered runtime ``name`` (BadInputError lists the known ones)."""
    return RUNTIMES.get(name)


def by_artifact(path: Path) -> Runtime | None:
    """The runtime whose suffix the file name ends with (the longest match: ``.tflm.tflite`` before ``.tflite``)."""
    matches = [(len(sfx), r) for r in RUNTIMES for sfx in (r.suffix, *r.also_reads) if path.name.endswith(sfx)]
    return max(matches, key=lambda m: m[0])[1] if matches else None
