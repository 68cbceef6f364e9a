"""Contender: journeymap's core (sessionise → touchpoints → journeys → transitions).

Only pipeline functions, as `journeymap run` uses them: the events dealt into partitions of
whole persons (`sessionize.person_partitions`, about `sessions.partition_events` events each,
as the run deals stored events), then per partition `sessionize`, `pipeline.cli.map_journeys`
and the edges and counts of `journey_marts`, with `definitions.core_config()`; the counts of
the partitions are added up (their sessions are disjoint). Exact duplicates are dropped per
partition (identical rows share a person, so a partition); journeymap drops them when it
loads events into its store, which this job does not use.

Usage: python bench/core_journeymap.py EVENTS.parquet DEFINITIONS.json OUT_DIR
(DEFINITIONS.json is not read: journeymap takes its rules from the config it was built from.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
from definitions import core_config

from pipeline import journeys, sessionize
from pipeline.cli import map_journeys
from pipeline.schemas import EVENTS

# Columns sessionize needs that the core job's input does not have.
ABSENT = [c for c in EVENTS.columns if c not in ("source", "source_line")]


def main(events_path: Path, out: Path) -> None:
    cfg = core_config()
    events = pl.read_parquet(events_path)
    n_rows_read = events.height
    events = events.with_columns(
        pl.lit(None, EVENTS.columns[c]).alias(c) for c in ABSENT if c not in events.columns
    )
    n_parts = -(-n_rows_read // cfg.sessions.partition_events)
    partitions = sessionize.person_partitions(events, n_parts)
    del events
    n_events = n_journey_sessions = 0
    session_parts, transition_parts = [], []
    while partitions:
        # Each partition is dropped once used: memory holds one partition's work at a time.
        part = partitions.pop().unique()
        sessions, steps = sessionize.sessionize(part.lazy(), cfg)
        sessions, steps, journey_steps = map_journeys(sessions, steps, cfg)
        journey_sessions = sessions.filter(~pl.col("is_bot"))
        edges = journeys.journey_edges(
            journey_steps.lazy(), journey_sessions.lazy(), segments=False
        )
        transition_parts.append(journeys.count_transitions(edges).collect())
        session_parts.append(
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

    out.mkdir(parents=True, exist_ok=True)
    sessions = pl.concat(session_parts)
    sessions.write_parquet(out / "sessions.parquet")
    transitions.write_parquet(out / "transitions.parquet")
    summary = {
        "n_rows_read": n_rows_read,
        "n_events": n_events,
        "n_sessions": n_journey_sessions,
    }
    (out / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[3]))
