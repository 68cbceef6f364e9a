"""Nightly runs as a scheduler makes them: real `journeymap` processes on real day folders.

Invariants (issue 5):
- N incremental daily runs give exactly the tables of one full run over the same days;
- re-running a day changes nothing; running the days out of order converges to the same;
- a run killed at any point leaves the database as it was, and the next run completes;
- a reader holding the database open never sees half a run and never makes the run fail.

The days are cut from a generated NDJSON stream by event date, so sessions cross midnight
into the next day's file, people come back on later days and log in on some of them, and a
share of day one's events is delivered late, with the last day.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from polars.testing import assert_frame_equal

from pipeline.cli import SPILL_PARTITIONS
from pipeline.sample import write_sample

# Compared column by column; only lineage that says *when* a row was loaded may differ.
TABLES = {
    "raw.events": "* exclude (run_id, ingested_at)",
    "raw.quarantine": "* exclude (run_id, ingested_at)",
    "marts.sessions": "*",
    "marts.session_steps": "*",
    "marts.journey_steps": "*",
    "marts.transitions": "*",
    "marts.transitions_by_segment": "*",
    "marts.touchpoints": "*",
    "marts.paths": "*",
    "marts.path_lengths": "*",
    "marts.blockers": "*",
}
LATE_EVERY = 40  # every 40th line of day one arrives with the last day


def journeymap(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_day(db: Path, *days: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    inputs = [a for day in days for a in ("--input", day)]
    result = journeymap("run", *inputs, "--db", db, "--quiet", *extra)
    assert result.returncode == 0, result.stderr
    return result


def snapshot(db: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            name: pl.from_arrow(
                con.sql(f"select {columns} from {name} order by all").to_arrow_table()
            )
            for name, columns in TABLES.items()
        }
    finally:
        con.close()


def assert_same_tables(got: dict[str, pl.DataFrame], expected: dict[str, pl.DataFrame]) -> None:
    for name in TABLES:
        try:
            assert_frame_equal(got[name], expected[name], check_exact=True)
        except AssertionError as err:
            raise AssertionError(f"{name} differs: {err}") from None


def last_run(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return pl.from_arrow(
            con.sql("select * from raw.runs order by run_id desc limit 1").to_arrow_table()
        ).to_dicts()[0]
    finally:
        con.close()


def work_files(db: Path) -> list[Path]:
    return sorted(db.parent.glob(f".{db.name}.run-*"))


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> list[Path]:
    """logs/<date>/events.ndjson for four days; unparseable lines go with the first day."""
    root = tmp_path_factory.mktemp("nightly")
    write_sample(root / "sample", 8000, formats=("ndjson",), days=4, seed=11)
    by_day: dict[str, list[bytes]] = {}
    for line in (root / "sample" / "events.ndjson").read_bytes().splitlines(keepends=True):
        found = re.search(rb'"ts":"(2026-10-0[5-8])', line)
        by_day.setdefault(found.group(1).decode() if found else "2026-10-05", []).append(line)
    dates = sorted(by_day)
    first, last = by_day[dates[0]], by_day[dates[-1]]
    by_day[dates[0]] = [line for i, line in enumerate(first) if i % LATE_EVERY]
    by_day[dates[-1]] = last + [line for i, line in enumerate(first) if not i % LATE_EVERY]
    folders = []
    for date in dates:
        folder = root / "logs" / date
        folder.mkdir(parents=True)
        (folder / "events.ndjson").write_bytes(b"".join(by_day[date]))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def full_run(days, tmp_path_factory) -> dict[str, pl.DataFrame]:
    """One run over every day at once: the reference."""
    db = tmp_path_factory.mktemp("full") / "full.duckdb"
    run_day(db, *days)
    return snapshot(db)


@pytest.fixture(scope="module")
def nightly_db(days, tmp_path_factory) -> Path:
    """One incremental run per day, in date order."""
    db = tmp_path_factory.mktemp("nightly_db") / "journeymap.duckdb"
    for day in days:
        run_day(db, day)
    return db


def test_the_days_exercise_what_makes_incremental_hard(full_run, days):
    """The fixture is only a test if it has sessions across midnight, returning people,
    logins and late events; check that it does."""
    assert len(days) == 4
    sessions = full_run["marts.sessions"]
    crossing = sessions.filter(pl.col("started_at").dt.date() != pl.col("ended_at").dt.date())
    assert crossing.height > 0, "no session crosses midnight"
    returning = sessions.group_by("person_id").agg(days=pl.col("started_at").dt.date().n_unique())
    assert returning.filter(pl.col("days") > 1).height > 0, "nobody comes back another day"
    assert sessions.filter(pl.col("person_id").str.starts_with("u:")).height > 0, "no logins"


def test_daily_incremental_runs_equal_one_full_run(nightly_db, full_run):
    """Four nightly runs, each loading one day, leave exactly the tables of one run over all."""
    assert_same_tables(snapshot(nightly_db), full_run)


def test_nightly_runs_are_incremental_and_count_late_events(nightly_db):
    """After the first run, a run re-sessionises only some persons; the last day's run
    reports day one's late events (3 days behind the newest event, beyond late_days=3 only
    for those more than 3 days old)."""
    con = duckdb.connect(str(nightly_db), read_only=True)
    try:
        runs = pl.from_arrow(
            con.sql(
                "select run_id, mode, n_persons_refreshed, n_late_events from raw.runs "
                "order by run_id"
            ).to_arrow_table()
        )
        n_persons = con.sql("select count(distinct person_id) from marts.sessions").fetchall()
    finally:
        con.close()
    assert runs["mode"].to_list() == ["full", "incremental", "incremental", "incremental"]
    assert all(0 < n < n_persons[0][0] for n in runs["n_persons_refreshed"][1:])
    assert runs["n_late_events"][:3].to_list() == [0, 0, 0]


def test_late_events_beyond_late_days_are_counted(days, tmp_path):
    """With late_days = 1, day one's events delivered with day four are late; with the
    default 3 the same events (at most ~3.9 days old) are fewer or none."""
    config = tmp_path / "journeymap.toml"
    config.write_text("[sessions]\nlate_days = 1\n", encoding="utf-8")
    db = tmp_path / "db.duckdb"
    for day in days:
        run_day(db, day, extra=("--config", str(config)))
    late = last_run(db)["n_late_events"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        (expected,) = con.sql(
            """
            select count(*) from raw.events
            where run_id = 4
                and ts < (select max(ts) from raw.events where run_id < 4) - interval 1 day
            """
        ).fetchall()[0]
    finally:
        con.close()
    assert late == expected > 0


@pytest.mark.parametrize("partition_events", [500, 2500])
def test_partitions_do_not_change_the_result(days, full_run, tmp_path, partition_events):
    """With small partitions, a full run and daily incremental runs both give exactly the
    one-pass tables: no person is ever split, and the journey marts merged from partitions of
    sessions (taken while sessionising in a full run, read back in an incremental one) equal
    those of one pass. 500 events make about 16 partitions, which are dealt into files in one
    scan; 2500 make a few, each read from the database by its own scan."""
    config = tmp_path / "journeymap.toml"
    config.write_text(f"[sessions]\npartition_events = {partition_events}\n", encoding="utf-8")
    full = tmp_path / "full.duckdb"
    result = journeymap(
        "run",
        *[a for d in days for a in ("--input", d)],
        "--db",
        full,
        "--config",
        config,
        "--log-format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    parts = [json.loads(line) for line in result.stderr.splitlines()]
    started = [r for r in parts if r["event"] == "partition_started"]
    n_parts = max(r["n_parts"] for r in started if r["stage"] == "sessionise")
    if partition_events == 500:
        assert n_parts >= SPILL_PARTITIONS
    else:
        assert 1 < n_parts < SPILL_PARTITIONS
    assert_same_tables(snapshot(full), full_run)
    daily, journey_parts = tmp_path / "daily.duckdb", []
    for day in days:
        result = journeymap(
            "run", "--input", day, "--db", daily, "--config", config, "--log-format", "json"
        )
        assert result.returncode == 0, result.stderr
        journey_parts += [
            r["n_parts"]
            for r in map(json.loads, result.stderr.splitlines())
            if r["event"] == "partition_started" and r["stage"] == "journeys"
        ]
    # Incremental runs read every stored journey back, partition by partition.
    assert max(journey_parts) > 1
    assert_same_tables(snapshot(daily), full_run)


@pytest.mark.parametrize("batch_rows", [250_000, 1_000])
def test_spilled_partitions_give_back_every_stored_event(days, tmp_path, batch_rows):
    """Dealt into 4 files from batches of 250k rows or of 1,000 (each partition's shares
    held until they make a write), the partitions read back hold every stored event once,
    typed as `read_events` gives them (low-cardinality text as dictionary codes), and no
    device in two."""
    from pipeline import sessionize, store

    db = tmp_path / "journeymap.duckdb"
    run_day(db, *days)
    con = store.connect(db)
    try:
        groups = sessionize.device_groups(store.device_users(con, refresh_only=False))
        folder = tmp_path / "spill"
        store.write_partitions(con, folder, groups, 4, refresh_only=False, batch_rows=batch_rows)
        parts = [store.read_partition(folder, k).collect() for k in range(4)]
        stored = store.read_events(con).collect()
    finally:
        con.close()
    back = pl.concat(parts)
    assert back.schema == stored.schema
    assert_frame_equal(back.sort("event_id"), stored.sort("event_id"), check_exact=True)
    devices = [set(part["anonymous_id"]) for part in parts]
    assert sum(map(len, devices)) == len(set().union(*devices))
    write_rows = store.spill_write_rows(4)
    for k in range(4):
        with ipc.open_stream(store._partition_file(folder, k)) as spilled:
            as_codes = pa.types.is_dictionary(spilled.schema.field("user_agent").type)
            writes = [batch.num_rows for batch in spilled]
        assert as_codes
        # Every write but a partition's last holds at least write_rows rows.
        assert sum(writes) == parts[k].height
        assert all(n >= write_rows for n in writes[:-1])
        assert writes[-1] > 0


def test_spill_writes_split_the_held_rows_within_their_bounds():
    """500k held rows split evenly, a write holding 20k to 50k rows: 50k for 4 partitions,
    25k for 20, 20k for 200 (the held rows then grow to 4M)."""
    from pipeline import store

    assert [store.spill_write_rows(n) for n in (4, 10, 20, 25, 200)] == [
        50_000,
        50_000,
        25_000,
        20_000,
        20_000,
    ]


def test_rerunning_a_day_changes_nothing(nightly_db, days, tmp_path):
    """Loading day two again: every row is a duplicate, no person is recomputed, no table
    changes."""
    db = tmp_path / "copy.duckdb"
    db.write_bytes(nightly_db.read_bytes())
    before = snapshot(db)
    run_day(db, days[1])
    run = last_run(db)
    assert (run["status"], run["mode"], run["n_accepted"], run["n_persons_refreshed"]) == (
        "ok",
        "incremental",
        0,
        0,
    )
    assert run["n_read"] == run["n_duplicates"] + run["n_quarantined"]
    assert_same_tables(snapshot(db), before)


def test_days_out_of_order_converge_to_the_full_run(days, full_run, tmp_path):
    """Days 3, 1, 4, 2 (day four carrying day one's late events) give the full run's tables."""
    db = tmp_path / "shuffled.duckdb"
    for i in (2, 0, 3, 1):
        run_day(db, days[i])
    assert_same_tables(snapshot(db), full_run)


def test_full_refresh_rebuilds_to_the_same_tables(nightly_db, full_run, tmp_path):
    """--full-refresh without new input recomputes every person from the stored events and
    changes nothing that was right."""
    db = tmp_path / "refresh.duckdb"
    db.write_bytes(nightly_db.read_bytes())
    result = journeymap("run", "--db", db, "--full-refresh", "--quiet")
    assert result.returncode == 0, result.stderr
    assert last_run(db)["mode"] == "full"
    assert_same_tables(snapshot(db), full_run)


# ------------------------------------------------------------------------ crash safety


@pytest.fixture(scope="module")
def two_days(days, tmp_path_factory) -> tuple[Path, dict[str, pl.DataFrame], int]:
    """A database after day one (the state a killed run must leave), and the tables after
    day two (what the next run must reach)."""
    root = tmp_path_factory.mktemp("two_days")
    after_one = root / "after_one.duckdb"
    run_day(after_one, days[0])
    after_two = root / "after_two.duckdb"
    after_two.write_bytes(after_one.read_bytes())
    run_day(after_two, days[1])
    return after_one, snapshot(after_two), last_run(after_one)["run_id"]


def kill_run_at(db: Path, day: Path, point: str, *, may_finish: bool = False) -> None:
    """Start `journeymap run` and SIGKILL it as soon as its JSON log reaches `point` (an
    event name or a stage name); with `may_finish` the run may complete before the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--input", str(day), "--db", str(db)]
        + ["--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stderr:
        record = json.loads(line)
        seen.append(record.get("stage") or record["event"])
        if point in (record["event"], record.get("stage")):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stderr.close()
    expected = (-signal.SIGKILL, 0) if may_finish else (-signal.SIGKILL,)
    assert proc.returncode in expected, f"the run ended before {point}: {seen}"


# batch_loaded: inside the load transaction; sessionise: while persons are re-sessionised;
# journeys: while the marts are rewritten in the work file. Each stage lasts far longer than
# the kill takes to land.
@pytest.mark.parametrize("point", ["batch_loaded", "sessionise", "journeys"])
def test_a_killed_run_leaves_the_previous_state_and_the_next_run_completes(
    two_days, days, tmp_path, point
):
    """SIGKILL at `point`: the database is exactly as after day one (no run recorded), only a
    stale work file remains; the next run removes it and reaches the day-two tables."""
    after_one, expected_after_two, runs_after_one = two_days
    db = tmp_path / "journeymap.duckdb"
    db.write_bytes(after_one.read_bytes())
    before = snapshot(db)

    kill_run_at(db, days[1], point)

    assert_same_tables(snapshot(db), before)
    assert last_run(db)["run_id"] == runs_after_one
    assert work_files(db), "the killed run left no work file: did it write the database?"
    run_day(db, days[1])
    assert work_files(db) == []
    assert_same_tables(snapshot(db), expected_after_two)


# store: views and counts, then commit, checkpoint and rename follow within milliseconds, so
# the kill may land before or after the rename.
@pytest.mark.parametrize("point", ["store", "publish"])
def test_a_run_killed_near_the_rename_leaves_one_whole_state(two_days, days, tmp_path, point):
    """Killed around the rename: the database is either day one's or day two's, whole, and
    the next run reaches day two's tables."""
    after_one, expected_after_two, _ = two_days
    db = tmp_path / "journeymap.duckdb"
    db.write_bytes(after_one.read_bytes())
    before = snapshot(db)

    kill_run_at(db, days[1], point, may_finish=True)

    state = snapshot(db)
    try:
        assert_same_tables(state, before)
    except AssertionError:
        assert_same_tables(state, expected_after_two)
    run_day(db, days[1])
    assert_same_tables(snapshot(db), expected_after_two)


def test_a_second_writer_is_refused_while_a_run_holds_the_lock(two_days, days, tmp_path):
    """Two overlapping runs: the second exits 3 at once, naming the other run; the first
    (paused meanwhile) completes."""
    after_one, expected_after_two, _ = two_days
    db = tmp_path / "journeymap.duckdb"
    db.write_bytes(after_one.read_bytes())
    first = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--input", str(days[1]), "--db", str(db)]
        + ["--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in first.stderr:
        if json.loads(line).get("event") == "run_started":
            break
    # Frozen while it holds the lock, so the overlap does not depend on timing.
    first.send_signal(signal.SIGSTOP)
    try:
        second = journeymap("run", "--input", days[2], "--db", db)
    finally:
        first.send_signal(signal.SIGCONT)
    first.stderr.read()
    first.stderr.close()
    assert first.wait(timeout=120) == 0
    assert second.returncode == 3
    assert "another journeymap run is writing" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert_same_tables(snapshot(db), expected_after_two)


# ---------------------------------------------------------------------------- readers

# A reader that keeps one read-only connection open for its whole life, as a notebook does.
HOLDER = r"""
import json, sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
query = "select (select count(*) from raw.events), (select max(run_id) from raw.runs)"
print(json.dumps(con.execute(query).fetchall()[0]), flush=True)
sys.stdin.readline()
print(json.dumps(con.execute(query).fetchall()[0]), flush=True)
"""

# A reader that opens the database afresh again and again, as dashboards and shells do,
# checking every time that what it sees is one whole run: stored events match the counts of
# the successful runs, and the sessions match the last successful run's count.
POLLER = r"""
import json, os, sys, time, duckdb
db, stop = sys.argv[1], sys.argv[2]
query = '''
    select
        (select count(*) from raw.events)
            = (select sum(n_accepted) from raw.runs where status = 'ok'),
        (select count(*) from marts.sessions)
            = (select n_sessions from raw.runs where status = 'ok' order by run_id desc limit 1),
        (select max(run_id) from raw.runs)
'''
seen, errors, final = [], [], False
while not final:
    final = os.path.exists(stop)
    try:
        con = duckdb.connect(db, read_only=True)
        seen.append(con.execute(query).fetchall()[0])
        con.close()
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")
    time.sleep(0.005)
print(json.dumps({"seen": seen, "errors": errors}), flush=True)
"""


def test_readers_never_see_half_a_run_nor_block_it(two_days, days, tmp_path):
    """While a reader holds the database open and another keeps reopening it, a run
    completes; the holder keeps its snapshot, every reopened view is one whole run, and the
    new run is visible once it is published."""
    after_one, expected_after_two, runs_after_one = two_days
    db = tmp_path / "journeymap.duckdb"
    db.write_bytes(after_one.read_bytes())
    stop = tmp_path / "stop"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(db), str(stop)], stdout=subprocess.PIPE, text=True
    )
    held_before = json.loads(holder.stdout.readline())
    time.sleep(0.3)  # let the poller see the old state a few times

    run_day(db, days[1])

    stop.touch()
    polled = json.loads(poller.communicate(timeout=60)[0])
    held_after = json.loads(holder.communicate("\n", timeout=60)[0])
    assert held_after == held_before, "the open connection saw the run change under it"
    assert polled["errors"] == []
    assert all(events_ok and sessions_ok for events_ok, sessions_ok, _ in polled["seen"])
    run_ids = [run_id for _, _, run_id in polled["seen"]]
    assert run_ids[0] == runs_after_one and run_ids[-1] == runs_after_one + 1
    assert_same_tables(snapshot(db), expected_after_two)


def test_a_killed_runs_leftover_folders_are_cleared(days, tmp_path):
    """A run killed while DuckDB had spilled to disk leaves its folder beside the database
    (`.<db>.run-<pid>.tmp`); the next run removes it rather than failing on it."""
    db = tmp_path / "j.duckdb"
    leftover = tmp_path / ".j.duckdb.run-99999.tmp"
    leftover.mkdir()
    (leftover / "duckdb_temp_storage-0.tmp").write_bytes(b"half written")
    run_day(db, days[0])
    assert not leftover.exists()
    assert last_run(db)["status"] == "ok"
