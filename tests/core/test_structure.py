"""The package's structure: registries, the shipped catalogue, light imports, self-contained device code."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.core import catalogue
from edgetqs.errors import BadInputError
from edgetqs.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)


def test_registry_refuses_duplicates_and_names_the_known_ones() -> None:
    r: Registry[int] = Registry("widget")
    r.register("a", 1)
    r.register("b", 2)
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", 3)
    with pytest.raises(BadInputError, match="unknown widget 'c'; expected one of a, b"):
        r.get("c")
    assert r.names() == ("a", "b") and r.help() == "a | b" and "a" in r and list(r) == [1, 2]


def test_every_plug_in_point_is_a_registry() -> None:
    from edgetqs.allocation.methods import METHODS
    from edgetqs.runtimes import RUNTIMES
    from edgetqs.sensitivity.probes import PROBES
    from edgetqs.validation.devices import DEVICE_KINDS

    assert RUNTIMES.names() == ("ort", "ort-mobile", "tflite", "tflm")
    assert PROBES.names() == ("gauss", "quant")
    assert DEVICE_KINDS.names() == ("local", "qemu", "ssh")
    assert {"tqs", "uniform", "hessian", "weight-error", "random", "tqs-paper"} <= set(METHODS.names())
    for rt in RUNTIMES:  # every runtime says everything the pipeline asks of it
        assert rt.suffix.startswith(".") and rt.name in rt.accepts and rt.device_packages and rt.runner
        assert rt.storage.scale_bytes > 0


def test_no_string_switch_on_runtime_names_outside_the_registry() -> None:
    names = ("ort", "ort-mobile", "tflite", "tflm")
    offenders = []
    for p in (ROOT / "edgetqs").rglob("*.py"):
        rel = p.relative_to(ROOT / "edgetqs")
        if rel.parts[0] in ("runtimes", "ondevice"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(c in names for c in consts):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_device_code_imports_nothing_from_edgetqs() -> None:
    allowed = STDLIB | {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "tflite_micro", "step", "runners", "importlib"}
    for p in (ROOT / "edgetqs" / "ondevice").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 or p.name == "__init__.py", f"{p.name} imports relatively: {ast.dump(node)}"
                mods = [node.module or ""]
            for m in mods:
                assert m.split(".")[0] in allowed, f"{p.name} imports {m}"


def test_import_edgetqs_and_help_stay_light() -> None:
    code = (
        "import sys, edgetqs, edgetqs.cli; heavy = [m for m in ('onnxruntime', 'torch', 'tensorflow', 'onnx2tf', 'onnx', 'scipy', "
        "'matplotlib', 'xarray', 'pandas') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_catalogue_search_order_and_shadowing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetqs.allocation.targets import find_target, target_files

    shipped = (ROOT / "targets" / "x86-64.toml").read_text()
    env_dir, proj = tmp_path / "env", tmp_path / "proj"
    (env_dir).mkdir()
    (proj / "targets").mkdir(parents=True)
    (env_dir / "x86-64.toml").write_text(shipped.replace('description = "', 'description = "from env: '))
    (env_dir / "mine.toml").write_text(shipped.replace('name = "x86-64"', 'name = "mine"'))
    monkeypatch.chdir(proj)
    monkeypatch.setenv("EDGETQS_TARGETS_PATH", str(env_dir))
    said: list[str] = []
    assert find_target("x86-64", said.append).description.startswith("from env")
    assert "shadows" in said[0] and str(ROOT / "targets" / "x86-64.toml") in said[0]
    (proj / "targets" / "x86-64.toml").write_text(shipped.replace('description = "', 'description = "from project: '))
    assert find_target("x86-64").description.startswith("from project")
    by = {e.name: e for e in target_files()}
    assert by["x86-64"].origin == "project" and len(by["x86-64"].shadows) == 2
    assert by["mine"].origin == "$EDGETQS_TARGETS_PATH" and by["raspberrypi"].origin == "shipped"
    for bad in ("../x", "a b", "", "[/]"):
        with pytest.raises(BadInputError):
            find_target(bad)


def test_shipped_catalogue_is_found_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert catalogue.shipped_dir("targets").is_dir() and catalogue.shipped_dir("devices").is_dir()
    from edgetqs.allocation.targets import find_target
    from edgetqs.validation.devices import find_device

    assert find_target("raspberrypi").name == "raspberrypi" and find_device("qemu-pi4").name == "qemu-pi4"


def test_host_rollout_and_driver_run_the_same_loop(tmp_path: Path) -> None:
    """Window mode with a quantile output slice and increments: the host's Rollout and the device driver give
    identical trajectories (they share edgetqs/ondevice/step.py)."""
    from edgetqs.core.contexts import read_record, select_contexts
    from edgetqs.core.model import load_model
    from edgetqs.core.rollout import Rollout, SpecHints, infer_spec
    from edgetqs.validation.check import check
    from edgetqs.validation.devices import LocalDevice
    from edgetqs.validation.reference import make_reference

    path = models.window_mlp(tmp_path / "w.onnx", quantiles=3)
    m = load_model(path)
    spec = infer_spec(m, SpecHints(output_slice="...,1", increment=True))
    np.save(tmp_path / "r.npy", np.random.default_rng(1).standard_normal((80, 3)).astype(np.float32))
    ctx = select_contexts(read_record(tmp_path / "r.npy", spec), m, spec, 4)
    ref = make_reference(m, spec, ctx, 7)
    _, got = check(path, ref, LocalDevice(name="local"), tolerance=1.0, fmt="ort")
    host = Rollout(m, spec, model_bytes=m.bytes).run(ctx.arrays, 7)
    np.testing.assert_array_equal(got["y"], host.steps[0])


def test_wheel_holds_every_module_the_catalogue_and_the_examples(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    import zipfile

    (whl,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    tree = {str(p.relative_to(ROOT)) for p in (ROOT / "edgetqs").rglob("*.py")}
    assert tree <= names, sorted(tree - names)
    assert {f"edgetqs/catalogue/targets/{p.name}" for p in (ROOT / "targets").glob("*.toml")} <= names
    assert {f"edgetqs/catalogue/devices/{p.name}" for p in (ROOT / "devices").glob("*.toml")} <= names
    assert "edgetqs/py.typed" in names and any(n.endswith("lorenz96/model.onnx") for n in names)
