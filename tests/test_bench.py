"""The benchmark's contenders compute the same core job (bench/definitions.py).

A hand-made set of events, one edge case per person, goes through each contender as a real
process and must give the hand-computed sessions and transitions; the harness's comparison
must catch a difference; and a small smoke run of the whole harness must agree.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
T0 = datetime(2026, 10, 5, 7, 0, tzinfo=UTC)
SCRIPTS = ("core_journeymap.py", "core_duckdb.py", "core_pandas.py")


def at(hours: float, seconds: int = 0) -> datetime:
    return T0 + timedelta(hours=hours, seconds=seconds)


# (event_id, ts, anonymous_id, user_id, event_type, url, status)
EVENTS = [
    # d2: same ts, ordered by event_id (e16 before e17, whatever the row order);
    # "#top" is not part of the path; "/blog/x" is no default rule's: the catch-all `other`.
    ("e17", at(0), "d2", None, "page_view", "/blog/x", 200),
    ("e16", at(0), "d2", None, "page_view", "/c/shoes#top", 200),
    # d1: an unknown URL answering 404 is `not_found`; "/thank-you" converts by its URL
    # (query removed); the step after the conversion is not part of the journey.
    ("e13", at(1), "d1", None, "page_view", "/nope", 404),
    ("e14", at(1, 60), "d1", None, "page_view", "/thank-you?x=1#frag", 200),
    ("e15", at(1, 120), "d1", None, "page_view", "/blog/some-post", 200),
    # c1 logs in as u3 and u2 at the same instant: its anonymous events go to u2 (ts, then
    # user_id); "/" on an app event is no usable URL, so the event type names it.
    ("e10", at(2), "c1", None, "app_open", "/", None),
    ("e11", at(2, 300), "c1", "u3", "login", "/login", 200),
    ("e12", at(2, 300), "c1", "u2", "login", "/login", 200),
    # a1 browses anonymously, then logs in as u1: one person. A gap of exactly 1800 s
    # continues the session; repeats collapse; a 500 keeps its page's name; purchase converts.
    ("e01", at(3), "a1", None, "page_view", "/", 200),
    ("e02", at(3, 600), "a1", None, "page_view", "/p/red-shoe-1?ref=x", 200),
    ("e02", at(3, 600), "a1", None, "page_view", "/p/red-shoe-1?ref=x", 200),  # exact duplicate
    ("e03", at(3, 1200), "a1", None, "page_view", "/p/blue-shoe-2", 200),
    ("e04", at(3, 3000), "a1", "u1", "login", "/login", 200),
    ("e05", at(3, 3030), "a1", None, "page_view", "/checkout/payment", 500),
    ("e06", at(3, 3060), "a1", None, "purchase", "/checkout/success", 200),
    ("e07", at(3, 3120), "a1", None, "page_view", "/account/orders", 200),
    # b1 is u1 on another device: a new session after 68 min, another after 1801 s.
    ("e08", at(5), "b1", "u1", "page_view", "/cart", 200),
    ("e09", at(5, 1801), "b1", "u1", "page_view", "/cart", 200),
]
EVENTS_SCHEMA = {
    "event_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "anonymous_id": pl.String(),
    "user_id": pl.String(),
    "event_type": pl.String(),
    "url": pl.String(),
    "status": pl.Int16(),
}

EXPECTED_SESSIONS = pl.DataFrame(
    [
        ("a:d1", at(1), 3, True),
        ("a:d2", at(0), 2, False),
        ("u:u1", at(3), 7, True),
        ("u:u1", at(5), 1, False),
        ("u:u1", at(5, 1801), 1, False),
        ("u:u2", at(2), 2, False),
        ("u:u3", at(2, 300), 1, False),
    ],
    schema={
        "person_id": pl.String(),
        "started_at": pl.Datetime("us", "UTC"),
        "n_events": pl.Int64(),
        "is_converted": pl.Boolean(),
    },
    orient="row",
)
EXPECTED_TRANSITIONS = pl.DataFrame(
    [
        ("START", "category", 1),  # d2
        ("category", "other", 1),
        ("other", "EXIT", 1),
        ("START", "not_found", 1),  # d1
        ("not_found", "order_confirmation", 1),
        ("order_confirmation", "CONVERSION", 2),  # d1 and u1's first session
        ("START", "app_open", 1),  # u2
        ("app_open", "login", 1),
        ("login", "EXIT", 2),  # u2 and u3
        ("START", "login", 1),  # u3
        ("START", "home", 1),  # u1's first session
        ("home", "product", 1),
        ("product", "login", 1),
        ("login", "checkout_payment", 1),
        ("checkout_payment", "order_confirmation", 1),
        ("START", "cart", 2),  # u1's second and third sessions
        ("cart", "EXIT", 2),
    ],
    schema={
        "from_touchpoint": pl.String(),
        "to_touchpoint": pl.String(),
        "n_transitions": pl.Int64(),
    },
    orient="row",
).sort("from_touchpoint", "to_touchpoint")


@pytest.fixture(scope="module")
def bench_run():
    """bench/run.py as a module (bench/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_run", None)
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def edge_case_input(tmp_path_factory, bench_run):
    folder = tmp_path_factory.mktemp("bench-input")
    events = folder / "events.parquet"
    pl.DataFrame(EVENTS, schema=EVENTS_SCHEMA, orient="row").write_parquet(events)
    from definitions import write_definitions

    return events, write_definitions(folder / "definitions.json")


@pytest.mark.parametrize(
    ("script", "partition_events"),
    [*((script, None) for script in SCRIPTS), ("core_journeymap.py", 3), ("core_journeymap.py", 7)],
)
def test_contender_computes_the_core_job(
    script, partition_events, edge_case_input, bench_run, tmp_path
):
    """Each contender: duplicates dropped, identities stitched, 1800 s continues, repeats
    collapsed, journeys cut at the first conversion, catch-all and event-type names.
    journeymap's core also in partitions of whole persons (18 rows: 6 or 3 partitions,
    spilled to files): the same job, and no spill file is left behind."""
    events, definitions = edge_case_input
    out = tmp_path / "out"
    cmd = [sys.executable, str(BENCH / script), str(events), str(definitions), str(out)]
    cmd += [str(partition_events)] if partition_events else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    summary, sessions, transitions = bench_run.read_output(out)
    assert summary == {"n_rows_read": 18, "n_events": 17, "n_sessions": 7}
    assert_frame_equal(sessions, EXPECTED_SESSIONS)
    assert_frame_equal(transitions, EXPECTED_TRANSITIONS)
    assert sorted(p.name for p in out.iterdir()) == [
        "sessions.parquet",
        "summary.json",
        "transitions.parquet",
    ]


def _write_output(folder: Path, transitions: pl.DataFrame) -> Path:
    folder.mkdir()
    EXPECTED_SESSIONS.write_parquet(folder / "sessions.parquet")
    transitions.write_parquet(folder / "transitions.parquet")
    (folder / "summary.json").write_text('{"n_rows_read": 18, "n_events": 17, "n_sessions": 7}')
    return folder


def test_compare_names_the_differing_transition(bench_run, tmp_path):
    """One count off in one contender: the comparison says which contender and which row."""
    changed = EXPECTED_TRANSITIONS.with_columns(
        n_transitions=pl.when(pl.col("from_touchpoint") == "cart")
        .then(3)
        .otherwise(pl.col("n_transitions"))
    )
    outputs = {
        bench_run.CORE: _write_output(tmp_path / "a", EXPECTED_TRANSITIONS),
        "DuckDB SQL": _write_output(tmp_path / "b", EXPECTED_TRANSITIONS),
        "pandas": _write_output(tmp_path / "c", changed),
    }
    problems = bench_run.compare(outputs)
    assert len(problems) == 1
    assert problems[0].startswith("pandas: transitions differ")
    assert "cart" in problems[0] and "EXIT" in problems[0]


def test_smoke_run_agrees(tmp_path):
    """`make bench-smoke` in small: generate, run everything, contenders agree, no report."""
    results = tmp_path / "results.md"
    cmd = [sys.executable, str(BENCH / "run.py"), "--smoke", "--events", "20000"]
    cmd += ["--cache", str(tmp_path / "cache"), "--results", str(results)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke ok" in done.stdout
    assert not results.exists()


def test_repeated_runs_count_as_their_median_wall_and_highest_peak(bench_run):
    """Walls 3, 1, 2 s: the median is 2 s, the peak the highest of the three, and every wall
    is kept in the order measured; of two runs the lower middle (the faster) counts."""
    runs = [
        bench_run.Timing("core", 10, wall, peak)
        for wall, peak in [(3.0, 100.0), (1.0, 300.0), (2.0, 200.0)]
    ]
    typical = bench_run.typical(runs)
    assert (typical.wall_s, typical.peak_mb, typical.walls) == (2.0, 300.0, (3.0, 1.0, 2.0))
    assert bench_run.typical(runs[:2]).wall_s == 1.0
    assert bench_run._each(typical) == "3.0, 1.0, 2.0"
    # The stages and reader seconds of a round are picked by the same rule.
    rounds = [("slow", 3.0), ("fast", 1.0), ("middle", 2.0)]
    assert bench_run.median_of(rounds, key=lambda r: r[1]) == ("middle", 2.0)
    assert bench_run.median_of(rounds[:2], key=lambda r: r[1]) == ("fast", 1.0)


def test_repeat_must_be_positive(tmp_path):
    cmd = [sys.executable, str(BENCH / "run.py"), "--repeat", "0", "--cache", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--repeat must be positive" in done.stderr


def test_a_repeated_run_reports_every_wall_and_the_medians(tmp_path):
    """Two rounds at 20k events: each measure runs twice, the report says so and lists both
    walls of every approach, and the contenders agree in every round."""
    results = tmp_path / "results.md"
    cmd = [sys.executable, str(BENCH / "run.py"), "--events", "20000", "--repeat", "2"]
    cmd += ["--cache", str(tmp_path / "cache"), "--results", str(results)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 2 of 2" in done.stdout
    report = results.read_text()
    assert "Each measure run 2 times" in report
    rows = [line for line in report.splitlines() if line.startswith("| 20,000 | ")]
    approaches = [row for row in rows if "journeymap" in row or "SQL" in row or "pandas" in row]
    assert len(approaches) == 4
    for row in approaches:
        walls = row.rstrip(" |").rsplit("|", 1)[1].split(",")
        assert len(walls) == 2 and all(float(w) > 0 for w in walls), row


def test_pipeline_never_imports_pandas():
    """pandas is a dev dependency for the bench baseline only: no stage may come to need it."""
    importing = [
        path.name
        for path in (ROOT / "pipeline").glob("*.py")
        if re.search(r"^\s*(import|from)\s+pandas\b", path.read_text(), re.MULTILINE)
    ]
    assert importing == []


def _scale(small_wall: float, large_wall: float, large_peak: int) -> dict:
    def run(n: int, wall: float, peak: int) -> dict:
        built = {"events": n, "sessions": n // 7, "journey_steps": n // 2, "transitions": n // 2}
        stages = {"ingest": wall / 2, "journeys": wall / 2}
        return {"n_events": n, "n_read": n, "wall_s": wall, "peak_mb": peak,
                "stage_seconds": stages, "built": built}  # fmt: skip

    runs = [run(10_000_000, small_wall, 2_000), run(100_000_000, large_wall, large_peak)]
    return {
        "date": "2026-11-23 12:00 UTC",
        "commit": "abc1234",
        "partition_events": 1_000_000,
        "duckdb_memory_limit": "256MB",
        "runs": runs,
    }


def test_scale_section_judges_memory_and_linearity(bench_run):
    """100 s at 10M and 1,050 s at 100M is 10.5× (≤ 11: met); 1,150 s is 11.5× (not met);
    a peak of 8,193 MB is over 8 GiB."""
    met = "\n".join(bench_run.scale_section(_scale(100.0, 1_050.0, 8_192)))
    assert "| 10.50 | met |" in met and "| 8,192 MB | met |" in met
    slow = "\n".join(bench_run.scale_section(_scale(100.0, 1_150.0, 8_193)))
    assert "| 11.50 | **not met** |" in slow and "| 8,193 MB | **not met** |" in slow


def test_a_new_scale_run_replaces_only_the_scale_section(bench_run):
    """`make bench-scale` rewrites the scale section and keeps the report above it; `make
    bench` keeps the recorded scale section under its new report."""
    report = "# journeymap benchmark\n\n## Ratios\n\n| a | b |\n"
    first = bench_run.with_scale_section(report, _scale(100.0, 1_050.0, 6_000))
    second = bench_run.with_scale_section(first, _scale(100.0, 1_150.0, 6_000))
    assert second.startswith(report)
    assert second.count(bench_run.SCALE_HEADING) == 1
    assert "| 11.50 |" in second and "| 10.50 |" not in second
    assert "make bench-scale" in bench_run.with_scale_section(report, None)
