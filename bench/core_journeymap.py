"""Contender: journeymap's core (sessionise → touchpoints → journeys → transitions).

Only pipeline functions, as `journeymap run` uses them: the events dealt into partitions of
whole persons (`sessionize.with_person_partition`, about `sessions.partition_events` events
each), spilled to a file per partition in one streaming pass as the run spills stored events,
then per partition `sessionize`, `journeys.map_journeys` and the edges and counts of
`journey_marts`, with `definitions.core_config()`; the counts of the partitions are added up
(their sessions are disjoint). Unlike the run, two partitions are worked on at once and a
third waits to start (see PARTITION_WORKERS). Memory holds their work, never all the events.
Exact duplicates are dropped per partition (`schemas.without_duplicate_rows`; identical rows
share a person, so a partition); journeymap drops them when it loads events into its store,
which this job does not use.

Usage: python bench/core_journeymap.py EVENTS.parquet DEFINITIONS.json OUT_DIR [PARTITION_EVENTS]
(DEFINITIONS.json is not read: journeymap takes its rules from the config it was built from.
PARTITION_EVENTS, for tests, overrides `sessions.partition_events`.)
"""

from __future__ import annotations

# Before Polars: its allocator reads journeymap's settings when Polars is first imported (as
# in `journeymap run`, see pipeline/__init__.py).
import pipeline  # noqa: F401

# isort: split
import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from definitions import core_config

from pipeline import journeys, sessionize
from pipeline.ingest import in_order
from pipeline.schemas import EVENTS, without_duplicate_rows

# Columns sessionize needs that the core job's input does not have.
ABSENT = [c for c in EVENTS.columns if c not in ("source", "source_line")]
SINK_CHUNK_ROWS = 20_000
# Partitions sessionised at once, in threads (Polars releases the GIL). One partition's work
# leaves a core idle part of the time; the run fills it with the DuckDB write of the partition
# before, this job, which stores nothing, with the next partition. Measured at 10M events on
# 2 cores: 24 s and 1.0 GB peak two 500k-event partitions at a time, against 29 s and 1.1 GB
# one 1M-event partition at a time.
PARTITION_WORKERS = 2
# A third partition waits to start as soon as either ends: partitions are handed on in order,
# so a thread whose partition ends first would otherwise idle until the other's does. 10M
# events, three alternating rounds: 12.0 s (11.95-12.40) against 12.4 s (12.23-12.96), with
# peaks of 1.28-1.32 GB against 1.25-1.26 GB.
QUEUED_PARTITIONS = 1


def main(events_path: Path, out: Path, partition_events: int | None = None) -> None:
    cfg = core_config()
    out.mkdir(parents=True, exist_ok=True)
    events = pl.scan_parquet(events_path)
    n_rows_read = events.select(pl.len()).collect().item()
    partition_events = partition_events or cfg.sessions.partition_events
    n_parts = -(-n_rows_read // partition_events)
    n_events = n_journey_sessions = 0
    transition_parts = []
    partitions = person_partitions(events, n_parts, out / "partitions")
    jobs = (partial(core_job, cfg, part) for part in partitions)
    # Sessions are written partition by partition: a partition's sessions share their id
    # buffers with its steps, and holding them would hold every partition's steps.
    with (
        contextlib.closing(SessionWriter(out / "sessions.parquet")) as sessions_out,
        contextlib.closing(in_order(jobs, PARTITION_WORKERS, queued=QUEUED_PARTITIONS)) as done,
    ):
        for transition_counts, sessions, n_part_events, n_part_sessions in done:
            transition_parts.append(transition_counts)
            sessions_out.write(sessions)
            n_events += n_part_events
            n_journey_sessions += n_part_sessions
    transitions = (
        pl.concat(transition_parts)
        .group_by("from_touchpoint", "to_touchpoint")
        .agg(pl.col("n_transitions").sum())
    )

    transitions.write_parquet(out / "transitions.parquet")
    summary = {
        "n_rows_read": n_rows_read,
        "n_events": n_events,
        "n_sessions": n_journey_sessions,
    }
    (out / "summary.json").write_text(json.dumps(summary) + "\n")


def core_job(cfg, part: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int, int]:
    """One partition's transition counts, sessions, events and journey sessions."""
    # Added per partition, not before the spill: a constant column added to a frame stays
    # one value, which sorts and joins carry for free; spilled, it would be a column of nulls
    # in every file (10M events: 5-11 s slower).
    part = without_duplicate_rows(
        part.with_columns(
            pl.lit(None, EVENTS.columns[c]).alias(c) for c in ABSENT if c not in part.columns
        )
    )
    sessions, steps = sessionize.sessionize(part.lazy(), cfg)
    sessions, steps, journey_steps = journeys.map_journeys(sessions, steps, cfg)
    journey_sessions = journeys.journey_sessions(sessions, cfg)
    edges = journeys.journey_edges(journey_steps.lazy(), journey_sessions.lazy(), segments=False)
    return (
        journeys.count_transitions(edges).collect(),
        sessions.select("person_id", "started_at", n_events="n_steps", is_converted="is_converted"),
        steps.height,
        journey_sessions.height,
    )


def person_partitions(events: pl.LazyFrame, n_parts: int, folder: Path) -> Iterator[pl.DataFrame]:
    """The events in `n_parts` partitions of whole persons, one at a time.

    Dealt in one streaming pass into a file per partition (as `journeymap run` spills stored
    events), so that memory never holds all the events, only one partition's work.
    """
    if n_parts <= 1:
        yield events.collect()
        return
    dealt = sessionize.with_person_partition(events, n_parts)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        # Smaller morsels than Polars' default, for the sink alone: it buffers some for every
        # partition (10M events: a 1.2 GB peak by default, 0.7 GB with these, in no more time).
        with pl.Config(streaming_chunk_size=SINK_CHUNK_ROWS):
            dealt.sink_ipc(pl.PartitionBy(folder, key="part", include_key=False), mkdir=True)
        for part in sorted(folder.iterdir()):
            yield pl.read_ipc(part / "*.ipc")
            shutil.rmtree(part)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class SessionWriter:
    """Sessions appended to one Parquet file, a partition at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, sessions: pl.DataFrame) -> None:
        table = sessions.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[3]), *(int(n) for n in sys.argv[4:5]))
