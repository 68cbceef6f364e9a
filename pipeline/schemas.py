"""The data contracts between stages, declared once.

Each contract is an ordered mapping of column name to Polars dtype plus the columns that may
not be null. `validate()` checks a frame against one; `conform()` selects and casts a frame
into the contract's exact shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

UTC_US = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Contract:
    name: str
    columns: dict[str, pl.DataType]
    required: tuple[str, ...] = ()
    key: tuple[str, ...] = ()

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema(self.columns)


# What ingest hands on: one row per accepted input row, before de-duplication. event_id is
# filled by the store (a stable md5 of the row's content) unless the source supplied one.
EVENTS = Contract(
    "events",
    {
        "event_id": pl.String(),
        "ts": UTC_US,
        "anonymous_id": pl.String(),
        "user_id": pl.String(),
        "event_type": pl.String(),
        "url": pl.String(),
        "host": pl.String(),
        "referrer": pl.String(),
        "user_agent": pl.String(),
        "status": pl.Int16(),
        "revenue": pl.Float64(),
        "utm_source": pl.String(),
        "utm_medium": pl.String(),
        "utm_campaign": pl.String(),
        "source": pl.String(),
        "source_line": pl.Int64(),
    },
    required=("ts", "anonymous_id", "event_type", "url", "source", "source_line"),
    key=("event_id",),
)

QUARANTINE = Contract(
    "quarantine",
    {
        "source": pl.String(),
        "source_line": pl.Int64(),
        "raw": pl.String(),
        "reason": pl.String(),
    },
    required=("source", "source_line", "raw", "reason"),
)

# Per-file notes that are not rejections: optional fields nulled because of a wrong type.
FIELD_ISSUES = Contract(
    "field_issues",
    {"source": pl.String(), "field": pl.String(), "n_rows": pl.Int64()},
)

SESSIONS = Contract(
    "sessions",
    {
        "session_id": pl.String(),
        "person_id": pl.String(),
        "anonymous_id": pl.String(),
        "user_id": pl.String(),
        "started_at": UTC_US,
        "ended_at": UTC_US,
        "duration_in_s": pl.Float64(),
        "n_steps": pl.UInt32(),
        "landing_url": pl.String(),
        "exit_url": pl.String(),
        "referrer": pl.String(),
        "device": pl.String(),
        "os": pl.String(),
        "browser": pl.String(),
        "channel": pl.String(),
        "utm_source": pl.String(),
        "utm_medium": pl.String(),
        "utm_campaign": pl.String(),
        "revenue": pl.Float64(),
        "is_bot": pl.Boolean(),
        "is_converted": pl.Boolean(),
    },
    required=("session_id", "person_id", "started_at", "ended_at", "n_steps", "is_bot"),
    key=("session_id",),
)

SESSION_STEPS = Contract(
    "session_steps",
    {
        "session_id": pl.String(),
        "step": pl.UInt32(),
        "ts": UTC_US,
        "event_id": pl.String(),
        # The device that took the step: a person's session may span devices once stitched,
        # and incremental runs find the sessions a device's new events touch through it.
        "anonymous_id": pl.String(),
        "url": pl.String(),
        "event_type": pl.String(),
        "status": pl.Int16(),
        "is_conversion": pl.Boolean(),
    },
    required=("session_id", "step", "ts", "event_id", "anonymous_id", "url", "event_type"),
    key=("session_id", "step"),
)

# A human session's journey: consecutive repeats of a touchpoint collapsed into one step,
# cut after the first conversion (see `journeys.collapse_repeats`).
JOURNEY_STEPS = Contract(
    "journey_steps",
    {
        "session_id": pl.String(),
        "position": pl.UInt32(),
        "touchpoint": pl.String(),
        "stage": pl.String(),
        "entered_at": UTC_US,
        "left_at": UTC_US,
        "n_repeats": pl.UInt32(),
        "n_errors": pl.UInt32(),
        "is_conversion": pl.Boolean(),
    },
    required=("session_id", "position", "touchpoint", "entered_at", "left_at"),
    key=("session_id", "position"),
)


def conform(frame: pl.LazyFrame, contract: Contract) -> pl.LazyFrame:
    """Select exactly the contract's columns, in order and with its dtypes (missing ones null)."""
    names = frame.collect_schema().names()
    return frame.select(
        [
            (pl.col(c) if c in names else pl.lit(None)).cast(dtype).alias(c)
            for c, dtype in contract.columns.items()
        ]
    )


def validate(frame: pl.DataFrame, contract: Contract) -> None:
    """Raise `ValueError` naming the first broken rule: columns, dtypes, nulls, key."""
    expected = list(contract.columns)
    if frame.columns != expected:
        raise ValueError(f"{contract.name}: columns {frame.columns} != {expected}")
    for name, dtype in contract.columns.items():
        if frame.schema[name] != dtype:
            raise ValueError(f"{contract.name}.{name}: dtype {frame.schema[name]} != {dtype}")
    for name in contract.required:
        n_null = frame[name].null_count()
        if n_null:
            raise ValueError(f"{contract.name}.{name}: {n_null} nulls in a required column")
    if contract.key and frame.select(contract.key).is_duplicated().any():
        raise ValueError(f"{contract.name}: key {contract.key} is not unique")


def key_hash(columns: list[str]) -> pl.Expr:
    """A 64-bit hash of `columns` together, to join by (`join_by_hash` checks collisions)."""
    return pl.struct(columns).hash()


def join_by_hash(frame: pl.LazyFrame, lookup: pl.DataFrame, on: list[str]) -> pl.LazyFrame:
    """`frame` with the other columns of `lookup` (one row per key; null where no key
    matches, a null key matching a null key), its rows and their order kept.

    Joined on a 64-bit hash of the keys, a join on one integer that costs a third of one on
    text keys, unless two keys of `lookup` share a hash: then on the keys themselves.
    """
    hashed = lookup.with_columns(_key=key_hash(on))
    if hashed["_key"].is_duplicated().any():
        return frame.join(lookup.lazy(), on=on, how="left", nulls_equal=True, maintain_order="left")
    return (
        frame.with_columns(_key=key_hash(on))
        .join(hashed.drop(on).lazy(), on="_key", how="left", maintain_order="left")
        .drop("_key")
    )


def row_hash(frame: pl.DataFrame) -> pl.Series:
    """A 64-bit hash of each whole row (callers check collisions). A third of the time of
    `key_hash` over every column."""
    return frame.hash_rows()


def without_duplicate_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the first of each set of identical rows, the rest in their order.

    Rows are compared by a 64-bit hash of the whole row first, and only the few rows that
    share a hash are compared in full. `unique()` encodes and compares every row: for 1M
    events it needs about twice the memory (450 MB vs 200 MB) and more time.
    """
    if frame.is_empty():
        return frame
    shares_hash = row_hash(frame).is_duplicated()
    if not shares_hash.any():
        return frame
    candidates = shares_hash.arg_true()
    is_first = frame[candidates].select(pl.struct(pl.all()).is_first_distinct()).to_series()
    keep = (~shares_hash).scatter(candidates.filter(is_first), True)
    return frame.filter(keep)
