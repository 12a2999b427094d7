"""JSON Schemas of every file a user writes or reads, and the README's field tables, from the pydantic models.

`python scripts/gen_schemas.py` writes ``schemas/*.schema.json`` and rewrites each README table between
``<!-- fields:NAME -->`` and ``<!-- /fields:NAME -->``; ``--check`` (run by the test suite) fails when either
is out of date, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from typing import Any


def models() -> dict[str, Any]:
    """File kind -> its pydantic model."""
    from ..allocation.plan import Plan
    from ..allocation.targets import TargetFile
    from ..bundle.manifest import Manifest
    from ..runtimes.convert import ConvertResult
    from ..sensitivity.scores import Scores
    from ..validation.check import CheckResult
    from ..validation.devices import LocalDevice, QemuDevice, SshDevice
    from ..validation.reference import ReferenceMeta
    from .project import ProjectFile

    return {
        "project": ProjectFile,
        "target": TargetFile,
        "device-local": LocalDevice,
        "device-qemu": QemuDevice,
        "device-ssh": SshDevice,
        "scores": Scores,
        "plan": Plan,
        "convert": ConvertResult,
        "check": CheckResult,
        "manifest": Manifest,
        "reference-meta": ReferenceMeta,
    }


def schema(model: Any) -> dict[str, Any]:
    mode = "serialization" if hasattr(model, "KIND") and model.__name__ not in ("LocalDevice", "QemuDevice", "SshDevice") else "validation"
    result: dict[str, Any] = model.model_json_schema(mode=mode)
    return result


def schemas() -> dict[str, str]:
    """File name under ``schemas/`` -> its JSON text."""
    return {f"{name}.schema.json": json.dumps(schema(m), indent=2, sort_keys=True) + "\n" for name, m in models().items()}


def _type(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].split("/")[-1]
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    t = prop.get("type", "any")
    if t == "array":
        items = prop.get("items") or (prop.get("prefixItems") or [{}])[0]
        return f"list of {_type(items, defs)}"
    if t == "object":
        extra = prop.get("additionalProperties")
        return f"table of {_type(extra, defs)}" if isinstance(extra, dict) else "table"
    if "enum" in prop:
        return " or ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "pattern" in prop and t == "string":
        return "precision" if "fp32" in prop["pattern"] else "string"
    return {"integer": "int", "number": "float", "string": "string", "boolean": "bool", "null": "null"}.get(t, t)


def field_table(name: str) -> str:
    """A markdown table of the top-level fields of file kind ``name``: field, type, default (or required)."""
    s = schema(models()[name])
    defs = s.get("$defs", {})
    required = set(s.get("required", []))
    rows = ["| field | type | default |", "|---|---|---|"]
    for key, prop in s.get("properties", {}).items():
        default = "required" if key in required else json.dumps(prop.get("default")) if "default" in prop else ""
        rows.append(f"| `{key}` | {_type(prop, defs)} | {default} |")
    return "\n".join(rows)


def update_readme(text: str) -> str:
    """``text`` with every ``<!-- fields:NAME -->`` ... ``<!-- /fields:NAME -->`` block regenerated."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"<!-- fields:{name} -->\n{field_table(name)}\n<!-- /fields:{name} -->"

    return re.sub(r"<!-- fields:([\w-]+) -->.*?<!-- /fields:\1 -->", repl, text, flags=re.S)
