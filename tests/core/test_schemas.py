"""Every file a user writes or reads has a JSON Schema in schemas/ and a field table in the README, generated
from the pydantic models: both must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_schemas_and_readme_tables_are_generated_from_the_models() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_schemas.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_result_refuses_unknown_keys_and_another_schema_version(tmp_path: Path) -> None:
    import json

    import pytest

    from edgetqs.core.schemas import models
    from edgetqs.errors import BadInputError

    for name, model in models().items():
        if not hasattr(model, "KIND") or name.startswith("device"):
            continue
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps({"schema_version": model.SCHEMA_VERSION, "surprise": 1}))
        with pytest.raises(BadInputError, match="unknown key 'surprise'"):
            model.load(p)
        p.write_text(json.dumps({"schema_version": 99}))
        with pytest.raises(BadInputError, match="schema_version 99"):
            model.load(p)
        p.write_text("[]")
        with pytest.raises(BadInputError, match="not an object"):
            model.load(p)
