"""Every shipped target file loads; malformed files name the file, the key and the expected type."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetqs.allocation.targets import TargetFileError, find_target, load_target, target_files
from edgetqs.errors import BadInputError

SHIPPED = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "targets").glob("*.toml"))


def test_the_required_targets_ship() -> None:
    assert {"raspberrypi", "raspberrypi-zero2w", "x86-64", "stm32h743", "esp32s3", "nrf52840"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_target_is_valid_and_cites_a_datasheet(name: str) -> None:
    t = find_target(name)
    assert t.name == name and t.weight_budget_bytes > 0 and t.ram_budget_bytes > 0
    for r in t.runtimes:
        assert t.allowed(r, "Conv", "Conv")
    text = Path(t.path).read_text()
    assert text.lstrip().startswith("#") and any(w in text.lower() for w in ("datasheet", "product brief", "specification", "no datasheet"))


def test_microcontrollers_plan_full_integer_only() -> None:
    for name in ("stm32h743", "esp32s3", "nrf52840"):
        t = find_target(name)
        assert t.runtimes == ("tflm",)
        assert all(p.kind == "int" for ps in t.precisions["tflm"].values() for p in ps)
        assert [p.name for p in t.allowed("tflm", "Conv", "Conv.bias")] == ["int32"]


BASE = 'name = "t"\narch = "aarch64"\nruntimes = ["ort"]\nweight_budget_bytes = 1000\nram_budget_bytes = 1000\n[precisions.ort]\ndefault = ["fp32"]\n'


@pytest.mark.parametrize(
    "text, words",
    [
        ("flash = 3\n" + BASE, "unknown key 'flash'"),
        (
            BASE.replace("weight_budget_bytes = 1000", 'weight_budget_bytes = "1MB"'),
            "'weight_budget_bytes' = '1MB' has type str; expected int",
        ),
        (BASE.replace('runtimes = ["ort"]', 'runtimes = ["tensorrt"]'), "runtimes lists 'tensorrt'"),
        (BASE.replace('default = ["fp32"]', 'default = ["fp8"]'), "precision 'fp8'"),
        (BASE.replace('arch = "aarch64"\n', ""), "missing key 'arch'"),
        (BASE + "[validation]\nhorizn = 3\n", "unknown key 'horizn' in [validation]"),
        (BASE + "[precisions.tflm]\ndefault = []\n", "is empty"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_malformed_target_names_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    p = tmp_path / "mine.toml"
    p.write_text(text)
    with pytest.raises(TargetFileError) as err:
        load_target(p)
    assert str(p) in str(err.value) and words in str(err.value)


def test_a_users_own_file_works_where_a_name_does(tmp_path: Path) -> None:
    p = tmp_path / "board.toml"
    p.write_text(BASE)
    assert find_target(str(p)).name == "t"
    with pytest.raises(BadInputError, match="known targets: .*raspberrypi"):
        find_target("pi-nine")


def test_target_files_lists_each_name_once() -> None:
    names = [f.name for f in target_files()]
    assert len(names) == len(set(names))


def test_a_bias_does_not_inherit_its_ops_weight_precisions() -> None:
    t = find_target("raspberrypi")
    assert "int4-block32" in [p.name for p in t.allowed("ort-mobile", "Gemm", "Gemm")]
    assert [p.name for p in t.allowed("ort-mobile", "Gemm", "Gemm.bias")] == [p.name for p in t.allowed("ort-mobile", "x", "default")]
    assert [p.name for p in t.allowed("tflite", "Conv", "Conv.bias")] == ["fp32"]
