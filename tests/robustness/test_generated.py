"""Generated bad input (issue 12): every option of every command and every key of the project, target and
device files, given a value outside its domain, must end with exit 2, one ``error:`` line, no traceback,
within a time limit, and nothing new or changed on disk (`robust` has the machinery and the domains).

Default run: every option's and key's fixed bad examples (each domain makes its own: the bounds +-1, NaN, Inf,
huge, empty, markup, path characters, wrong types, broken files of the right kind), a derandomized sample of
generated cases, and a sample of real subprocesses. ``-m fuzz``: thousands of generated cases; set
``EDGETQS_FUZZ_N`` (default 3000) and ``EDGETQS_FUZZ_REPORT`` (a JSON file for the outcome counts).
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest
import robust
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> robust.Workspace:
    w = robust.build_workspace(tmp_path_factory.mktemp("robust") / "ws")
    robust.WS_ROOT[:] = [w.root]
    yield w
    robust.WS_ROOT.clear()


def _run(ws: robust.Workspace, cases: list[robust.Case]) -> tuple[collections.Counter[str], list[robust.Outcome], float]:
    counts: collections.Counter[str] = collections.Counter()
    bad: list[robust.Outcome] = []
    t0 = time.perf_counter()
    for case in cases:
        o = robust.run_case(ws, case)
        counts[o.kind] += 1
        if o.kind != "clean":
            bad.append(o)
    return counts, bad, time.perf_counter() - t0


def _sample(items: list[robust.Case], n: int) -> list[robust.Case]:
    """Every ``len/n``-th item: a fixed, evenly spread slice that still visits every option."""
    step = max(1, len(items) // n)
    return items[::step]


def test_every_option_and_every_file_key_has_a_domain() -> None:
    assert robust.check_coverage() == []
    assert robust.key_coverage() == []


def test_the_base_command_lines_are_valid(ws: robust.Workspace) -> None:
    """A bad case fails because of its one bad value: each command line it starts from succeeds as it is."""
    bases = [*robust.BASES.values(), *(s.base for s in robust.OPTIONS.values() if s.base)]
    bases += [[*argv[: argv.index("in/bad.toml")], f, *argv[argv.index("in/bad.toml") + 1 :]] for argv, f in _file_bases()]
    for argv in {tuple(b) for b in bases}:
        r = robust.run_cli(list(argv), ws.root, timeout=120)
        assert r.rc in (0, 1) and not r.error_lines, (argv, r.stderr[-500:])
        ws.restore()


def _file_bases() -> list[tuple[list[str], str]]:
    return [
        (robust.FILE_BASES["project"][0], "p.toml"),
        (robust.FILE_BASES["target"][0], "t.toml"),
        (robust.FILE_BASES["device"][0], "d.toml"),
    ]


def test_every_option_s_bad_examples_give_one_clean_error(ws: robust.Workspace) -> None:
    """About 100 of the 1,100 option examples, spread over the options (all of them run with -m fuzz)."""
    cases = list(robust.option_examples())
    counts, bad, seconds = _run(ws, _sample(cases, 100))
    assert not bad, f"{dict(counts)} in {seconds:.0f} s:\n" + "\n".join(map(str, bad[:20]))


def test_every_file_key_s_bad_values_give_one_clean_error(ws: robust.Workspace) -> None:
    cases = list(robust.file_examples())
    counts, bad, seconds = _run(ws, _sample(cases, 60))
    assert not bad, f"{dict(counts)} in {seconds:.0f} s:\n" + "\n".join(map(str, bad[:20]))


def test_generated_sample(ws: robust.Workspace) -> None:
    """A fixed (derandomized) draw of generated cases: random text, numbers, bytes and truncations."""
    outcomes: list[robust.Outcome] = []

    @settings(max_examples=40, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(robust.option_cases(), robust.file_cases()))
    def one(case: robust.Case) -> None:
        outcomes.append(robust.run_case(ws, case))

    one()
    bad = [o for o in outcomes if o.kind != "clean"]
    assert not bad, "\n".join(map(str, bad[:20]))


@pytest.mark.long  # one real process per listed case (minutes); the default run checks the cases in process
def test_real_processes_agree_with_the_in_process_runner(ws: robust.Workspace) -> None:
    """The in-process runner is what the suite relies on: a sample run as real ``python -m edgetqs.cli`` processes
    ends the same way (status 2, one error line, nothing on disk)."""
    cases = _sample(list(robust.option_examples()), 3) + _sample(list(robust.file_examples()), 1)
    for case in cases:
        inproc = robust.run_case(ws, case)
        real = robust.run_case(ws, case, runner=robust.run_subprocess)
        assert (inproc.kind, real.kind) == ("clean", "clean"), f"{inproc}\n{real}"
        assert inproc.result.error_lines == real.result.error_lines


@pytest.mark.fuzz
def test_generated_long(ws: robust.Workspace) -> None:
    """The long run: every fixed example, then EDGETQS_FUZZ_N generated cases; the outcome counts go to
    EDGETQS_FUZZ_REPORT (JSON) and the test fails on any outcome but a clean error."""
    n = int(os.environ.get("EDGETQS_FUZZ_N", "3000"))
    examples = [*robust.option_examples(), *robust.file_examples()]
    counts, bad, seconds = _run(ws, examples)
    gen: list[robust.Outcome] = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(robust.option_cases(), robust.file_cases()))
    def one(case: robust.Case) -> None:
        gen.append(robust.run_case(ws, case))

    t0 = time.perf_counter()
    one()
    gen_counts = collections.Counter(o.kind for o in gen)
    bad += [o for o in gen if o.kind != "clean"]
    by_where = collections.Counter(o.case.where for o in gen)
    report = {
        "examples": {"cases": len(examples), "seconds": round(seconds, 1), **{k: counts.get(k, 0) for k in robust.KINDS}},
        "generated": {"cases": len(gen), "seconds": round(time.perf_counter() - t0, 1), **{k: gen_counts.get(k, 0) for k in robust.KINDS}},
        "options_and_keys_visited": len(by_where),
        "slowest_s": round(max((o.result.seconds for o in gen), default=0.0), 2),
        "not_clean": [str(o) for o in bad[:200]],
    }
    out = os.environ.get("EDGETQS_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "not_clean"}, indent=1))
    assert not bad, "\n".join(map(str, bad[:30]))
