"""Errors whose advice works: every structured `Hint` in the error catalogue is met on the command line,
followed (`Hint.follow`), and the command run again must get past that error.

The catalogue is read from the source (every ``Hint("key", ...)``, ``route_hint(..., "key")`` and module-level
hint), so a new hint without a case here fails `test_every_hint_in_the_catalogue_has_a_case`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgetqs import console
from edgetqs.cli import app

ROOT = Path(__file__).resolve().parents[1]
# hints met only on the TFLite routes (a converter that lacks an op or rounds itself): tests/test_hints.py
# covers them in the tflite tier below
TFLITE_ONLY = {"tflite-route-op", "tflite-route-node"}


def catalogue() -> set[str]:
    """Every hint key in the package source."""
    keys: set[str] = set()
    for p in (ROOT / "edgetqs").rglob("*.py"):
        text = p.read_text()
        keys |= set(re.findall(r'Hint\(\s*"([a-z0-9-]+)"', text))
        keys |= set(re.findall(r'route_hint\([^,()]+,\s*"([a-z0-9-]+)"\)', text))
    return keys


@dataclass
class Run:
    code: int
    error: console.EdgetqsError | None
    output: str


def cli(argv: list[str]) -> Run:
    """One command in this process (`typer.testing.CliRunner`); the error it ended with, if any."""
    console.LAST["error"] = None
    r = CliRunner().invoke(app, argv, standalone_mode=False)
    code = r.exc_info[1].code if r.exc_info and isinstance(r.exc_info[1], console.Exit) else r.exit_code
    if r.exception is not None and not isinstance(r.exception, (console.Exit, SystemExit)):
        raise r.exception
    return Run(code, console.LAST["error"], r.output)


def options_of(command: str) -> dict[str, tuple[str, ...]]:
    """Option name -> every spelling of it, for ``command`` (``--horizon`` and ``-T`` are one option)."""
    import typer.main

    click_cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    out: dict[str, tuple[str, ...]] = {}
    for p in click_cmd.params:
        names = (*p.opts, *p.secondary_opts)
        for n in names:
            out[n] = names
    return out


def follow(argv: list[str], key: str) -> tuple[list[str], str]:
    """Run ``argv``; it must fail with the hint ``key``, whose advice names only options of that command.
    Returns the command line with the hint followed, and the rendered advice."""
    r = cli(argv)
    assert r.code == 2 and r.error is not None, r.output
    hint = r.error.hint
    assert hint is not None and hint.key == key, (hint, r.output)
    opts = options_of(argv[0])
    if hint.command is None:
        assert all(f in opts for f in hint.flags()), f"{key}: advises {hint.flags()} to `{argv[0]}`, which has none of them"
    text = r.error.render(set(opts))
    assert text in " ".join(r.output.split()) or text[:60] in " ".join(r.output.split()), r.output
    return hint.follow(argv, opts), text


def gets_past(argv: list[str], key: str) -> Run:
    """``argv`` must not end with the error of hint ``key`` again."""
    r = cli(argv)
    got = r.error.hint.key if r.error is not None and r.error.hint is not None else None
    assert got != key, f"following hint {key} ends in the same error: {r.output}"
    return r


# --------------------------------------------------------------------------------------------- models


def cube(path: Path, n: int = 4) -> Path:
    """x -> (W x)^3 with W = I: shrinks states below 1 to 0 and blows up those above 1."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w.weight"], ["h"]),
            helper.make_node("Mul", ["h", "h"], ["h2"]),
            helper.make_node("Mul", ["h2", "h"], ["y"]),
        ],
        "cube",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        [numpy_helper.from_array(np.eye(n, dtype=np.float32), "w.weight")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of small models, contexts and one score -> plan chain of the state model."""
    d = tmp_path_factory.mktemp("hints")
    rng = np.random.default_rng(0)
    models.state_mlp(d / "state.onnx")
    np.save(d / "rec.npy", rng.standard_normal((120, 8)).astype(np.float32))
    models.exploding(d / "boom.onnx", factor=2.0)  # overflows float32 after about 128 steps
    np.save(d / "rec4.npy", (0.5 * rng.standard_normal((60, 4))).astype(np.float32))
    models.window_mlp(d / "win.onnx", length=6, horizon=2, channels=3)
    np.save(d / "rec3.npy", rng.standard_normal((80, 3)).astype(np.float32))
    np.save(d / "stack.npy", rng.standard_normal((5, 6, 3)).astype(np.float32))  # 5 windows [N, L, C]
    models.window_mlp(d / "quant.onnx", length=6, horizon=2, channels=3, quantiles=3)  # [B, 6, 3] -> [B, 2, 3, 3]
    models.static_conv(d / "conv.onnx", channels=2, size=6)
    np.savez(d / "conv.npz", record=rng.standard_normal((20, 2, 6, 6)).astype(np.float32), mask=np.ones((1, 6, 6), np.float32))
    cube(d / "cube.onnx")
    models.forced_state(d / "forced.onnx")  # x[B, 1], tod[B, 2] -> y[B, 1]
    times = np.arange("2024-01-01T00", "2024-01-06T00", dtype="datetime64[h]").astype(str)
    (d / "timed.csv").write_text(
        "time,x\n" + "".join(f"{t},{v:.4f}\n" for t, v in zip(times, np.random.default_rng(1).standard_normal(len(times))))
    )
    gap = rng.standard_normal((120, 8)).astype(np.float32)
    gap[10:14, 3] = np.nan  # a gap in time
    gap[5, 1] = np.inf
    np.save(d / "gap.npy", gap)
    land = rng.standard_normal((20, 2, 6, 6)).astype(np.float32)
    land[:, 0, 0, 0] = np.nan  # a point missing at every step (a land mask): only the variable's mean fills it
    np.savez(d / "land.npz", record=land, mask=np.ones((1, 6, 6), np.float32))
    assert cli(["score", str(d / "state.onnx"), "-c", str(d / "rec.npy"), "-k", "4", "-T", "5", "-o", str(d / "s.json"), "-q"]).code == 0
    assert (
        cli(["plan", str(d / "s.json"), "-t", "raspberrypi", "--model", str(d / "state.onnx"), "-o", str(d / "plan.json"), "-q"]).code == 0
    )
    return d


# ---------------------------------------------------------------------------------------------- cases


def _score(d: Path, model: str, *extra: str) -> list[str]:
    return ["score", str(d / model), "-k", "3", "-T", "4", "-q", "-o", str(d / f"out-{model}.json"), *extra]


CASES: dict[str, Callable[[Path], list[str]]] = {
    # a declared mode the shapes contradict -> the mode they fit
    "rollout-mode": lambda d: _score(d, "win.onnx", "-c", str(d / "rec3.npy"), "--mode", "state"),
    "rollout-mode#state": lambda d: _score(d, "conv.onnx", "-c", str(d / "conv.npz"), "--static", "mask", "--mode", "window"),
    # several values per output element (quantiles) -> one of them feeds back
    "rollout-output-slice": lambda d: _score(d, "quant.onnx", "-c", str(d / "rec3.npy")),
    # an input no output feeds -> declared static
    "rollout-static": lambda d: _score(d, "conv.onnx", "-c", str(d / "conv.npz")),
    # an input no output feeds, two features wide -> read per step as the time of day
    "rollout-forcing": lambda d: _score(d, "forced.onnx", "-c", str(d / "timed.csv")),
    # more contexts than a stack of windows holds
    "contexts-k-stack": lambda d: [*_score(d, "win.onnx", "-c", str(d / "stack.npy")), "-k", "8"],
    # more contexts than a record has room for
    "contexts-k-record": lambda d: [*_score(d, "win.onnx", "-c", str(d / "rec3.npy")), "-k", "80"],
    # NaN/Inf refused -> fill them (ffill), then the variable missing at every step -> fill by the mean
    "contexts-fill": lambda d: _score(d, "state.onnx", "-c", str(d / "gap.npy")),
    "fill-mean": lambda d: _score(d, "conv.onnx", "-c", str(d / "land.npz"), "--static", "mask", "--fill", "ffill"),
    "contexts-fill#mean": lambda d: _score(d, "conv.onnx", "-c", str(d / "land.npz"), "--static", "mask"),
    # the float model's own rollout overflows -> a shorter horizon
    "score-horizon": lambda d: [*_score(d, "boom.onnx", "-c", str(d / "rec4.npy")), "-T", "200"],
    # a spin-up from noise that blows up -> smaller noise
    "spinup-scale": lambda d: _score(d, "cube.onnx", "--spinup", "--spinup-scale", "3"),
    # a plan for ort written as tflite -> the plan's format
    "convert-format": lambda d: [
        "convert",
        str(d / "state.onnx"),
        "-p",
        str(d / "plan.json"),
        "-f",
        "tflite",
        "-o",
        str(d / "cf"),
        "-c",
        str(d / "rec.npy"),
        "-k",
        "3",
    ],
    # an artifact that exists -> --overwrite
    "overwrite": lambda d: _twice(
        [
            "convert",
            str(d / "state.onnx"),
            "-p",
            str(d / "plan.json"),
            "-f",
            "ort",
            "-o",
            str(d / "ow"),
            "-c",
            str(d / "rec.npy"),
            "-k",
            "3",
        ]
    ),
    # a target that does not run the format asked for -> one it runs (a 1-byte budget stops the build after the format check)
    "build-format": lambda d: [
        "build",
        str(d / "state.onnx"),
        "--target",
        "stm32h743",
        "--format",
        "ort",
        "-c",
        str(d / "rec.npy"),
        "-k",
        "3",
        "--budget",
        "1",
        "-o",
        str(d / "dist"),
    ],
    # a GPTQ plan converted with other contexts -> the plan's own
    "convert-contexts": lambda d: _gptq(
        d,
        [
            "convert",
            str(d / "state.onnx"),
            "-p",
            str(d / "gptq.json"),
            "-f",
            "ort",
            "-o",
            str(d / "cc"),
            "-c",
            str(d / "rec.npy"),
            "-k",
            "3",
        ],
    ),
    # the float model leaves the finite numbers within the check's horizon -> a shorter one
    "check-horizon": lambda d: _boom_artifact(
        d,
        [
            "check",
            str(d / "bo" / "boom.ort.onnx"),
            "--model",
            str(d / "boom.onnx"),
            "-c",
            str(d / "rec4.npy"),
            "-k",
            "3",
            "-T",
            "200",
            "-o",
            str(d / "bo-check"),
        ],
    ),
    # a reference of another horizon -> drop --horizon
    "reference-horizon": lambda d: _reference(d),
}


def _twice(argv: list[str]) -> list[str]:
    assert cli(argv).code in (0, 1)  # the first time writes the artifact
    return argv


def _gptq(d: Path, argv: list[str]) -> list[str]:
    r = cli(
        [
            "plan",
            str(d / "s.json"),
            "-t",
            "raspberrypi",
            "--model",
            str(d / "state.onnx"),
            "--rounding",
            "gptq",
            "-c",
            str(d / "rec.npy"),
            "-k",
            "4",
            "-o",
            str(d / "gptq.json"),
            "-q",
        ]
    )
    assert r.code == 0, r.output
    return argv


def _boom_artifact(d: Path, argv: list[str]) -> list[str]:
    for a in (
        ["score", str(d / "boom.onnx"), "-c", str(d / "rec4.npy"), "-k", "3", "-T", "4", "-o", str(d / "bs.json"), "-q"],
        ["plan", str(d / "bs.json"), "-t", "raspberrypi", "--model", str(d / "boom.onnx"), "-o", str(d / "bp.json"), "-q"],
        ["convert", str(d / "boom.onnx"), "-p", str(d / "bp.json"), "-f", "ort", "-o", str(d / "bo"), "-c", str(d / "rec4.npy"), "-k", "3"],
    ):
        r = cli(a)
        assert r.code in (0, 1), r.output
    return argv


def _reference(d: Path) -> list[str]:
    art = d / "ow" / "state.ort.onnx"
    if not art.exists():
        _twice(
            [
                "convert",
                str(d / "state.onnx"),
                "-p",
                str(d / "plan.json"),
                "-f",
                "ort",
                "-o",
                str(d / "ow"),
                "-c",
                str(d / "rec.npy"),
                "-k",
                "3",
            ]
        )
    r = cli(
        ["check", str(art), "--model", str(d / "state.onnx"), "-c", str(d / "rec.npy"), "-k", "3", "-T", "6", "-o", str(d / "ref-check")]
    )
    assert r.code in (0, 1), r.output
    return ["check", str(art), "--reference", str(d / "ref-check" / "reference.npz"), "-T", "9", "-o", str(d / "ref-check2")]


def test_every_hint_in_the_catalogue_has_a_case() -> None:
    assert catalogue() == {k.split("#")[0] for k in CASES} | TFLITE_ONLY | {"contexts-variables"}


@pytest.mark.parametrize("key", sorted(CASES))
def test_hint_followed_gets_past_its_error(w: Path, key: str) -> None:
    argv, hint = CASES[key](w), key.split("#")[0]
    followed, text = follow(argv, hint)
    r = gets_past(followed, hint)
    print(f"\nHINT | {hint} | `{argv[0]}` | {text} | exit {r.code}")


def test_netcdf_variables_hint(tmp_path: Path) -> None:
    """Variables of different dims in one NetCDF -> the ones that share the first's dims."""
    import xarray as xr

    models.state_mlp(tmp_path / "m.onnx", n=2)
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "t2m": (("time",), rng.standard_normal(50).astype(np.float32)),
            "psl": (("time",), rng.standard_normal(50).astype(np.float32)),
            "orog": (("lat",), rng.standard_normal(3).astype(np.float32)),
        }
    )
    ds.to_netcdf(tmp_path / "f.nc")
    argv = ["score", str(tmp_path / "m.onnx"), "-c", str(tmp_path / "f.nc"), "-k", "3", "-T", "4", "-q", "-o", str(tmp_path / "s.json")]
    followed, text = follow(argv, "contexts-variables")
    print(f"\nHINT | contexts-variables | `score` | {text}")
    assert "--variables t2m,psl" in text
    assert gets_past(followed, "contexts-variables").code == 0


def test_tflite_route_advice_names_only_a_format_the_target_runs() -> None:
    """The onnx2tf failures advise the ONNX Runtime route only to a target that runs it (issue 18: stm32h743 was
    told to use --format ort, which it refuses)."""
    from edgetqs.allocation.targets import find_target
    from edgetqs.runtimes.litert import no_route, route_hint

    for name in ("raspberrypi", "x86-64", "stm32h743", "esp32s3"):
        tg = find_target(name)
        hint = route_hint(tg, "tflite-route-op")
        if hint is None:
            assert not {"ort", "ort-mobile"} & set(tg.runtimes) and "cannot be deployed there" in no_route(tg)
        else:
            assert hint.args[1] in tg.runtimes, (name, hint)
    assert route_hint(find_target("stm32h743"), "tflite-route-op") is None
    assert route_hint(None, "tflite-route-op") is not None  # no target: any format


def test_no_fill_is_advised_when_none_fills_them(tmp_path: Path) -> None:
    """A variable with no finite value at all: no fill can invent it, so none is advised (advice that ends in
    the next refusal is no advice)."""
    models.state_mlp(tmp_path / "m.onnx")
    rec = np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32)
    rec[:, 3] = np.nan
    np.save(tmp_path / "r.npy", rec)
    for fill in (None, "ffill", "mean"):
        argv = [
            "score",
            str(tmp_path / "m.onnx"),
            "-c",
            str(tmp_path / "r.npy"),
            "-k",
            "3",
            "-T",
            "4",
            "-q",
            "-o",
            str(tmp_path / "s.json"),
        ]
        r = cli(argv + (["--fill", fill] if fill else []))
        assert r.code == 2 and r.error is not None and r.error.hint is None, (fill, r.output)
        assert "fix the" in str(r.error), str(r.error)


def test_onnx2tf_failures_name_our_node_and_its_op(tmp_path: Path) -> None:
    """onnx2tf reports '/rnn/GRU' as 'wa/rnn/GRU' and '/Add' as 'wa/Add' (issue 18 read '(unknown op)'):
    the refusal names our node and its op."""
    import realmodels

    from edgetqs.core.model import load_model
    from edgetqs.runtimes.litert import our_node

    m = load_model(realmodels.gru_onestep(tmp_path / "g.onnx", L=6, C=2, hidden=4))
    assert our_node(m, "wa/rnn/GRU") == ("/rnn/GRU", "GRU")
    assert our_node(m, "rnn/GRU") == ("/rnn/GRU", "GRU")
    assert our_node(m, "wa/Add") == ("/Add", "Add")
    assert our_node(m, "tf.math.add_2") is None and our_node(m, "xrnn/GRU") is None


@pytest.mark.long  # converts a GRU through TensorFlow only to find that it converts now (a skip): kept for when a refusal returns
@pytest.mark.tflite
def test_tflite_route_hint_is_followed_on_a_target_that_runs_ort(tmp_path: Path) -> None:
    """A model onnx2tf cannot convert (a GRU before the recurrent legalisation reaches the TFLite route), built
    for raspberrypi as tflite: the advice is --format ort, which raspberrypi runs; followed, the build completes."""
    import realmodels

    model = realmodels.gru_onestep(tmp_path / "gru.onnx", L=8, C=3, hidden=8)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "w.npy", rng.standard_normal((12, 8, 3)).astype(np.float32))
    argv = ["build", str(model), "-t", "raspberrypi", "--format", "tflite", "-c", str(tmp_path / "w.npy"), "-k", "3", "-d", "local"]
    argv += ["-o", str(tmp_path / "dist")]
    r = cli(argv)
    if r.code != 2:
        pytest.skip("onnx2tf converts this GRU now (recurrent legalisation wired): no refusal to follow")
    assert r.error is not None and r.error.hint is not None and r.error.hint.key.startswith("tflite-route-"), r.output
    assert "(GRU)" in str(r.error)
    followed = r.error.hint.follow(argv, options_of("build"))
    assert "--format" in followed and followed[followed.index("--format") + 1] == "ort"
    print(
        f"\nHINT | {r.error.hint.key} | `build` | {r.error.render(set(options_of('build')))} | exit {gets_past(followed, r.error.hint.key).code}"
    )
