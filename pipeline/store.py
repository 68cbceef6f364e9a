"""Store: the only module that opens DuckDB.

Layers: `raw` (events, quarantine, runs, run_files, settings) → `staging` (views) → `marts`
(sessions, session_steps, journey marts, and views from `sql/`).

Readers and the nightly writer never meet in one file. A run takes `<db>.lock`, copies the
published database to a private work file beside it, writes there (committing batch by batch,
so memory stays bounded), checkpoints, and renames the work file over the published one
(`publish`). A rename is atomic: a reader that opened the database read-only keeps reading the
state it opened, a reader that opens it later sees the whole new run, and nobody ever sees half
a run. A run killed at any point leaves only a stale work file, which the next run deletes.

Two keys are assigned here, in SQL, because they need a stable hash (Polars' hash is only
stable within one Polars version) and the database's salt:

- `anonymous_id` of an access-log visitor = md5(salt | IP | user agent); the IP never
  reaches a table;
- `event_id` (unless the source gave one) = md5 of the event's content, so exact duplicates
  share an id, whether in one file, across files, or across nightly runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.errors import SqlError, StoreError
from pipeline.schemas import EVENTS, JOURNEY_STEPS, SESSION_STEPS, SESSIONS, UTC_US

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SQL_LAYERS = ("staging", "marts", "macros")
# DuckDB's memory cap for reading commands (reports, SQL): above it DuckDB spills to disk.
DUCKDB_MEMORY_LIMIT = "1GB"
# The cap of a run's own connection, which works beside Polars' frames of a batch being
# loaded or a partition being sessionised. A run appends; DuckDB's cache above this held
# table blocks it did not need: at 10M events a run took as long with 256 MB as with 1 GB
# (84 s and 83 s), peaking at 2.3 GB instead of 2.8 GB.
RUN_MEMORY_LIMIT = "256MB"

_DUCK_TYPES = {
    pl.String: "varchar",
    pl.Int16: "smallint",
    pl.Int64: "bigint",
    pl.UInt32: "uinteger",
    pl.Float64: "double",
    pl.Boolean: "boolean",
}


def _duck_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Datetime):
        return "timestamptz"
    return _DUCK_TYPES[type(dtype)]


def _columns_ddl(columns: dict[str, pl.DataType]) -> str:
    return ",\n    ".join(f"{name} {_duck_type(dtype)}" for name, dtype in columns.items())


def connect(
    path: str | Path, read_only: bool = False, memory_limit: str = DUCKDB_MEMORY_LIMIT
) -> duckdb.DuckDBPyConnection:
    """Open (or create) the database file; a clear `StoreError` if that is impossible."""
    path = Path(path)
    if not read_only and path.parent and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"cannot create directory {path.parent} for --db: {err.strerror}"
            ) from err
    if read_only and not path.exists():
        raise StoreError(f"database {path} does not exist: run `journeymap run --db {path}` first")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except (duckdb.IOException, duckdb.Error, OSError) as err:
        first = str(err).splitlines()[0]
        raise StoreError(
            f"cannot open database {path} ({first}): choose a writable --db FILE"
        ) from err
    con.execute("set TimeZone = 'UTC'")
    # Polars' frames share the process: capped, DuckDB spills to disk instead of taking the
    # 80 % of RAM it would by default.
    con.execute(f"set memory_limit = '{memory_limit}'")
    con.execute("set preserve_insertion_order = false")
    return con


# --------------------------------------------------------------------- the run's work file


@dataclass
class Workspace:
    """A run's private copy of the database, held under the database's lock."""

    db: Path
    work_path: Path
    lock_fd: int


def connect_work(workspace: Workspace) -> duckdb.DuckDBPyConnection:
    """The run's connection to its work file: capped at RUN_MEMORY_LIMIT, keeping up to that
    much of the blocks it frees, and checkpointing appended row groups without merging them
    (deletes are vacuumed by `_vacuum`)."""
    con = connect(workspace.work_path, memory_limit=RUN_MEMORY_LIMIT)
    # Kept rather than handed back to malloc and the system: a run appends block after block,
    # and memory fresh from the kernel costs CPU time. At 10M events: 4.0M page faults instead
    # of 5.5M, 10 s of system time instead of 13 s, the run 59.4-60.5 s against 60.1-63.5 s;
    # peaks of 1.45-1.56 GB in nine runs against 1.45-1.52 GB in four (see bench/NOTES.md).
    con.execute(f"set block_allocator_memory = '{RUN_MEMORY_LIMIT}'")
    # Appended row groups are checkpointed as they are, not merged with their neighbours:
    # a partition's sessions fill about half a row group, and by default every checkpoint
    # merged them with the next partition's, compressing the same sessions again and again.
    # At 10M events, 20 partitions' inserts took 25 s with the merges and 12 s without, and
    # the file was no larger (see bench/NOTES.md). Deleted rows still need the merges:
    # `_vacuum` runs them after a partial delete.
    con.execute("set max_vacuum_tasks = 0")
    return con


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def lock_path(db: str | Path) -> Path:
    db = Path(db)
    return db.with_name(db.name + ".lock")


def open_workspace(db: str | Path) -> Workspace:
    """Lock `db` for this run and copy it to a fresh work file (the run writes only there).

    A second run on the same database gets a `StoreError` at once instead of waiting: a
    scheduler should see overlapping runs, not queue them silently.
    """
    db = Path(db)
    if db.is_dir():
        raise StoreError(
            f"--db {db} is a directory: give a database file such as {db}/journeymap.duckdb"
        )
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise StoreError(
            f"cannot create {lock_path(db)} next to --db: {err.strerror}; choose a writable --db FILE"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"another journeymap run is writing {db} ({holder}): wait for it to finish, "
            "or schedule runs so that they do not overlap"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC".encode(), 0)
    # Work files of runs that were killed: nobody else can hold them while we hold the lock.
    for stale in db.parent.glob(f".{glob.escape(db.name)}.run-*"):
        if stale.is_dir():  # DuckDB's spill folder, or a run's partitions
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    workspace = Workspace(db, db.with_name(f".{db.name}.run-{os.getpid()}"), fd)
    try:
        reset_workspace(workspace)
    except StoreError:
        release_workspace(workspace)
        raise
    return workspace


def reset_workspace(ws: Workspace) -> None:
    """(Re)make the work file as a copy of the published database (none if there is none)."""
    for leftover in (ws.work_path, _wal(ws.work_path)):
        leftover.unlink(missing_ok=True)
    try:
        if ws.db.exists():
            shutil.copyfile(ws.db, ws.work_path)
            if _wal(ws.db).exists():
                shutil.copyfile(_wal(ws.db), _wal(ws.work_path))
    except OSError as err:
        raise StoreError(f"cannot copy {ws.db} to its work file: {err.strerror}") from err


def publish(ws: Workspace) -> None:
    """Atomically replace the published database with the (closed) work file."""
    with open(ws.work_path, "rb+") as f:
        os.fsync(f.fileno())
    # A WAL beside the published file belongs to the old file (someone wrote to it outside
    # journeymap); its content was copied into the work file, and left in place it would be
    # replayed onto the new one.
    _wal(ws.db).unlink(missing_ok=True)
    os.replace(ws.work_path, ws.db)
    dir_fd = os.open(ws.db.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def release_workspace(ws: Workspace) -> None:
    """Delete an unpublished work file and release the lock (the lock file stays: removing it
    would let two runs lock two different files)."""
    for leftover in (ws.work_path, _wal(ws.work_path)):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fcntl.flock(ws.lock_fd, fcntl.LOCK_UN)
    os.close(ws.lock_fd)


def running_writer(db: str | Path) -> str | None:
    """Who holds the lock of `db` (a description), or None when no run is writing it."""
    path = lock_path(db)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Checkpoint and close: the file then holds everything, with no WAL beside it."""
    with contextlib.suppress(duckdb.Error):
        con.execute("checkpoint")
    con.close()


# ------------------------------------------------------------------------------- schema


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schemas and raw tables if they are missing (idempotent)."""
    for schema in ("raw", "staging", "marts"):
        con.execute(f"create schema if not exists {schema}")
    events_cols = {**EVENTS.columns, "run_id": pl.Int64(), "ingested_at": UTC_US}
    con.execute(f"create table if not exists raw.events (\n    {_columns_ddl(events_cols)}\n)")
    con.execute(
        """
        create table if not exists raw.quarantine (
            source varchar, source_line bigint, raw varchar, reason varchar,
            run_id bigint, ingested_at timestamptz
        )"""
    )
    con.execute(
        """
        create table if not exists raw.runs (
            run_id bigint primary key, started_at timestamptz, ended_at timestamptz,
            status varchar, version varchar, inputs varchar[],
            n_read bigint, n_accepted bigint, n_duplicates bigint, n_quarantined bigint,
            quarantined_by_reason json, nulled_fields json,
            n_persons bigint, n_sessions bigint, n_bot_sessions bigint,
            stage_seconds json, error varchar
        )"""
    )
    # Columns added after the first release: older databases gain them in place.
    for column, dtype in RUNS_ADDED_COLUMNS.items():
        con.execute(f"alter table raw.runs add column if not exists {column} {dtype}")
    con.execute(
        """
        create table if not exists raw.run_files (
            run_id bigint, source varchar, format varchar, n_bytes bigint,
            n_read bigint, n_accepted bigint, n_duplicates bigint, n_quarantined bigint
        )"""
    )
    con.execute("create table if not exists raw.settings (key varchar primary key, value varchar)")
    con.execute(
        f"create table if not exists marts.sessions (\n    {_columns_ddl(SESSIONS.columns)}\n)"
    )
    con.execute(
        f"create table if not exists marts.session_steps (\n    {_columns_ddl(SESSION_STEPS.columns)}\n)"
    )
    con.execute("alter table marts.session_steps add column if not exists anonymous_id varchar")
    if has_table(con, "marts.journey_steps") and not _scalar(
        con,
        "select count(*) from duckdb_tables() where schema_name = 'marts' "
        "and table_name = 'journey_steps'",
    ):
        con.execute("drop view marts.journey_steps")
    con.execute(
        f"create table if not exists marts.journey_steps (\n    {_columns_ddl(JOURNEY_STEPS.columns)}\n)"
    )


RUNS_ADDED_COLUMNS = {
    "mode": "varchar",
    "n_late_events": "bigint",
    "n_persons_refreshed": "bigint",
}


def setting(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    return _scalar(con, "select value from raw.settings where key = ?", [key])


def set_setting(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("insert or replace into raw.settings values (?, ?)", [key, value])


def visitor_salt(con: duckdb.DuckDBPyConnection) -> str:
    """The salt for access-log visitor ids, created once per database and kept there so ids
    stay stable across nightly runs."""
    salt = _scalar(con, "select value from raw.settings where key = 'visitor_salt'")
    if salt is not None:
        return salt
    salt = secrets.token_hex(16)
    con.execute("insert into raw.settings values ('visitor_salt', ?)", [salt])
    return salt


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> Iterator[None]:
    """`frame` visible to DuckDB as the view `name` for the block, as Arrow. Numbers pass
    without a copy; text is copied from Polars' string views into large_string, which
    DuckDB inserts faster than the views (sessions of two partitions: 1.0 s against 1.3 s)."""
    con.register(name, frame.to_arrow())
    try:
        yield
    finally:
        con.unregister(name)


def next_run_id(con: duckdb.DuckDBPyConnection) -> int:
    return _scalar(con, "select coalesce(max(run_id), 0) + 1 from raw.runs")


# ----------------------------------------------------------------------------- loading


def stage_batch(
    con: duckdb.DuckDBPyConnection,
    events: pl.DataFrame,
    quarantine: pl.DataFrame,
    run_id: int,
    ingested_at: datetime,
) -> tuple[int, int]:
    """Key one ingested batch, insert its new events and its rejects; (accepted, duplicates).

    A duplicate is an event whose `event_id` is already stored (by an earlier run, or by an
    earlier batch of this one) or appears earlier in the batch. Of identical events the one
    read first is kept. Inserting batch by batch keeps memory bounded by the batch, not by the
    run.
    """
    if quarantine.height:
        with _registered(con, "batch_quarantine", quarantine):
            # A file loaded again rejects the same rows again: they are counted in this run's
            # figures but stored once.
            con.execute(
                """
                insert into raw.quarantine
                select source, source_line, raw, reason, ?, ?
                from batch_quarantine as new
                where not exists (
                    select 1 from raw.quarantine as stored
                    where stored.source = new.source
                        and stored.source_line is not distinct from new.source_line
                        and stored.reason = new.reason
                        and stored.raw is not distinct from new.raw
                )
                """,
                [run_id, ingested_at],
            )
    if not events.height:
        return 0, 0
    # A device seen only in an access log is keyed by its salted (address, user agent).
    anonymous_id = "coalesce(anonymous_id, md5($salt || chr(31) || visitor_key))"
    renamed = {"event_id": "keys.event_id", "anonymous_id": f"{anonymous_id} as anonymous_id"}
    selected = ", ".join(renamed.get(c, c) for c in EVENTS.columns)
    salt = visitor_salt(con)
    with _registered(con, "batch_events", events):
        # Keys first, into a narrow temp table (source_line, event_id), then one group-by picks
        # the first of each key and the rows are joined back by line: DuckDB inserts a windowed
        # (row_number) result several times slower (3.3 s vs 1.1 s for 1M events), and copying
        # every column into the temp table costs a fifth more than the join.
        con.execute(
            f"""
            create or replace temp table batch_keys as
            select
                source_line,
                coalesce(event_id, md5(concat_ws(chr(31),
                    epoch_us(ts)::varchar, {anonymous_id}, coalesce(user_id, ''), event_type,
                    url, coalesce(host, ''), coalesce(referrer, ''), coalesce(user_agent, ''),
                    coalesce(status::varchar, ''), coalesce(revenue::varchar, '')))) as event_id
            from batch_events
            """,
            {"salt": salt},
        )
        since, until = _duplicate_span(events)
        n_accepted = con.execute(
            f"""
            insert into raw.events
            with first_seen as (
                select event_id, min(source_line) as source_line
                from batch_keys
                group by event_id
            ),
            -- Only stored events in the batch's time span can be duplicates (see
            -- _duplicate_span): DuckDB skips the row groups of other days by their min/max,
            -- so a nightly load does not rescan the history.
            stored_in_span as (
                select event_id from raw.events where ts between $since and $until
            ),
            fresh as (
                select * from first_seen
                where not exists (
                    select 1 from stored_in_span as stored
                    where stored.event_id = first_seen.event_id
                )
            )
            select {selected}, $run_id as run_id, $ingested_at as ingested_at
            from batch_events
            join fresh as keys using (source_line)
            """,
            {
                "salt": salt,
                "since": since,
                "until": until,
                "run_id": run_id,
                "ingested_at": ingested_at,
            },
        ).fetchall()[0][0]
        con.execute("drop table batch_keys")
    return n_accepted, events.height - n_accepted


def _duplicate_span(events: pl.DataFrame) -> tuple[datetime, datetime]:
    """The ts range in which stored duplicates of `events` can lie: the batch's own, since a
    content-hashed event_id includes ts; unbounded when the source gave ids, as a re-sent
    event may carry a new timestamp."""
    if events["event_id"].is_not_null().any():
        return datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    return events["ts"].min(), events["ts"].max()


# Few distinct values, many rows: dictionary-encoded in memory, one copy per distinct value.
_CATEGORICAL = (
    "event_type",
    "host",
    "referrer",
    "user_agent",
    "utm_source",
    "utm_medium",
    "utm_campaign",
)


def drop_run_events(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Take back the events a run staged (its quarantined rows stay)."""
    con.execute("delete from raw.events where run_id = ?", [run_id])
    _vacuum(con)


def _vacuum(con: duckdb.DuckDBPyConnection) -> None:
    """Checkpoint with DuckDB's vacuum on, whatever the connection's setting (the run's is
    off, see `connect_work`): rows deleted from a row group are reclaimed only by it."""
    (tasks,) = con.execute("select current_setting('max_vacuum_tasks')").fetchone()
    con.execute("reset max_vacuum_tasks")
    try:
        con.execute("checkpoint")
    finally:
        con.execute(f"set max_vacuum_tasks = {int(tasks)}")


def count_late_events(con: duckdb.DuckDBPyConnection, run_id: int, late_days: int) -> int:
    """Events of this run older than `late_days` before the newest event stored earlier."""
    return _scalar(
        con,
        """
        select count(*) from raw.events
        where run_id = ?
            and ts < (select max(ts) from raw.events where run_id < ?) - to_days(?)
        """,
        [run_id, run_id, late_days],
    )


def scope_refresh(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    """Find the persons whose sessions this run's new events can change; returns how many.

    A new event of device D can change: the persons D's steps belonged to so far (identity
    stitching may move D to another person), D's own anonymous person, and the person of
    every user id D ever logged in with. Those persons are re-sessionised whole from every
    event of every device that has ever been part of them, so their sessions come out exactly
    as in a full run: late events, sessions crossing midnight and new logins included.
    Creates the temp tables `refresh_persons` and `refresh_devices`.
    """
    con.execute(
        "create or replace temp table touched_devices as "
        "select distinct anonymous_id from raw.events where run_id = ?",
        [run_id],
    )
    con.execute(
        """
        create or replace temp table refresh_persons as
        select distinct sessions.person_id
        from marts.session_steps as steps
        join marts.sessions as sessions using (session_id)
        where steps.anonymous_id in (select anonymous_id from touched_devices)
        union
        select 'a:' || anonymous_id from touched_devices
        union
        select distinct 'u:' || user_id from raw.events
        where user_id is not null
            and anonymous_id in (select anonymous_id from touched_devices)
        """
    )
    con.execute(
        """
        create or replace temp table refresh_devices as
        select anonymous_id from touched_devices
        union
        select distinct steps.anonymous_id
        from marts.session_steps as steps
        join marts.sessions as sessions using (session_id)
        where sessions.person_id in (select person_id from refresh_persons)
        """
    )
    return _scalar(con, "select count(*) from refresh_persons")


def refresh_persons(con: duckdb.DuckDBPyConnection) -> pl.Series:
    """The person ids chosen by `scope_refresh`."""
    return query(con, "select person_id from refresh_persons")["person_id"]


def _devices_in_scope(refresh_only: bool) -> str:
    return (
        "select anonymous_id from refresh_devices"
        if refresh_only
        else "select distinct anonymous_id from raw.events"
    )


def count_events_in_scope(con: duckdb.DuckDBPyConnection, *, refresh_only: bool) -> int:
    """Stored events a refresh must sessionise: all, or those of `scope_refresh`'s devices."""
    where, params = _events_in_scope(refresh_only=refresh_only)
    return _scalar(con, f"select count(*) from raw.events{where}", params)


def _events_in_scope(*, refresh_only: bool, part: int | None = None) -> tuple[str, list]:
    """The `where` clause (and its parameters) of `raw.events` that `read_events` and
    `count_events_in_scope` select: see `read_events`."""
    filters, params = [], []
    if refresh_only:
        filters.append("anonymous_id in (select anonymous_id from refresh_devices)")
    if part is not None:
        filters.append(
            "anonymous_id in (select anonymous_id from partition_devices where part = ?)"
        )
        params.append(part)
    return _where(filters), params


def device_users(con: duckdb.DuckDBPyConnection, *, refresh_only: bool) -> pl.DataFrame:
    """Distinct (anonymous_id, user_id) pairs of logged-in events in the refresh's scope."""
    # The scope of `read_events`: a full refresh filters no devices (a filter by the distinct
    # devices of 100M events cost more than the pairs themselves).
    where, params = _events_in_scope(refresh_only=refresh_only)
    return query(
        con,
        "select distinct anonymous_id, user_id"
        f" from (select * from raw.events{where}) where user_id is not null",
        params,
    )


def plan_partitions(
    con: duckdb.DuckDBPyConnection, groups: pl.DataFrame, n_parts: int, *, refresh_only: bool
) -> None:
    """Deal the devices in scope into `n_parts` partitions (temp table `partition_devices`),
    each device `group` (see `sessionize.device_groups`) whole into one, so that every
    person's events meet in one partition."""
    with _registered(con, "device_groups", groups):
        con.execute(
            f"""
            create or replace temp table partition_devices as
            select
                devices.anonymous_id,
                {_partition_of("devices.anonymous_id")} as part,
            from ({_devices_in_scope(refresh_only)}) as devices
            left join device_groups using (anonymous_id)
            """,
            {"n_parts": n_parts},
        )


def _partition_of(anonymous_id: str) -> str:
    """SQL for the partition of the device `anonymous_id`, with `device_groups` joined and
    `$n_parts` a parameter: its group's, so that a person's devices meet, else its own."""
    return f'hash(coalesce(device_groups."group", {anonymous_id})) % $n_parts'


def read_events(
    con: duckdb.DuckDBPyConnection,
    batch_rows: int = 1_000_000,
    *,
    refresh_only: bool = False,
    part: int | None = None,
) -> pl.LazyFrame:
    """Stored events as a Polars frame, streamed from DuckDB in Arrow batches: all of them, or
    (`refresh_only`) those of the devices `scope_refresh` chose; with `part`, only the devices
    `plan_partitions` dealt into that partition.

    Low-cardinality text columns become Categorical batch by batch, so the peak memory is
    one batch of plain strings, not the whole table.
    """
    where, params = _events_in_scope(refresh_only=refresh_only, part=part)
    reader = con.sql(
        f"select {', '.join(_SESSIONISE_COLUMNS)} from raw.events{where}", params=params
    ).to_arrow_reader(batch_rows)
    parts = [_as_read(pl.from_arrow(batch)) for batch in reader]
    if not parts:
        return pl.DataFrame(schema=_SESSIONISE_COLUMNS).lazy()
    return pl.concat(parts, rechunk=False).lazy()


def _as_read(events: pl.DataFrame) -> pl.DataFrame:
    """Events typed as sessionise reads them: low-cardinality text as Categorical."""
    return events.with_columns(pl.col(_CATEGORICAL).cast(pl.Categorical), pl.col("ts").cast(UTC_US))


# Rows `write_partitions` takes from DuckDB and deals at once. The batch and its copies (Arrow,
# Polars, dealt) are most of the copy's memory: at 10M events into 20 partitions, batches of
# 1M rows peaked at 2.4 GB, of 250k at 1.2 GB, and wrote as fast (11-13 s).
SPILL_BATCH_ROWS = 250_000
# Rows all partitions' held shares come to at most, split evenly between the partitions...
SPILL_HELD_ROWS = 500_000
# ...but a partition's write holds at least SPILL_MIN_WRITE_ROWS and at most SPILL_WRITE_ROWS
# rows (its last may hold fewer): small writes cost more to write and to read back, and each
# carries its own dictionaries.
SPILL_WRITE_ROWS = 50_000
SPILL_MIN_WRITE_ROWS = 20_000


def spill_write_rows(n_parts: int) -> int:
    """Rows of one partition `write_partitions` writes at once (the last write may be fewer):
    25k for the 20 partitions of 10M events, 20k from 25 partitions on, so the held shares
    then grow with the run (4M rows at 100M events, 200 partitions)."""
    return max(SPILL_MIN_WRITE_ROWS, min(SPILL_WRITE_ROWS, SPILL_HELD_ROWS // n_parts))


def write_partitions(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    groups: pl.DataFrame,
    n_parts: int,
    *,
    refresh_only: bool,
    batch_rows: int = SPILL_BATCH_ROWS,
) -> None:
    """Copy the events in scope into one file per partition in `folder`, in one scan of
    `raw.events`: each device `group` (`sessionize.device_groups`) whole in one partition,
    the others by their own id, by the rule of `plan_partitions`.

    With many partitions, `read_events(part=K)` scans every stored event once per partition
    (100M events in 50 partitions: about 400 s of rescans). Here DuckDB streams one scan,
    joined only with the logged-in devices (`groups`, a small table: joined with every
    device, the join spilled the whole table to disk at 100M events), and Polars deals the
    rows. The files are zstd-compressed Arrow streams, read back whole, deleted by the caller:
    half the size of LZ4's, which matters at 100M events, where LZ4's most likely no longer
    fit in the page cache beside the database and came back partly from disk.

    A partition's share of a batch is held until it has `spill_write_rows` rows: with 20
    partitions a 250k-row batch gives each only 12.5k, and small writes cost more to write
    and to read back. Rows are typed as `read_events` gives them before they are dealt:
    low-cardinality text is dealt, written and read back as dictionary codes, not as text. A
    stream, not a file: every write carries the dictionaries of its own rows, which an Arrow
    file cannot. Timed at 10M events dealt into 100 partitions: 11.4-12.6 s to write and
    2.5-2.9 s to read back, 342 MB, against 12.6 s, 4.7 s and 906 MB as 10k-row writes of
    LZ4-compressed text.
    """
    folder.mkdir(parents=True, exist_ok=True)
    where, _ = _events_in_scope(refresh_only=refresh_only)
    columns = ", ".join(f"events.{c}" for c in _SESSIONISE_COLUMNS)
    options = ipc.IpcWriteOptions(compression="zstd")
    writers: dict[int, ipc.RecordBatchStreamWriter] = {}
    held: dict[int, list[pl.DataFrame]] = {}
    write_rows = spill_write_rows(n_parts)

    def write(number: int) -> None:
        table = pl.concat(held.pop(number), rechunk=True).to_arrow()
        if number not in writers:
            path = _partition_file(folder, number)
            writers[number] = ipc.new_stream(path, table.schema, options=options)
        writers[number].write_table(table)

    with _registered(con, "device_groups", groups.select("anonymous_id", "group")):
        reader = con.sql(
            f"""
            select
                {columns},
                {_partition_of("events.anonymous_id")} as part,
            from (select * from raw.events{where}) as events
            left join device_groups using (anonymous_id)
            """,
            params={"n_parts": n_parts},
        ).to_arrow_reader(batch_rows)
        try:
            for batch in _gathered(reader, batch_rows):
                rows = _as_read(pl.from_arrow(batch))
                by_part = rows.partition_by("part", as_dict=True, include_key=False)
                for (number, *_), events in by_part.items():
                    pieces = held.setdefault(number, [])
                    pieces.append(events)
                    if sum(piece.height for piece in pieces) >= write_rows:
                        write(number)
            for number in list(held):
                write(number)
        finally:
            for writer in writers.values():
                writer.close()


def _gathered(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's batches gathered into tables of at least `rows` rows.

    DuckDB hands out batches of about 100k rows whatever size is asked for. `write_partitions`
    holds each partition's share until it makes a write of its own size, so this no longer
    sets the size of a write. It still saves work: one deal (a cast and a partition_by) per
    `rows` rows instead of one per 100k. With 1M-row batches, the copy of 10M events took
    13.0-13.7 s with it and 13.7-14.4 s without (100 partitions), 10.7-11.9 s and
    11.8-11.9 s (10 partitions).
    """
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for batch in reader:
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending >= rows:
            yield pa.Table.from_batches(pending)
            pending, n_pending = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def read_partition(folder: Path, part: int) -> pl.LazyFrame:
    """The events `write_partitions` dealt into partition `part`, typed as `read_events`
    gives them."""
    path = _partition_file(folder, part)
    if not path.exists():
        return pl.DataFrame(schema=_SESSIONISE_COLUMNS).lazy()
    # Read back as one chunk per write; sessionise sorts and joins one chunk faster. Written
    # as `_as_read` types them, the rows come back typed so.
    return pl.read_ipc_stream(path).rechunk().lazy()


def _partition_file(folder: Path, part: int) -> Path:
    return folder / f"part-{part}.arrows"


def spill_folder(con: duckdb.DuckDBPyConnection) -> Path:
    """A folder for a run's temporary files, beside its work file: on the database's disk,
    and removed with the work files of a killed run (`open_workspace`)."""
    path = _scalar(
        con, "select path from duckdb_databases() where database_name = current_database()"
    )
    return Path(f"{path}.partitions")


# What sessionise reads of an event: all but its lineage.
_SESSIONISE_COLUMNS = {
    c: t for c, t in EVENTS.columns.items() if c not in ("source", "source_line")
}


def delete_sessions(con: duckdb.DuckDBPyConnection, *, refresh_only: bool) -> None:
    """Remove the sessions a refresh recomputes, with their steps and journey steps: those of
    the persons `scope_refresh` chose, or (not `refresh_only`) all."""
    affected = (
        "where session_id in (select session_id from marts.sessions where person_id in "
        "(select person_id from refresh_persons))"
        if refresh_only
        else ""
    )
    for name in ("session_steps", "journey_steps"):
        con.execute(f"delete from marts.{name} {affected}")
    con.execute(
        "delete from marts.sessions"
        + (" where person_id in (select person_id from refresh_persons)" if refresh_only else "")
    )
    if refresh_only:
        # Row groups left with no rows are dropped without it.
        _vacuum(con)


def insert_sessions(
    con: duckdb.DuckDBPyConnection,
    sessions: pl.DataFrame,
    session_steps: pl.DataFrame,
    journey_steps: pl.DataFrame,
) -> None:
    """Add recomputed sessions, their steps and journey steps."""
    for name, frame in (
        ("sessions", sessions),
        ("session_steps", session_steps),
        ("journey_steps", journey_steps),
    ):
        with _registered(con, f"new_{name}", frame):
            con.execute(f"insert into marts.{name} by name select * from new_{name}")


def count_journey_steps(con: duckdb.DuckDBPyConnection) -> int:
    return _scalar(con, "select count(*) from marts.journey_steps")


def read_journeys(
    con: duckdb.DuckDBPyConnection,
    *,
    exclude_bots: bool,
    part: int = 0,
    n_parts: int = 1,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(journey_steps, journey sessions) of the stored journeys: all of them, or the sessions
    whose id hashes to `part` of `n_parts`. Steps come in session and step order, which the
    journey functions then need not restore; sessions are only joined, in any order."""
    where = ["hash(session_id) % $n_parts = $part"] if n_parts > 1 else []
    params = {"part": part, "n_parts": n_parts} if n_parts > 1 else None
    sessions = query(
        con,
        "select * from marts.sessions" + _where([*where, "not is_bot"] if exclude_bots else where),
        params,
    )
    steps = query(
        con,
        "select * from marts.journey_steps" + _where(where) + " order by session_id, position",
        params,
    )
    return steps, sessions


def _where(conditions: list[str]) -> str:
    return f" where {' and '.join(conditions)}" if conditions else ""


def mart_counts(con: duckdb.DuckDBPyConnection, *, exclude_bots: bool) -> dict[str, int]:
    """Totals over all stored sessions for the run summary."""
    journey = "not is_bot" if exclude_bots else "true"
    row = con.execute(
        f"""
        select
            count(*),
            count(*) filter (where is_bot),
            count(distinct person_id) filter (where {journey}),
            count(*) filter (where {journey} and is_converted),
        from marts.sessions
        """
    ).fetchall()[0]
    keys = ("n_sessions", "n_bot_sessions", "n_persons", "n_converted_sessions")
    return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}


JOURNEY_MARTS = (
    "transitions",
    "transitions_by_segment",
    "touchpoints",
    "paths",
    "path_lengths",
    "blockers",
)


def replace_journey_marts(con: duckdb.DuckDBPyConnection, marts: dict[str, pl.DataFrame]) -> None:
    """Replace the aggregate journey marts (their shape follows the frames)."""
    for name, frame in marts.items():
        if name not in JOURNEY_MARTS:
            raise ValueError(f"unknown journey mart {name!r}")
        with _registered(con, f"new_{name}", frame):
            con.execute(f"create or replace table marts.{name} as select * from new_{name}")


def create_views(con: duckdb.DuckDBPyConnection, sql_dir: Path = SQL_DIR) -> list[str]:
    """(Re)create every view and macro in `sql/`, layer by layer; returns their names."""
    created = []
    for layer in SQL_LAYERS:
        for path in sorted((sql_dir / layer).glob("*.sql")):
            con.execute(path.read_text(encoding="utf-8"))
            created.append(f"{layer}/{path.stem}")
    return created


# -------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class FileCounts:
    source: str
    format: str
    n_bytes: int
    n_read: int
    n_accepted: int
    n_duplicates: int
    n_quarantined: int


def record_run(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: int,
    started_at: datetime,
    status: str,
    version: str,
    inputs: list[str],
    files: Iterable[FileCounts] = (),
    quarantined_by_reason: dict[str, int] | None = None,
    nulled_fields: dict[str, int] | None = None,
    n_persons: int | None = None,
    n_sessions: int | None = None,
    n_bot_sessions: int | None = None,
    stage_seconds: dict[str, float] | None = None,
    error: str | None = None,
    mode: str | None = None,
    n_late_events: int | None = None,
    n_persons_refreshed: int | None = None,
) -> None:
    files = list(files)
    values = {
        "run_id": run_id,
        "started_at": started_at,
        "ended_at": datetime.now(UTC),
        "status": status,
        "version": version,
        "inputs": inputs,
        "n_read": sum(f.n_read for f in files),
        "n_accepted": sum(f.n_accepted for f in files),
        "n_duplicates": sum(f.n_duplicates for f in files),
        "n_quarantined": sum(f.n_quarantined for f in files),
        "quarantined_by_reason": json.dumps(quarantined_by_reason or {}),
        "nulled_fields": json.dumps(nulled_fields or {}),
        "n_persons": n_persons,
        "n_sessions": n_sessions,
        "n_bot_sessions": n_bot_sessions,
        "stage_seconds": json.dumps({k: round(v, 3) for k, v in (stage_seconds or {}).items()}),
        "error": error,
        "mode": mode,
        "n_late_events": n_late_events,
        "n_persons_refreshed": n_persons_refreshed,
    }
    con.execute(
        f"insert into raw.runs ({', '.join(values)}) values ({', '.join('?' * len(values))})",
        list(values.values()),
    )
    if files:
        con.executemany(
            "insert into raw.run_files values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    run_id,
                    f.source,
                    f.format,
                    f.n_bytes,
                    f.n_read,
                    f.n_accepted,
                    f.n_duplicates,
                    f.n_quarantined,
                ]
                for f in files
            ],
        )


def run_history(con: duckdb.DuckDBPyConnection, limit: int) -> pl.DataFrame:
    """The latest `limit` runs, newest first (columns added later are null for old runs)."""
    runs = query(con, "select * from raw.runs order by run_id desc limit ?", [limit])
    missing = [c for c in RUNS_ADDED_COLUMNS if c not in runs.columns]
    runs = runs.with_columns(pl.lit(None).alias(c) for c in missing)
    return runs.select(
        "run_id",
        "started_at",
        "ended_at",
        seconds=((pl.col("ended_at") - pl.col("started_at")).dt.total_milliseconds() / 1000),
        status="status",
        mode="mode",
        version="version",
        n_read="n_read",
        n_accepted="n_accepted",
        n_duplicates="n_duplicates",
        n_quarantined="n_quarantined",
        n_late_events="n_late_events",
        n_persons_refreshed="n_persons_refreshed",
        n_sessions="n_sessions",
        stage_seconds="stage_seconds",
        inputs="inputs",
        error="error",
    )


def database_overview(con: duckdb.DuckDBPyConnection) -> dict:
    """What the database holds: events and their time span, sessions, quarantined rows."""
    return query(
        con,
        """
        select
            (select count(*) from raw.events) as n_events,
            (select min(ts) from raw.events) as first_event_at,
            (select max(ts) from raw.events) as last_event_at,
            (select count(*) from marts.sessions) as n_sessions,
            (select count(*) from marts.sessions where is_bot) as n_bot_sessions,
            (select count(*) from raw.quarantine) as n_quarantined,
        """,
    ).to_dicts()[0]


def has_table(con: duckdb.DuckDBPyConnection, qualified_name: str) -> bool:
    """Whether `schema.table` exists (as a table or a view)."""
    schema, _, name = qualified_name.partition(".")
    tables = _scalar(
        con,
        "select count(*) from duckdb_tables() where schema_name = ? and table_name = ?",
        [schema, name],
    )
    views = _scalar(
        con,
        "select count(*) from duckdb_views() where schema_name = ? and view_name = ?",
        [schema, name],
    )
    return bool(tables or views)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The first value of a query's first row, or None; the result is read to its end,
    which DuckDB requires before the connection runs anything else."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def query(
    con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None
) -> pl.DataFrame:
    """Run a read query and hand back a Polars frame (no DuckDB object leaves this module)."""
    return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())


# ------------------------------------------------------------------------------ ad-hoc SQL


@dataclass(frozen=True)
class SqlResult:
    """What one statement of a user's SQL gave back (`journeymap sql`).

    `frame` holds the rows (only the first `max_rows` when capped), or is None for a statement
    without rows (`set`, `create temp table`, `copy ... to`); `n_rows` counts every row of the
    result, or the rows such a statement wrote.
    """

    frame: pl.DataFrame | None
    n_rows: int


def sql_statements(con: duckdb.DuckDBPyConnection, script: str) -> list[str]:
    """The statements of `script`, split by DuckDB's own parser: a `;` in a string or a comment
    ends nothing, and a comment alone is no statement. A syntax error raises `SqlError`."""
    try:
        return [statement.query for statement in con.extract_statements(script)]
    except duckdb.Error as err:
        raise _sql_error(err) from err


def run_sql(
    con: duckdb.DuckDBPyConnection, sql: str, max_rows: int | None = None, batch_rows: int = 10_000
) -> SqlResult:
    """Run one statement of a user's SQL; rows past `max_rows` are counted, not kept, so a
    capped result of any size fits in memory.

    Whatever DuckDB refuses becomes a one-line `SqlError`. On a read-only connection that is
    every write to the database; temp tables and `copy ... to 'file'` still work.
    """
    try:
        statements = con.extract_statements(sql)
        if len(statements) != 1:
            raise ValueError(f"run_sql runs one statement, got {len(statements)}")
        kinds = statements[0].expected_result_type
        relation = con.sql(statements[0].query)
        if relation is None or duckdb.ExpectedResultType.QUERY_RESULT not in kinds:
            return SqlResult(None, 0)
        if duckdb.ExpectedResultType.CHANGED_ROWS in kinds:
            # `create table as`, `copy`: DuckDB reports how many rows were written.
            rows = relation.fetchall()
            return SqlResult(None, int(rows[0][0]) if rows and rows[0] else 0)
        reader = relation.to_arrow_reader(batch_rows)
        kept: list[pl.DataFrame] = []
        n_rows = 0
        for batch in reader:
            if max_rows is None or n_rows < max_rows:
                room = batch.num_rows if max_rows is None else max_rows - n_rows
                kept.append(_display_frame(batch.slice(0, room)))
            n_rows += batch.num_rows
    # Errors found while rows stream (a failed cast) reach Python through Arrow, as OSError.
    except (duckdb.Error, OSError) as err:
        raise _sql_error(err) from err
    frame = pl.concat(kept) if kept else _display_frame(reader.schema.empty_table())
    return SqlResult(frame, n_rows)


# How SQL spells an object of duckdb_tables()/views()/columns() in this database.
_QUALIFIED_NAME = """case
    when database_name = current_database() then schema_name || '.' || object_name
    when database_name = 'temp' then 'temp.' || object_name
    else database_name || '.' || schema_name || '.' || object_name
end"""


def list_objects(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Every table, view and macro a user can query, by `name` as SQL spells it
    (`marts.sessions`, `temp.t` for a temp table) and `kind`, sorted by name."""
    return query(
        con,
        f"""
        with objects as (
            select database_name, schema_name, table_name as object_name, 'table' as kind,
            from duckdb_tables()
            where not internal
            union all
            select database_name, schema_name, view_name, 'view',
            from duckdb_views()
            where not internal
            union all
            select distinct
                database_name,
                schema_name,
                function_name,
                case function_type when 'table_macro' then 'table macro' else 'macro' end,
            from duckdb_functions()
            where not internal and function_type in ('macro', 'table_macro')
        ),
        final as (
            select
                {_QUALIFIED_NAME} as name,
                kind,
            from objects
            where database_name != 'system'
        )
        select * from final order by name
        """,
    )


def describe_object(con: duckdb.DuckDBPyConnection, name: str) -> pl.DataFrame:
    """The columns of the tables and views called `name` (`marts.sessions`, or a bare
    `sessions` in any schema): `name`, `column_name`, `data_type`, `is_nullable`, in column
    order; empty when nothing has that name."""
    return query(
        con,
        f"""
        with columns as (
            select
                {_QUALIFIED_NAME} as name,
                object_name,
                column_name,
                data_type,
                is_nullable,
                column_index,
            from (select *, table_name as object_name from duckdb_columns())
            where not internal and database_name != 'system'
        ),
        final as (
            select name, column_name, data_type, is_nullable,
            from columns
            where lower(name) = lower(?) or lower(object_name) = lower(?)
            order by name, column_index
        )
        select * from final
        """,
        [name, name],
    )


def _display_frame(data) -> pl.DataFrame:
    """A Polars frame from an Arrow batch or table, as a result to print: a repeated column
    name gets a suffix (`n`, `n_2`), and a column Polars cannot hold (an interval, a union)
    becomes its text."""
    names: list[str] = []
    columns = []
    for name, column in zip(data.schema.names, data.columns, strict=True):
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}_{n}"
        names.append(unique)
        # Polars panics (an uncatchable PanicException) on an interval nested in a list or
        # struct, so those types never reach it; the type's text names them at any depth.
        arrow_type = str(column.type)
        series = None
        if "interval" not in arrow_type and "union" not in arrow_type:
            with contextlib.suppress(pl.exceptions.PolarsError):
                series = pl.Series(unique, column)
        if series is None:
            text = [None if v is None else _value_text(v) for v in column.to_pylist()]
            series = pl.Series(unique, text, dtype=pl.String)
        columns.append(series)
    return pl.DataFrame(columns)


def _value_text(value) -> str:
    """A value as text; an interval as DuckDB writes it (`1 month 3 days 02:00:00`)."""
    if not all(hasattr(value, part) for part in ("months", "days", "nanoseconds")):
        return str(value)
    parts = [
        f"{n} {unit}{'s' if n != 1 else ''}"
        for n, unit in ((value.months, "month"), (value.days, "day"))
        if n
    ]
    if value.nanoseconds or not parts:
        seconds, nanoseconds = divmod(abs(value.nanoseconds), 1_000_000_000)
        minutes, seconds = divmod(seconds, 60)
        clock = f"{'-' if value.nanoseconds < 0 else ''}{minutes // 60:02}:{minutes % 60:02}:{seconds:02}"
        parts.append(clock + (f".{nanoseconds // 1000:06}" if nanoseconds else ""))
    return " ".join(parts)


def _sql_error(err: Exception) -> SqlError:
    """DuckDB's multi-line message as one line, and what kind of refusal it is."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    detail = next(
        (line for line in lines[1:] if line.startswith(("LINE ", "Candidate bindings", "Did you"))),
        None,
    )
    missing = None
    if "read-only mode" in first:
        kind = "read_only"
        statement = first.partition('statement of type "')[2].partition('"')[0] or "write"
        first = f"cannot {statement.lower()}: the database is opened read-only for analysis"
        detail = None
    elif first.startswith("Parser Error"):
        kind = "syntax"
    elif first.startswith("Catalog Error"):
        kind = "catalog"
        if "Table with name " in first and " does not exist" in first:
            missing = first.split("Table with name ", 1)[1].split(" does not exist", 1)[0]
            missing = missing.strip('"')
            # DuckDB suggests from its whole catalog (`pg_enum` for a typo); the caller
            # suggests from the user's own tables instead.
            detail = None
    elif first.startswith("Binder Error"):
        kind = "binder"
    else:
        kind = "other"
    if detail and len(detail) > 100:
        detail = detail[:99] + "…"
    return SqlError(first if detail is None else f"{first} ({detail})", kind, missing)
