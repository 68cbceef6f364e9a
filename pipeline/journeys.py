"""Journeys: touchpoint steps → transitions, paths and ranked conversion blockers (Polars).

A journey is a human session's touchpoints in order, consecutive repeats collapsed into one
step with a repeat count, up to and including its first conversion step. It starts at the
synthetic `START` and ends in `CONVERSION` (converted) or `EXIT` (abandoned). Steps after the
first conversion (order status, returns, questions) are the service phase: they stay in
`marts.session_steps` but are not part of the purchase journey.

>>> steps = collapse_repeats(touchpoint_steps)          # doctest: +SKIP
>>> transitions = count_transitions(steps)             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import polars as pl

from pipeline import touchpoints
from pipeline.config import Config
from pipeline.graph import CONVERSION, EXIT, START, wilson_bounds
from pipeline.schemas import JOURNEY_STEPS
from pipeline.sessionize import IN_MEMORY, in_seconds

# Session columns journeys are broken down by (`session_segments`).
SESSION_SEGMENTS = ("device", "browser", "os", "channel")
SEGMENT_DIMENSIONS = (*SESSION_SEGMENTS, "device_browser")
PATH_SEPARATOR = " > "

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)

JOURNEY_STEPS_SCHEMA = JOURNEY_STEPS.columns


def map_journeys(
    sessions: pl.DataFrame, steps: pl.DataFrame, cfg: Config
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Touchpoints and collapsed journey steps of sessionised steps (per session).

    Returns sessions and steps again because `conversion.touchpoint` can mark more steps as
    conversions once touchpoints are known; every mart then uses the same definition.
    """
    rules = touchpoints.effective_rules(cfg)
    mapped = (
        touchpoints.assign_touchpoints(
            steps.lazy(), rules, conversion_touchpoint=cfg.conversion.touchpoint
        )
        .collect(engine=IN_MEMORY)
        .rechunk()
    )
    if cfg.conversion.touchpoint:
        steps = steps.with_columns(is_conversion=mapped["is_conversion"])
        converted = mapped.group_by("session_id").agg(by_touchpoint=pl.col("is_conversion").any())
        sessions = (
            sessions.join(converted, on="session_id", how="left")
            .with_columns(
                is_converted=pl.col("is_converted") | pl.col("by_touchpoint").fill_null(False)
            )
            .drop("by_touchpoint")
        )
    if cfg.bots.exclude_from_journeys:
        # Bot sessions are few: a set lookup per step costs a fraction of a join.
        bot_sessions = sessions.filter(pl.col("is_bot"))["session_id"]
        mapped = mapped.filter(~pl.col("session_id").is_in(bot_sessions.implode()))
    journey_steps = collapse_repeats(mapped.lazy()).collect(engine=IN_MEMORY)
    return sessions, steps, journey_steps


def journey_sessions(sessions: pl.DataFrame, cfg: Config) -> pl.DataFrame:
    """The sessions the journey marts count: bots' left out under
    `bots.exclude_from_journeys`, as `map_journeys` leaves out their journey steps."""
    return sessions.filter(~pl.col("is_bot")) if cfg.bots.exclude_from_journeys else sessions


def collapse_repeats(touchpoint_steps: pl.LazyFrame) -> pl.LazyFrame:
    """One row per journey step: consecutive repeats of a touchpoint merged, cut after the
    first conversion.

    Input: session_steps with `touchpoint` and `stage` (see `touchpoints.assign_touchpoints`).
    Output columns: session_id, position (1-based), touchpoint, stage, entered_at, left_at,
    n_repeats (extra consecutive visits: a signal of friction), n_errors (steps answered with
    HTTP 5xx), is_conversion.
    """
    ordered = in_session_order(touchpoint_steps.collect(engine=IN_MEMORY))
    same_session = (pl.col("session_id") == pl.col("session_id").shift(1)).fill_null(False)
    new_step = ~same_session | (pl.col("touchpoint") != pl.col("touchpoint").shift(1))
    # Steps after the first conversion step of a session are the service phase. An unknown
    # flag (the contract allows null) is no conversion; left null it would drop the step.
    # Counted with running sums over the one sort, reset at each session's first row: the
    # same sums windowed `over` sessions cost several times more on millions of rows.
    is_conversion = pl.col("is_conversion").fill_null(False).cast(pl.UInt32)
    is_error = (pl.col("status") >= 500).fill_null(False).cast(pl.UInt32)
    before_here = is_conversion.cum_sum() - is_conversion
    at_session_start = pl.when(~same_session).then(before_here).forward_fill()
    kept = ordered.lazy().filter((before_here - at_session_start) == 0)
    # Each merged step is the run of rows from its first row to the row before the next
    # step's first: its totals are differences of running sums, read at both ends. No group-by
    # gathers the text columns of millions of rows.
    running = kept.with_columns(
        is_first=new_step,
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        errors=is_error.cum_sum(),
        conversions=is_conversion.cum_sum(),
    ).collect(engine=IN_MEMORY)
    firsts = running.filter(pl.col("is_first"))
    last_row = (firsts["row"].shift(-1) - 1).fill_null(running.height - 1)
    at_last = running.select("ts", "errors", "conversions")[last_row]
    before_first = firsts.select(
        errors=pl.col("errors") - is_error,
        conversions=pl.col("conversions") - is_conversion,
    )
    steps = firsts.select(
        "session_id",
        "touchpoint",
        "stage",
        entered_at="ts",
        left_at=at_last["ts"],
        n_repeats=(last_row - firsts["row"]).cast(pl.UInt32),
        n_errors=(at_last["errors"] - before_first["errors"]).cast(pl.UInt32),
        is_conversion=at_last["conversions"] > before_first["conversions"],
        row=pl.int_range(pl.len(), dtype=pl.Int64),
    )
    return (
        steps.lazy()
        .with_columns(
            position=(
                pl.col("row")
                - pl.when(_previous_in_session("session_id").is_null())
                .then(pl.col("row"))
                .forward_fill()
                + 1
            ).cast(pl.UInt32)
        )
        .select(list(JOURNEY_STEPS_SCHEMA))
    )


def in_session_order(steps: pl.DataFrame, step: str = "step") -> pl.DataFrame:
    """`steps` (session_id, `step`) with each session's steps together and in step order.

    Sessionised steps already come that way; checking it is a pass over neighbouring rows,
    sorting millions of rows by their text session ids costs seconds.
    """
    same_session = pl.col("session_id") == pl.col("session_id").shift(1)
    in_order = pl.col(step) == pl.when(same_session).then(pl.col(step).shift(1) + 1).otherwise(1)
    if steps.select(in_order.fill_null(False).all()).item():
        return steps
    return steps.sort("session_id", step)


def journey_edges(
    journey_steps: pl.LazyFrame, sessions: pl.LazyFrame, *, segments: bool = True
) -> pl.LazyFrame:
    """Every transition of every journey, START and CONVERSION/EXIT included.

    Columns: session_id, position, from_touchpoint, to_touchpoint, seconds (between entering
    the two steps; null for synthetic nodes), plus, unless `segments` is false, the session's
    segment columns and date (a join of every edge with its session: skip it when only the
    transition counts are wanted).
    """
    steps = in_session_order(
        journey_steps.select("session_id", "position", "touchpoint", "entered_at").collect(),
        "position",
    ).lazy()
    outcome = sessions.select("session_id", "is_converted")
    inner = steps.with_columns(
        from_touchpoint=_previous_in_session("touchpoint"),
        from_entered=_previous_in_session("entered_at"),
    ).select(
        "session_id",
        "position",
        pl.col("from_touchpoint").fill_null(START),
        to_touchpoint="touchpoint",
        seconds=in_seconds(pl.col("entered_at") - pl.col("from_entered")),
    )
    is_last = _previous_in_session("session_id", -1).is_null()
    ends = (
        steps.filter(is_last)
        .join(outcome, on="session_id")
        .select(
            "session_id",
            position=pl.col("position") + 1,
            from_touchpoint="touchpoint",
            to_touchpoint=pl.when(pl.col("is_converted"))
            .then(pl.lit(CONVERSION))
            .otherwise(pl.lit(EXIT)),
            seconds=pl.lit(None, pl.Float64),
        )
    )
    edges = pl.concat([inner, ends])
    return edges.join(session_segments(sessions), on="session_id") if segments else edges


def _previous_in_session(column: str, n: int = 1) -> pl.Expr:
    """`column` n rows earlier (n < 0: later) in a frame sorted by session, null across a
    session boundary. Plain shifts over one sort: a shift windowed `over` millions of small
    sessions is many times slower."""
    same = pl.col("session_id").shift(n) == pl.col("session_id")
    return pl.when(same).then(pl.col(column).shift(n))


def session_segments(sessions: pl.LazyFrame) -> pl.LazyFrame:
    """The segment columns of each journey session (Categorical: a handful of values copied
    onto millions of edges and steps), and its date."""
    return sessions.select(
        "session_id",
        *[pl.col(c).cast(pl.Categorical) for c in SESSION_SEGMENTS],
        device_browser=pl.format("{} / {}", pl.col("device"), pl.col("browser")).cast(
            pl.Categorical
        ),
        session_date=pl.col("started_at").dt.date(),
    )


def count_transitions(edges: pl.LazyFrame, by: str | None = None) -> pl.LazyFrame:
    """Transition counts: from_touchpoint, to_touchpoint, n_transitions, n_sessions,
    median_seconds; with `by`, one block per value of that segment column."""
    keys = (
        ["from_touchpoint", "to_touchpoint"]
        if by is None
        else [by, "from_touchpoint", "to_touchpoint"]
    )
    return (
        edges.group_by(keys)
        .agg(
            n_transitions=pl.len().cast(pl.Int64),
            n_sessions=pl.col("session_id").n_unique().cast(pl.Int64),
            median_seconds=pl.col("seconds").median(),
        )
        .sort(
            [*keys[:-2], "n_transitions", "from_touchpoint", "to_touchpoint"],
            descending=[*[False] * (len(keys) - 2), True, False, False],
        )
    )


TRANSITION_SEGMENTS = {
    "device": "device",
    "browser": "browser",
    "channel": "channel",
    "date": "session_date",
}
TRANSITION_COLUMNS = ["from_touchpoint", "to_touchpoint"]


def transitions_by_segment(edges: pl.LazyFrame) -> pl.LazyFrame:
    """Transition counts broken down by device, browser, channel and date, stacked:
    segment_type, segment_value, from_touchpoint, to_touchpoint, n_transitions, n_sessions,
    median_seconds."""
    counts, seconds = _transition_pieces(edges.collect())
    return _transitions_by_segment(counts, seconds).lazy()


def _transition_pieces(edges: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(counts, seconds) of `journey_edges` with segments: transitions and sessions per
    transition, overall (segment_type "all") and per segment; and the seconds of every edge
    between two real steps with its segments, the values the medians are taken over."""
    # Grouped by categorical codes (integer keys); only the counted rows are turned into text.
    edges = edges.with_columns(pl.col(TRANSITION_COLUMNS).cast(pl.Categorical))
    by = {"all": None} | {
        segment_type: pl.col(column) for segment_type, column in TRANSITION_SEGMENTS.items()
    }
    counts = _stacked(
        edges, TRANSITION_COLUMNS, _transition_totals(), by, ("segment_type", "segment_value")
    ).with_columns(pl.col(TRANSITION_COLUMNS).cast(pl.String))
    seconds = edges.filter(pl.col("seconds").is_not_null()).select(
        *TRANSITION_COLUMNS, *TRANSITION_SEGMENTS.values(), "seconds"
    )
    return counts, seconds


def _stacked(
    frame: pl.DataFrame,
    keys: list[str],
    aggs: list[pl.Expr],
    by: dict[str, pl.Expr | None],
    names: tuple[str, str],
) -> pl.DataFrame:
    """`aggs` per `keys`, once per entry of `by` (a label, and the value to break the keys
    down by: None for the whole), stacked under two columns `names` (label, value); values
    are turned into text after counting, so they can be grouped by as codes."""
    label, value = names
    blocks = []
    for name, breakdown in by.items():
        group = keys if breakdown is None else [breakdown.alias(value), *keys]
        counted = frame.group_by(group).agg(aggs)
        if breakdown is None:
            counted = counted.with_columns(pl.lit(None, pl.String).alias(value))
        blocks.append(
            counted.select(
                pl.lit(name).alias(label),
                pl.col(value).cast(pl.String),
                *keys,
                pl.exclude(value, *keys),
            )
        )
    return pl.concat(blocks)


_TRANSITION_COUNTS = [*TRANSITION_COLUMNS, "n_transitions", "n_sessions"]


def _transition_totals() -> list[pl.Expr]:
    # Sessions are counted per transition and partition: a session lies in one partition,
    # so the counts of partitions add up.
    return [
        pl.len().cast(pl.Int64).alias("n_transitions"),
        pl.col("session_id").n_unique().cast(pl.Int64).alias("n_sessions"),
    ]


def _with_median_seconds(
    counts: pl.DataFrame, seconds: pl.DataFrame, by: str | None
) -> pl.DataFrame:
    keys = TRANSITION_COLUMNS if by is None else [by, *TRANSITION_COLUMNS]
    values = seconds.select(*keys, "seconds")

    def medians_of(rows: pl.DataFrame) -> pl.DataFrame:
        return rows.group_by(keys).agg(median_seconds=pl.col("seconds").median())

    # One from-touchpoint at a time: a group-by median holds about 50 bytes a row while it
    # runs, and it runs at the end of a run, over every transition (10M events: 3.6M rows,
    # 230 MB for the five medians at once against 60-120 MB, for 0.3 s more).
    touchpoints = values["from_touchpoint"].unique()
    medians = (
        pl.concat(
            medians_of(values.filter(pl.col("from_touchpoint").eq_missing(touchpoint)))
            for touchpoint in touchpoints
        )
        if len(touchpoints)
        else medians_of(values)
    )
    medians = medians.with_columns(pl.col(k).cast(pl.String) for k in keys)
    if by is not None:
        medians = medians.rename({by: "segment_value"})
    on = TRANSITION_COLUMNS if by is None else ["segment_value", *TRANSITION_COLUMNS]
    return counts.join(medians, on=on, how="left", nulls_equal=True)


def _transitions(counts: pl.DataFrame, seconds: pl.DataFrame) -> pl.DataFrame:
    """The transitions mart: what `count_transitions` gives for the edges behind the pieces."""
    overall = counts.filter(pl.col("segment_type") == "all").select(_TRANSITION_COUNTS)
    return (
        _with_median_seconds(overall, seconds, None)
        .sort("n_transitions", "from_touchpoint", "to_touchpoint", descending=[True, False, False])
        .select(*_TRANSITION_COUNTS, "median_seconds")
    )


def _transitions_by_segment(counts: pl.DataFrame, seconds: pl.DataFrame) -> pl.DataFrame:
    blocks = []
    for segment_type, column in TRANSITION_SEGMENTS.items():
        block = counts.filter(pl.col("segment_type") == segment_type)
        blocks.append(
            _with_median_seconds(block, seconds, column).sort(
                "segment_value",
                "n_transitions",
                "from_touchpoint",
                "to_touchpoint",
                descending=[False, True, False, False],
            )
        )
    return pl.concat(blocks).select(
        "segment_type", "segment_value", *_TRANSITION_COUNTS, "median_seconds"
    )


def touchpoint_reach(journey_steps: pl.LazyFrame, sessions: pl.LazyFrame) -> pl.LazyFrame:
    """One row per session and touchpoint it reached: session_id, touchpoint, first_position,
    has_error (a 5xx there), is_converted, and exited_here (the journey ends there without
    converting). The one definition of an exit that exit rates and blockers share."""
    ordered = in_session_order(
        journey_steps.select("session_id", "position", "touchpoint").collect(), "position"
    )
    # Each session's last row in step order: no group-by sorting every session's steps.
    last = (
        ordered.lazy()
        .filter(_previous_in_session("session_id", -1).is_null())
        .select("session_id", exit_touchpoint="touchpoint")
    )
    return (
        journey_steps.group_by("session_id", "touchpoint")
        .agg(has_error=(pl.col("n_errors") > 0).any(), first_position=pl.col("position").min())
        .join(sessions.select("session_id", "is_converted"), on="session_id")
        .join(last, on="session_id")
        .with_columns(
            exited_here=(pl.col("exit_touchpoint") == pl.col("touchpoint"))
            & ~pl.col("is_converted")
        )
        .drop("exit_touchpoint")
    )


def touchpoint_exit_rates(journey_steps: pl.LazyFrame, sessions: pl.LazyFrame) -> pl.LazyFrame:
    """Per touchpoint, by session (DESIGN's definition): n_sessions reaching it,
    n_exit_sessions (whose journey ends there without converting) and exit_rate."""
    reach, _ = _reach_pieces(journey_steps, sessions)
    return _exit_rates(reach).lazy()


def _reach_pieces(
    journey_steps: pl.LazyFrame, sessions: pl.LazyFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(reach, mid_reach): sessions reaching each touchpoint and how many of them convert
    (conv), hit a 5xx there (err), exit there (exits), or convert after continuing
    (cont_conv); per touchpoint (dimension "all") and per touchpoint and segment value. And
    the same counts of sessions first reaching a touchpoint mid-journey (not on landing)."""
    # "unknown" filled in once per session, not on every row reached.
    segments = session_segments(sessions).with_columns(
        pl.col(SEGMENT_DIMENSIONS).cast(pl.String).fill_null("unknown").cast(pl.Categorical)
    )
    reach = touchpoint_reach(journey_steps, sessions).join(segments, on="session_id").collect()
    by = {"all": None} | {dim: pl.col(dim) for dim in SEGMENT_DIMENSIONS}
    counts = _stacked(reach, ["touchpoint"], _REACH_COUNTS, by, ("dimension", "value"))
    mid = (
        reach.filter(pl.col("first_position") > 1)
        .group_by("touchpoint")
        .agg(
            n=pl.len().cast(pl.Int64),
            exits=pl.col("exited_here").sum().cast(pl.Int64),
            conv=pl.col("is_converted").sum().cast(pl.Int64),
        )
    )
    as_text = pl.col("touchpoint").cast(pl.String)
    return counts.with_columns(as_text), mid.with_columns(as_text)


_REACH_COUNTS = [
    pl.len().cast(pl.Int64).alias("n"),
    pl.col("is_converted").sum().cast(pl.Int64).alias("conv"),
    pl.col("has_error").sum().cast(pl.Int64).alias("err"),
    pl.col("exited_here").sum().cast(pl.Int64).alias("exits"),
    (~pl.col("exited_here") & pl.col("is_converted")).sum().cast(pl.Int64).alias("cont_conv"),
]


def _exit_rates(reach: pl.DataFrame) -> pl.DataFrame:
    return reach.filter(pl.col("dimension") == "all").select(
        "touchpoint",
        n_sessions="n",
        n_exit_sessions="exits",
        exit_rate=pl.col("exits") / pl.col("n"),
    )


def _stage_counts(journey_steps: pl.LazyFrame) -> pl.DataFrame:
    return (
        journey_steps.group_by("touchpoint", "stage").agg(n_steps=pl.len().cast(pl.Int64)).collect()
    )


def _touchpoint_stage(stage_counts: pl.DataFrame) -> pl.DataFrame:
    return (
        stage_counts.sort("n_steps", "stage", descending=[True, False], nulls_last=True)
        .unique(subset="touchpoint", keep="first", maintain_order=True)
        .select("touchpoint", "stage")
    )


# ------------------------------------------------------------------------------- paths


def session_paths(journey_steps: pl.LazyFrame, sessions: pl.LazyFrame) -> pl.LazyFrame:
    """One row per journey: its path, the path with loops folded, length, outcome, time."""
    return _spelled_out(_coded_paths(journey_steps, sessions))


def _coded_paths(journey_steps: pl.LazyFrame, sessions: pl.LazyFrame) -> pl.LazyFrame:
    """`session_paths` with each path a list of Categorical touchpoints (`_spelled_out`
    writes them as text).

    Journeys repeat a few thousand paths: counted as lists of codes, only the distinct paths
    are joined into text (a partition of 500k journey steps: 0.13 s against 0.36 s joining
    every session's path).
    """
    # Loops folded: each touchpoint kept at its first visit (A > B > A > C becomes A > B > C).
    # Steps in session order (stored and fresh ones come that way), then a group-by that keeps
    # each session's rows in that order: sorting inside every group, or a first-visit flag
    # windowed over sessions, costs several times more.
    first_visit = pl.struct("session_id", "touchpoint").is_first_distinct()
    ordered = in_session_order(journey_steps.collect(), "position").lazy()
    paths = (
        ordered.with_columns(pl.col("touchpoint").cast(pl.Categorical), first_visit=first_visit)
        .group_by("session_id", maintain_order=True)
        .agg(
            path=pl.col("touchpoint"),
            path_folded=pl.col("touchpoint").filter("first_visit"),
            n_steps=pl.len().cast(pl.UInt32),
            first_at=pl.col("entered_at").min(),
            converted_at=pl.col("entered_at").filter(pl.col("is_conversion")).min(),
        )
    )
    return paths.join(sessions.select("session_id", "is_converted"), on="session_id").select(
        "session_id",
        "path",
        "path_folded",
        "n_steps",
        outcome=pl.when(pl.col("is_converted"))
        .then(pl.lit("converted"))
        .otherwise(pl.lit("abandoned")),
        seconds_to_convert=in_seconds(pl.col("converted_at") - pl.col("first_at")),
    )


def _spelled_out(coded: Frame) -> Frame:
    """Paths of `_coded_paths` (or counts of them) as text: touchpoints joined by " > "."""
    return coded.with_columns(
        pl.col("path", "path_folded")
        .list.eval(pl.element().cast(pl.String))
        .list.join(PATH_SEPARATOR)
    )


def top_paths(paths: pl.LazyFrame, top: int = 50) -> pl.LazyFrame:
    """The most frequent converting and abandoning paths (exact and loop-folded variants).

    Columns: outcome, variant (exact | folded), rank, path, n_sessions, share (of the
    outcome's journeys), median_steps, median_seconds_to_convert.
    """
    return _top_paths(_path_counts(paths), top).lazy()


def _path_counts(paths: pl.LazyFrame) -> pl.DataFrame:
    """Sessions per (outcome, path, folded path, steps, seconds to convert): abandoned
    journeys collapse to one row per path; converted ones keep their seconds, the values the
    median is taken over."""
    return (
        paths.group_by("outcome", "path", "path_folded", "n_steps", "seconds_to_convert")
        .agg(n=pl.len().cast(pl.Int64))
        .collect()
    )


def _top_paths(path_counts: pl.DataFrame, top: int) -> pl.DataFrame:
    blocks = []
    for variant, column in (("exact", "path"), ("folded", "path_folded")):
        counted = (
            path_counts.group_by("outcome", column)
            .agg(
                n_sessions=pl.col("n").sum(),
                # Each row stands for n sessions: the median of the values repeated n times.
                median_steps=pl.col("n_steps")
                .repeat_by("n")
                .list.explode(keep_nulls=False, empty_as_null=False)
                .median(),
                median_seconds_to_convert=pl.col("seconds_to_convert")
                .repeat_by("n")
                .list.explode(keep_nulls=False, empty_as_null=False)
                .median(),
            )
            .with_columns(share=pl.col("n_sessions") / pl.col("n_sessions").sum().over("outcome"))
            .sort("outcome", "n_sessions", column, descending=[False, True, False])
            .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("outcome"))
            .filter(pl.col("rank") <= top)
            .select(
                "outcome",
                variant=pl.lit(variant),
                rank="rank",
                path=column,
                n_sessions="n_sessions",
                share="share",
                median_steps="median_steps",
                median_seconds_to_convert="median_seconds_to_convert",
            )
        )
        blocks.append(counted)
    return pl.concat(blocks)


def path_lengths(paths: pl.LazyFrame) -> pl.LazyFrame:
    """Distribution of journey length by outcome: outcome, n_steps, n_sessions, share."""
    return _path_lengths(_path_counts(paths)).lazy()


def _path_lengths(path_counts: pl.DataFrame) -> pl.DataFrame:
    return (
        path_counts.group_by("outcome", "n_steps")
        .agg(n_sessions=pl.col("n").sum())
        .with_columns(share=pl.col("n_sessions") / pl.col("n_sessions").sum().over("outcome"))
        .sort("outcome", "n_steps")
    )


# ---------------------------------------------------------------------------- blockers

BLOCKERS_SCHEMA = {
    "rank": pl.UInt32(),
    "touchpoint": pl.String(),
    "segment": pl.String(),
    "kind": pl.String(),
    "lost_conversions": pl.Float64(),
    "evidence": pl.String(),
    "n_sessions": pl.Int64(),
    "conversion_rate_segment": pl.Float64(),
    "conversion_rate_rest": pl.Float64(),
    "error_rate": pl.Float64(),
    "exit_rate": pl.Float64(),
}
# Hundreds of touchpoint x segment pairs are compared at once: a 95 % bound would let a few
# chance gaps through on every run, so segment gaps must clear a ~99.7 % bound (z = 3).
SEGMENT_Z = 3.0
# A dead end keeps most of its visitors: at least this share of mid-journey visits end there,
# and (Wilson lower bound) at least twice the usual exit rate of its stage. Product pages, where
# most browsing naturally ends, stay below it (~60 % on the sample).
DEAD_END_EXIT_RATE = 0.7
SERVICE_STAGE = "service"


def find_blockers(
    journey_steps: pl.LazyFrame,
    sessions: pl.LazyFrame,
    min_sessions: int = 20,
    top: int = 50,
) -> pl.DataFrame:
    """Rank where journeys drop off or stall more than they should, by conversions lost.

    Three kinds of evidence, each compared with a reference, never with raw exit counts:

    - **segment** (`error` when the segment's steps fail with HTTP 5xx): sessions of one
      segment (device, browser, OS, channel, device/browser) end their journey at a
      touchpoint more often than the rest of the traffic. Lost = the excess exits x the share
      of the rest that converts after continuing past it.
    - **loop**: sessions bouncing between two touchpoints (A > B > A, at least twice)
      convert less than sessions that visit both without bouncing.
    - **dead_end**: an orientation or purchase touchpoint reached mid-journey where at least
      70 % of the sessions end, and at least twice the usual exit rate of its stage; lost =
      the excess exits x the stage's conversion rate.

    Rates are Wilson 95 % bounds taken on the cautious side (the reference's lower bound
    minus the segment's upper bound), so `lost_conversions` is unlikely to overstate a
    problem and small, noisy segments sink. One row per touchpoint and kind: the segment
    where it is worst.
    """
    reach, mid_reach = _reach_pieces(journey_steps, sessions)
    loops, visits = _loop_pieces(journey_steps, sessions)
    return _blockers(
        reach, mid_reach, _stage_counts(journey_steps), loops, visits, min_sessions, top
    )


def _blockers(reach, mid_reach, stage_counts, loops, visits, min_sessions, top) -> pl.DataFrame:
    candidates = [
        _segment_blockers(reach, min_sessions),
        _loop_blockers(loops, visits, min_sessions),
        _dead_end_blockers(mid_reach, _touchpoint_stage(stage_counts), min_sessions),
    ]
    found = [c for c in candidates if c.height]
    if not found:  # too few sessions to judge anything
        return pl.DataFrame(schema=BLOCKERS_SCHEMA)
    ranked = (
        pl.concat(found, how="diagonal_relaxed")
        .filter(pl.col("lost_conversions") > 0)
        .sort("lost_conversions", "touchpoint", "segment", descending=[True, False, False])
        .unique(subset=["touchpoint", "kind"], keep="first", maintain_order=True)
        .head(top)
        .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32))
    )
    if not ranked.height:
        return pl.DataFrame(schema=BLOCKERS_SCHEMA)
    return ranked.select(
        [
            pl.col(c).cast(t) if c in ranked.columns else pl.lit(None, t).alias(c)
            for c, t in BLOCKERS_SCHEMA.items()
        ]
    )


def _segment_blockers(reach: pl.DataFrame, min_sessions: int) -> pl.DataFrame:
    """Segments that leave a touchpoint more often than the rest of the traffic does.

    The loss is charged where sessions leave: excess exits at T in the segment x the share of
    the rest that converts after continuing past T. Comparing conversion after reaching T
    instead would blame every page upstream of a failing checkout step for its losses.
    """
    totals = reach.filter(pl.col("dimension") == "all").select(
        "touchpoint",
        n_all="n",
        conv_all="conv",
        err_all="err",
        exit_all="exits",
        cont_conv_all="cont_conv",
    )
    seg = (
        reach.filter(pl.col("dimension") != "all")
        .join(totals, on="touchpoint")
        .with_columns(
            n_rest=pl.col("n_all") - pl.col("n"),
            conv_rest=pl.col("conv_all") - pl.col("conv"),
            err_rest=pl.col("err_all") - pl.col("err"),
            exits_rest=pl.col("exit_all") - pl.col("exits"),
            cont_conv_rest=pl.col("cont_conv_all") - pl.col("cont_conv"),
        )
        .filter((pl.col("n") >= min_sessions) & (pl.col("n_rest") >= min_sessions))
    )
    exit_low, _ = wilson_bounds(pl.col("exits"), pl.col("n"), z=SEGMENT_Z)
    _, exit_rest_high = wilson_bounds(pl.col("exits_rest"), pl.col("n_rest"), z=SEGMENT_Z)
    continued_rest = pl.col("n_rest") - pl.col("exits_rest")
    conv_after_continuing = (
        pl.when(continued_rest > 0).then(pl.col("cont_conv_rest") / continued_rest).otherwise(0.0)
    )
    rate = pl.col("conv") / pl.col("n")
    rate_rest = pl.col("conv_rest") / pl.col("n_rest")
    err_rate = pl.col("err") / pl.col("n")
    err_rest = pl.col("err_rest") / pl.col("n_rest")
    exit_rate = pl.col("exits") / pl.col("n")
    exit_rest = pl.col("exits_rest") / pl.col("n_rest")
    seg = seg.with_columns(
        lost_conversions=pl.col("n")
        * (exit_low - exit_rest_high).clip(lower_bound=0)
        * conv_after_continuing,
        conversion_rate_segment=rate,
        conversion_rate_rest=rate_rest,
        error_rate=err_rate,
        exit_rate=exit_rate,
        kind=pl.when((err_rate >= 0.1) & (err_rate >= 3 * err_rest))
        .then(pl.lit("error"))
        .otherwise(pl.lit("segment")),
        segment=pl.format("{}={}", pl.col("dimension"), pl.col("value")),
        n_sessions=pl.col("n").cast(pl.Int64),
        evidence=pl.format(
            "{} sessions of {} reach {}: {}% end there vs {}% of the rest; error rate {}% vs {}%; {}% convert vs {}%",
            pl.col("n"),
            pl.format("{}={}", pl.col("dimension"), pl.col("value")),
            pl.col("touchpoint"),
            (exit_rate * 100).round(1),
            (exit_rest * 100).round(1),
            (err_rate * 100).round(1),
            (err_rest * 100).round(1),
            (rate * 100).round(1),
            (rate_rest * 100).round(1),
        ),
    )
    # Of the segments that lose about as much on one touchpoint, name the most specific one:
    # the one that leaves most often (the broader ones are diluted versions of it).
    # One row per touchpoint: an `error` and a `segment` row there would count one loss twice.
    return (
        seg.with_columns(best=pl.col("lost_conversions").max().over("touchpoint"))
        .filter(pl.col("lost_conversions") >= 0.8 * pl.col("best"))
        .sort("exit_rate", "n_sessions", "segment", descending=[True, True, False])
        .unique(subset=["touchpoint"], keep="first", maintain_order=True)
    )


def _loop_pieces(
    journey_steps: pl.LazyFrame, sessions: pl.LazyFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(loops, visits): per pair (a, b), the sessions bouncing between a and b at least twice
    (n) and how many convert (conv); and per set of touchpoints visited, the sessions that
    visited exactly that set and how many convert. Which pairs loop is known only once every
    partition is counted: the visit sets, a few thousand, keep "visited both" countable."""
    ordered = in_session_order(
        journey_steps.select("session_id", "position", "touchpoint").collect(), "position"
    ).lazy()
    outcome = sessions.select("session_id", "is_converted")
    bounces = (
        ordered.with_columns(
            nxt=_previous_in_session("touchpoint", -1),
            nxt2=_previous_in_session("touchpoint", -2),
        )
        .filter(pl.col("nxt2") == pl.col("touchpoint"))
        # As text: a pair is named in text order, which categorical codes do not follow.
        .with_columns(pl.col("touchpoint", "nxt").cast(pl.String))
        .with_columns(
            a=pl.min_horizontal("touchpoint", "nxt"), b=pl.max_horizontal("touchpoint", "nxt")
        )
        .group_by("session_id", "a", "b")
        .agg(n_bounces=pl.len())
    )
    loops = (
        bounces.filter(pl.col("n_bounces") >= 2)
        .join(outcome, on="session_id")
        .group_by("a", "b")
        .agg(_OUTCOME_COUNTS)
    )
    visits = (
        ordered.select("session_id", "touchpoint")
        .unique()
        .group_by("session_id")
        .agg(touchpoints=pl.col("touchpoint").sort())
        .join(outcome, on="session_id")
        .group_by("touchpoints")
        .agg(_OUTCOME_COUNTS)
        .with_columns(pl.col("touchpoints").cast(pl.List(pl.String)).list.sort())
    )
    return loops.collect(), visits.collect()


_OUTCOME_COUNTS = [
    pl.len().cast(pl.Int64).alias("n"),
    pl.col("is_converted").sum().cast(pl.Int64).alias("conv"),
]


def _loop_blockers(loops: pl.DataFrame, visits: pl.DataFrame, min_sessions: int) -> pl.DataFrame:
    members = visits.with_row_index("visit_set").explode("touchpoints")
    # Sessions that visited both touchpoints of a looping pair, looping or not.
    both = (
        loops.select("a", "b")
        .join(members, left_on="a", right_on="touchpoints")
        .join(
            members.select("visit_set", "touchpoints"),
            left_on=["b", "visit_set"],
            right_on=["touchpoints", "visit_set"],
        )
        .group_by("a", "b")
        .agg(n_both=pl.col("n").sum(), conv_both=pl.col("conv").sum())
    )
    stats = (
        loops.join(both, on=["a", "b"])
        .with_columns(
            n_rest=pl.col("n_both") - pl.col("n"), conv_rest=pl.col("conv_both") - pl.col("conv")
        )
        .filter((pl.col("n") >= min_sessions) & (pl.col("n_rest") >= min_sessions))
    )
    _, loop_high = wilson_bounds(pl.col("conv"), pl.col("n"))
    rest_low, _ = wilson_bounds(pl.col("conv_rest"), pl.col("n_rest"))
    rate = pl.col("conv") / pl.col("n")
    rate_rest = pl.col("conv_rest") / pl.col("n_rest")
    return stats.with_columns(
        touchpoint=pl.format("{} <> {}", pl.col("a"), pl.col("b")),
        segment=pl.lit("all"),
        kind=pl.lit("loop"),
        lost_conversions=pl.col("n") * (rest_low - loop_high).clip(lower_bound=0),
        n_sessions=pl.col("n").cast(pl.Int64),
        conversion_rate_segment=rate,
        conversion_rate_rest=rate_rest,
        evidence=pl.format(
            "{} sessions bounce between {} and {} at least twice: {}% convert vs {}% of the {} sessions that visit both without bouncing",
            pl.col("n"),
            pl.col("a"),
            pl.col("b"),
            (rate * 100).round(1),
            (rate_rest * 100).round(1),
            pl.col("n_rest"),
        ),
    )


def _dead_end_blockers(
    mid_reach: pl.DataFrame, stages: pl.DataFrame, min_sessions: int
) -> pl.DataFrame:
    # Landing pages are left out (`mid_reach`): a bounce on arrival is a different phenomenon.
    # Service pages (returns, contact) end visits by nature: they are not conversion dead ends.
    judged = (
        mid_reach.join(stages, on="touchpoint")
        .filter(pl.col("stage") != SERVICE_STAGE)
        .filter(pl.col("n") >= min_sessions)
    )
    # The reference is the stage's *other* pages: counting a dead end in its own median would
    # raise the bar it must clear (in a two-page stage, to twice the mean of both: unreachable).
    others = judged.select(
        "stage", other="touchpoint", other_n="n", other_exits="exits", other_conv="conv"
    )
    usual = (
        judged.select("touchpoint", "stage")
        .join(others, on="stage")
        .filter(pl.col("other") != pl.col("touchpoint"))
        .group_by("touchpoint")
        .agg(
            usual_exit_rate=(pl.col("other_exits") / pl.col("other_n")).median(),
            stage_conversion_rate=pl.col("other_conv").sum() / pl.col("other_n").sum(),
        )
    )
    exit_low, _ = wilson_bounds(pl.col("exits"), pl.col("n"))
    exit_rate = pl.col("exits") / pl.col("n")
    return (
        judged.join(usual, on="touchpoint")
        .filter((exit_rate >= DEAD_END_EXIT_RATE) & (exit_low > 2 * pl.col("usual_exit_rate")))
        .with_columns(
            segment=pl.lit("all"),
            kind=pl.lit("dead_end"),
            lost_conversions=(pl.col("n") * (exit_low - pl.col("usual_exit_rate"))).clip(
                lower_bound=0
            )
            * pl.col("stage_conversion_rate"),
            n_sessions=pl.col("n").cast(pl.Int64),
            exit_rate=exit_rate,
            conversion_rate_segment=pl.col("conv") / pl.col("n"),
            conversion_rate_rest=pl.col("stage_conversion_rate"),
            evidence=pl.format(
                "{}% of the {} sessions that reach {} mid-journey end there, vs {}% usual for {} pages; those pages convert {}%",
                (exit_rate * 100).round(1),
                pl.col("n"),
                pl.col("touchpoint"),
                (pl.col("usual_exit_rate") * 100).round(1),
                pl.col("stage"),
                (pl.col("stage_conversion_rate") * 100).round(1),
            ),
        )
    )


# ------------------------------------------------------------ marts, partition by partition


@dataclass(frozen=True)
class MartPieces:
    """What the journey marts need from some sessions, in pieces that add up: the pieces of
    disjoint sets of whole sessions merge (`merge_pieces`) into the pieces of their union, so
    marts built partition by partition (`marts_from_pieces`) equal marts built in one pass.

    Counts add up. Medians do not: `transition_seconds` and the converted rows of `paths`
    keep the values themselves (one per transition between two real steps, one per converted
    session), a fraction of the steps that is held as numbers and categorical codes.
    """

    transitions: pl.DataFrame
    transition_seconds: pl.DataFrame
    reach: pl.DataFrame
    mid_reach: pl.DataFrame
    stages: pl.DataFrame
    loops: pl.DataFrame
    visits: pl.DataFrame
    paths: pl.DataFrame


# The key columns of each piece: merged pieces sum everything else per key. None: values,
# concatenated.
_PIECE_KEYS: dict[str, list[str] | None] = {
    "transitions": ["segment_type", "segment_value", *TRANSITION_COLUMNS],
    "transition_seconds": None,
    "reach": ["dimension", "value", "touchpoint"],
    "mid_reach": ["touchpoint"],
    "stages": ["touchpoint", "stage"],
    "loops": ["a", "b"],
    "visits": ["touchpoints"],
    "paths": ["outcome", "path", "path_folded", "n_steps", "seconds_to_convert"],
}


def mart_pieces(journey_steps: pl.DataFrame, sessions: pl.DataFrame) -> MartPieces:
    """The pieces of the journey marts over these journey steps and their sessions (whole
    sessions: a session's steps must not be split between two calls)."""
    steps, outcome = _numbered_sessions(journey_steps, sessions)
    # Grouped by touchpoint, the pieces compare categorical codes instead of text; paths
    # join the names, which text does faster.
    coded = steps.with_columns(pl.col("touchpoint").cast(pl.Categorical)).lazy()
    steps, outcome = steps.lazy(), outcome.lazy()
    transitions, seconds = _transition_pieces(journey_edges(steps, outcome).collect())
    reach, mid_reach = _reach_pieces(coded, outcome)
    loops, visits = _loop_pieces(coded, outcome)
    return MartPieces(
        transitions=transitions,
        transition_seconds=seconds,
        reach=reach,
        mid_reach=mid_reach,
        stages=_stage_counts(steps),
        loops=loops,
        visits=visits,
        paths=_spelled_out(_path_counts(_coded_paths(steps, outcome))),
    )


def _numbered_sessions(
    journey_steps: pl.DataFrame, sessions: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both frames with `session_id` replaced by a number, the same in both; steps in session
    order, sessions without journey steps dropped.

    The pieces only join, group and count distinct sessions, and no session id reaches a
    piece: on integers each of those costs a fraction of what it costs on text ids (10M
    events: 15 s of pieces on text ids)."""
    steps = in_session_order(journey_steps, "position")
    first_row = (pl.col("session_id") != pl.col("session_id").shift(1)).fill_null(True)
    steps = steps.with_columns(number=first_row.cast(pl.UInt32).cum_sum())
    numbers = steps.filter(first_row).select("session_id", "number")
    # Only the columns the pieces read are joined: a session row carries twenty, mostly text.
    read = sessions.select("session_id", "is_converted", "started_at", *SESSION_SEGMENTS)
    sessions = read.join(numbers, on="session_id").drop("session_id")
    return (
        steps.drop("session_id").rename({"number": "session_id"}),
        sessions.rename({"number": "session_id"}),
    )


def merge_pieces(pieces: list[MartPieces]) -> MartPieces:
    """The pieces of the union of the pieces' (disjoint) session sets."""
    if len(pieces) == 1:
        return pieces[0]
    merged = {}
    for name, keys in _PIECE_KEYS.items():
        frame = pl.concat([getattr(p, name) for p in pieces])
        if keys is not None:
            columns = frame.columns
            frame = frame.group_by(keys).agg(pl.exclude(keys).sum()).select(columns)
        merged[name] = frame
    return MartPieces(**merged)


# Pieces merged at a time (see add_piece).
PIECES_MERGED = 8

WeightedPieces = list[tuple[int, MartPieces]]


def add_piece(pieces: WeightedPieces, piece: MartPieces) -> WeightedPieces:
    """`pieces` (each with the number of partitions it holds) and one more partition's.

    Merged as they come, since the counts of many partitions overlap, but only pieces of
    equal weight, PIECES_MERGED at a time: a partition's rows are merged about log8(partitions)
    times. Merging into one growing piece every few partitions made the merges' cost grow with
    the square of the run (100M events: 7.7 s of merges, the last ones six times the first).
    """
    pieces = [*pieces, (1, piece)]
    while len(pieces) >= PIECES_MERGED and len({w for w, _ in pieces[-PIECES_MERGED:]}) == 1:
        weight = pieces[-1][0] * PIECES_MERGED
        merged = merge_pieces([p for _, p in pieces[-PIECES_MERGED:]])
        pieces = [*pieces[:-PIECES_MERGED], (weight, merged)]
    return pieces


def merge_weighted(pieces: WeightedPieces) -> MartPieces:
    """The pieces `add_piece` gathered, merged into one."""
    return merge_pieces([p for _, p in pieces])


def marts_from_pieces(pieces: MartPieces) -> dict[str, pl.DataFrame]:
    """Every journey mart but the graph metrics: transitions, transitions_by_segment, paths,
    path_lengths, blockers, and (for the touchpoints mart) exit_rates and stages."""
    return {
        "transitions": _transitions(pieces.transitions, pieces.transition_seconds),
        "transitions_by_segment": _transitions_by_segment(
            pieces.transitions, pieces.transition_seconds
        ),
        "paths": _top_paths(pieces.paths, top=50),
        "path_lengths": _path_lengths(pieces.paths),
        "blockers": _blockers(
            pieces.reach,
            pieces.mid_reach,
            pieces.stages,
            pieces.loops,
            pieces.visits,
            min_sessions=20,
            top=50,
        ),
        "exit_rates": _exit_rates(pieces.reach),
        "stages": _touchpoint_stage(pieces.stages),
    }
