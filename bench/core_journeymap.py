"""Contender: journeymap's core (sessionise → touchpoints → journeys → transitions).

Only pipeline functions: `sessionize`, then `pipeline.cli.map_journeys` as `journeymap run`
calls it, then the edges and counts of `journey_marts`, with `definitions.core_config()`. Exact
duplicates are dropped first (journeymap drops them when it loads events into its store, which
this job does not use).

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
    raw = pl.scan_parquet(events_path)
    n_rows_read = raw.select(pl.len()).collect().item()
    present = raw.collect_schema().names()
    events = raw.unique().with_columns(
        pl.lit(None, EVENTS.columns[c]).alias(c) for c in ABSENT if c not in present
    )

    sessions, steps = sessionize.sessionize(events, cfg)
    sessions, steps, journey_steps = map_journeys(sessions, steps, cfg)
    journey_sessions = sessions.filter(~pl.col("is_bot"))
    edges = journeys.journey_edges(journey_steps.lazy(), journey_sessions.lazy(), segments=False)
    transitions = journeys.count_transitions(edges).collect()

    out.mkdir(parents=True, exist_ok=True)
    sessions.select(
        "person_id", "started_at", n_events="n_steps", is_converted="is_converted"
    ).write_parquet(out / "sessions.parquet")
    transitions.select("from_touchpoint", "to_touchpoint", "n_transitions").write_parquet(
        out / "transitions.parquet"
    )
    summary = {
        "n_rows_read": n_rows_read,
        "n_events": steps.height,
        "n_sessions": journey_sessions.height,
    }
    (out / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[3]))
