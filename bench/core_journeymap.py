"""Contender: journeymap's core (sessionise → touchpoints → journeys → transitions).

Only pipeline functions, as `journeymap run` uses them: the events dealt into partitions of
whole persons (`sessionize.with_person_partition`, about `sessions.partition_events` events
each), spilled to a file per partition in one streaming pass as the run spills stored events,
then per partition `sessionize`, `pipeline.cli.map_journeys` and the edges and counts of
`journey_marts`, with `definitions.core_config()`; the counts of the partitions are added up
(their sessions are disjoint). Memory holds one partition's work, never all the events.
Exact duplicates are dropped per partition (`schemas.without_duplicate_rows`; identical rows
share a person, so a partition); journeymap drops them when it loads events into its store,
which this job does not use.

Usage: python bench/core_journeymap.py EVENTS.parquet DEFINITIONS.json OUT_DIR [PARTITION_EVENTS]
(DEFINITIONS.json is not read: journeymap takes its rules from the config it was built from.
PARTITION_EVENTS, for tests, overrides `sessions.partition_events`.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from definitions import core_config

from pipeline import journeys, sessionize
from pipeline.cli import map_journeys
from pipeline.schemas import EVENTS, without_duplicate_rows

# Columns sessionize needs that the core job's input does not have.
ABSENT = [c for c in EVENTS.columns if c not in ("source", "source_line")]
SINK_CHUNK_ROWS = 20_000


def main(events_path: Path, out: Path, partition_events: int | None = None) -> None:
    cfg = core_config()
    out.mkdir(parents=True, exist_ok=True)
    events = pl.scan_parquet(events_path)
    n_rows_read = events.select(pl.len()).collect().item()
    n_parts = -(-n_rows_read // (partition_events or cfg.sessions.partition_events))
    n_events = n_journey_sessions = 0
    transition_parts = []
    # Sessions are written partition by partition: a partition's sessions share their id
    # buffers with its steps, and holding them would hold every partition's steps.
    with contextlib.closing(SessionWriter(out / "sessions.parquet")) as sessions_out:
        for part in person_partitions(events, n_parts, out / "partitions"):
            # Added per partition, not before the spill: a constant column added to a frame
            # stays one value, which sorts and joins carry for free; spilled, it would be a
            # column of nulls in every file (10M events: 5-11 s slower).
            part = without_duplicate_rows(
                part.with_columns(
                    pl.lit(None, EVENTS.columns[c]).alias(c)
                    for c in ABSENT
                    if c not in part.columns
                )
            )
            sessions, steps = sessionize.sessionize(part.lazy(), cfg)
            sessions, steps, journey_steps = map_journeys(sessions, steps, cfg)
            journey_sessions = sessions.filter(~pl.col("is_bot"))
            edges = journeys.journey_edges(
                journey_steps.lazy(), journey_sessions.lazy(), segments=False
            )
            transition_parts.append(journeys.count_transitions(edges).collect())
            sessions_out.write(
                sessions.select(
                    "person_id", "started_at", n_events="n_steps", is_converted="is_converted"
                )
            )
            n_events += steps.height
            n_journey_sessions += journey_sessions.height
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
