"""Write schemas/*.schema.json and the README's field tables from the pydantic models.

python scripts/gen_schemas.py            # write them
python scripts/gen_schemas.py --check    # exit 1 (and say which) when any is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from edgetqs.core.schemas import schemas, update_readme

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args()
    want = {ROOT / "schemas" / name: text for name, text in schemas().items()}
    readme = ROOT / "README.md"
    want[readme] = update_readme(readme.read_text())
    stale = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
    extra = [p for p in (ROOT / "schemas").glob("*.json") if p not in want]
    if a.check:
        for p in stale + extra:
            print(f"out of date: {p.relative_to(ROOT)} (run python scripts/gen_schemas.py)", file=sys.stderr)
        return 1 if stale or extra else 0
    (ROOT / "schemas").mkdir(exist_ok=True)
    for p in extra:
        p.unlink()
    for p in stale:
        p.write_text(want[p])
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
