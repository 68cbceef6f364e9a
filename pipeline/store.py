"""Store: the only module that opens DuckDB.

Layers: `raw` (events, quarantine, runs, run_files, settings) → `staging` (views) → `marts`
(sessions, session_steps, and views from `sql/`). A run writes everything in one
transaction: a run that fails leaves the previous state untouched.

Two keys are assigned here, in SQL, because they need a stable hash (Polars' hash is only
stable within one Polars version) and the database's salt:

- `anonymous_id` of an access-log visitor = md5(salt | IP | user agent); the IP never
  reaches a table;
- `event_id` (unless the source gave one) = md5 of the event's content, so exact duplicates
  share an id, whether in one file, across files, or across nightly runs.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from pipeline.errors import StoreError
from pipeline.schemas import EVENTS, SESSION_STEPS, SESSIONS, UTC_US

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SQL_LAYERS = ("staging", "marts", "macros")
DUCKDB_MEMORY_LIMIT = "3GB"

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


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
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
    # Polars holds the sessionised frames beside DuckDB in one process: cap DuckDB so it
    # spills to disk instead of taking the 80 % of RAM it would by default.
    con.execute(f"set memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    con.execute("set preserve_insertion_order = false")
    return con


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


def visitor_salt(con: duckdb.DuckDBPyConnection) -> str:
    """The salt for access-log visitor ids, created once per database and kept there so ids
    stay stable across nightly runs."""
    salt = _scalar(con, "select value from raw.settings where key = 'visitor_salt'")
    if salt is not None:
        return salt
    salt = secrets.token_hex(16)
    con.execute("insert into raw.settings values ('visitor_salt', ?)", [salt])
    return salt


def next_run_id(con: duckdb.DuckDBPyConnection) -> int:
    return _scalar(con, "select coalesce(max(run_id), 0) + 1 from raw.runs")


# ----------------------------------------------------------------------------- loading


def begin_load(con: duckdb.DuckDBPyConnection) -> None:
    """Start the run's single transaction."""
    con.execute("begin transaction")


def stage_batch(
    con: duckdb.DuckDBPyConnection,
    events: pl.DataFrame,
    quarantine: pl.DataFrame,
    run_id: int,
    ingested_at: datetime,
) -> tuple[int, int]:
    """Key one ingested batch, insert its new events and its rejects; (accepted, duplicates).

    A duplicate is an event whose `event_id` is already stored (by an earlier run, or by an
    earlier batch of this one: they share the open transaction) or appears earlier in the
    batch. Of identical events the one read first is kept. Inserting batch by batch keeps
    memory bounded by the batch, not by the run.
    """
    if quarantine.height:
        con.register("batch_quarantine", quarantine.to_arrow())
        con.execute(
            "insert into raw.quarantine "
            "select source, source_line, raw, reason, ?, ? from batch_quarantine",
            [run_id, ingested_at],
        )
        con.unregister("batch_quarantine")
    if not events.height:
        return 0, 0
    con.register("batch_events", events.to_arrow())
    columns = ", ".join(EVENTS.columns)
    n_accepted = con.execute(
        f"""
        insert into raw.events
        with hashed as (
            select
                * exclude (anonymous_id, event_id, visitor_key),
                coalesce(anonymous_id, md5(? || chr(31) || visitor_key)) as anonymous_id,
                event_id as given_event_id,
            from batch_events
        ),
        keyed as (
            select
                coalesce(given_event_id, md5(concat_ws(chr(31),
                    epoch_us(ts)::varchar, anonymous_id, coalesce(user_id, ''), event_type, url,
                    coalesce(host, ''), coalesce(referrer, ''), coalesce(user_agent, ''),
                    coalesce(status::varchar, ''), coalesce(revenue::varchar, '')))) as event_id,
                * exclude (given_event_id),
            from hashed
        ),
        first_seen as (
            select * from keyed
            qualify row_number() over (partition by event_id order by source_line) = 1
        ),
        final as (
            select {columns}, ? as run_id, ? as ingested_at
            from first_seen
            where not exists (select 1 from raw.events as stored where stored.event_id = first_seen.event_id)
        )
        select * from final
        """,
        [visitor_salt(con), run_id, ingested_at],
    ).fetchall()[0][0]
    con.unregister("batch_events")
    return n_accepted, events.height - n_accepted


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


def read_events(con: duckdb.DuckDBPyConnection, batch_rows: int = 1_000_000) -> pl.LazyFrame:
    """Every stored event as a Polars frame, streamed from DuckDB in Arrow batches.

    Low-cardinality text columns become Categorical batch by batch, so the peak memory is
    one batch of plain strings, not the whole table.
    """
    columns = ", ".join(c for c in EVENTS.columns if c not in ("source", "source_line"))
    reader = con.sql(f"select {columns} from raw.events").to_arrow_reader(batch_rows)
    parts = [
        pl.from_arrow(batch).with_columns(
            pl.col(_CATEGORICAL).cast(pl.Categorical), pl.col("ts").cast(UTC_US)
        )
        for batch in reader
    ]
    if not parts:
        return pl.DataFrame(
            schema={c: t for c, t in EVENTS.columns.items() if c not in ("source", "source_line")}
        ).lazy()
    return pl.concat(parts, rechunk=False).lazy()


def replace_marts(
    con: duckdb.DuckDBPyConnection, sessions: pl.DataFrame, session_steps: pl.DataFrame
) -> None:
    """Swap in freshly computed sessions and steps (inside the run's transaction)."""
    for name, frame in (("sessions", sessions), ("session_steps", session_steps)):
        con.register(f"new_{name}", frame.to_arrow())
        con.execute(f"delete from marts.{name}")
        con.execute(f"insert into marts.{name} select * from new_{name}")
        con.unregister(f"new_{name}")


JOURNEY_MARTS = (
    "journey_steps",
    "transitions",
    "transitions_by_segment",
    "touchpoints",
    "paths",
    "path_lengths",
    "blockers",
)


def replace_journey_marts(con: duckdb.DuckDBPyConnection, marts: dict[str, pl.DataFrame]) -> None:
    """Replace the journey marts (their shape follows the frames) inside the run's transaction."""
    for name, frame in marts.items():
        if name not in JOURNEY_MARTS:
            raise ValueError(f"unknown journey mart {name!r}")
        con.register(f"new_{name}", frame.to_arrow())
        con.execute(f"create or replace table marts.{name} as select * from new_{name}")
        con.unregister(f"new_{name}")


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
) -> None:
    files = list(files)
    con.execute(
        "insert into raw.runs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            started_at,
            datetime.now(UTC),
            status,
            version,
            inputs,
            sum(f.n_read for f in files),
            sum(f.n_accepted for f in files),
            sum(f.n_duplicates for f in files),
            sum(f.n_quarantined for f in files),
            json.dumps(quarantined_by_reason or {}),
            json.dumps(nulled_fields or {}),
            n_persons,
            n_sessions,
            n_bot_sessions,
            json.dumps({k: round(v, 3) for k, v in (stage_seconds or {}).items()}),
            error,
        ],
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


def commit(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("commit")


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    # No open transaction means nothing to undo.
    with contextlib.suppress(duckdb.Error):
        con.execute("rollback")


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


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run a read query and hand back a Polars frame (no DuckDB object leaves this module)."""
    return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())
