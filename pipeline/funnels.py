"""Funnels and Sankey flows from the journey marts (Polars): what the report draws.

Everything here works on small, already aggregated frames, never on raw events, so the
report opens as fast at a million sessions as at a thousand. The central input is
`journeys`: one row per distinct journey (its touchpoints in order, up to and including the
first conversion step, as in `marts.journey_steps`) and outcome, with how many sessions made
it. `REPORT_INPUTS` holds the SQL that reads it and the other frames from the database;
`journeys_from_steps` is the same in Polars, for mart frames at hand.

Every chart and table of the report counts the same sessions with the same definitions: the
step Sankey's first column, the funnel's denominator, the KPIs and the `START` flow of
`marts.transitions` are all the journey sessions (human sessions unless
`bots.exclude_from_journeys = false`).

>>> import polars as pl
>>> journeys = pl.DataFrame(
...     {
...         "touchpoints": [["home", "cart"], ["home"]],
...         "is_converted": [True, False],
...         "n_sessions": [3, 5],
...     }
... )
>>> funnel(journeys, ["home", "cart"])["n_sessions"].to_list()
[8, 3]
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from pipeline.graph import CONVERSION, EXIT, START

OTHERS = "Others"
# The bucket's key among touchpoint names: a control character no touchpoint name or URL
# template can hold, so a touchpoint that happens to be called "Others" stays itself.
_OTHERS_KEY = "\x1fOthers"
# Node kinds of the Sankey frames. Sources: `entry` (a journey starts here) and `earlier`
# (steps before the drawn window); sinks: `drop_off`, `conversion` and `continues` (steps
# after the drawn window); `start` is the aggregate Sankey's session start.
NODE_KINDS = (
    "touchpoint",
    "others",
    "drop_off",
    "conversion",
    "continues",
    "entry",
    "earlier",
    "start",
)
SINK_KINDS = ("drop_off", "conversion", "continues")
SOURCE_KINDS = ("entry", "earlier", "start")
ALIGNS = ("start", "end")

JOURNEYS_SCHEMA = {
    "touchpoints": pl.List(pl.String()),
    "is_converted": pl.Boolean(),
    "n_sessions": pl.Int64(),
}
NODES_SCHEMA = {
    "id": pl.UInt32(),
    "column": pl.Int32(),
    "step": pl.Int32(),
    "kind": pl.String(),
    "touchpoint": pl.String(),
    "label": pl.String(),
    "n_sessions": pl.Int64(),
    "share_of_journeys": pl.Float64(),
    "pct_of_previous": pl.Float64(),
    "detail": pl.String(),
}
LINKS_SCHEMA = {
    "source": pl.UInt32(),
    "target": pl.UInt32(),
    "n_sessions": pl.Int64(),
    "pct_of_previous": pl.Float64(),
}
FUNNEL_SCHEMA = {
    "step": pl.Int32(),
    "touchpoint": pl.String(),
    "n_sessions": pl.Int64(),
    "share_of_journeys": pl.Float64(),
    "conversion_from_previous": pl.Float64(),
    "drop_off": pl.Int64(),
}

# The frames `report.render_report` draws, each read with `store.query(con, sql)`. Small by
# construction: `journeys` has one row per distinct journey, not per session.
_JOURNEY_SESSIONS = """
journey_sessions as (
    select *
    from marts.sessions
    where session_id in (select session_id from marts.journey_steps where position = 1)
)"""
_LATEST_OK_RUN = "(select max(run_id) from raw.runs where status = 'ok')"
REPORT_INPUTS: dict[str, str] = {
    "journeys": """
with steps as (
    select session_id, position, touchpoint from marts.journey_steps
),

sessions as (
    select session_id, is_converted from marts.sessions
),

session_journeys as (
    select
        list(steps.touchpoint order by steps.position) as touchpoints,
        sessions.is_converted,
    from steps
    join sessions using (session_id)
    group by steps.session_id, sessions.is_converted
),

final as (
    select touchpoints, is_converted, count(*) as n_sessions,
    from session_journeys
    group by all
)

select * from final order by n_sessions desc, is_converted
""",
    "kpis": f"""
with {_JOURNEY_SESSIONS.strip()},

final as (
    select
        count(*) as n_sessions,
        count(distinct person_id) as n_persons,
        count(*) filter (where is_converted) as n_converted,
        coalesce(sum(revenue), 0) as revenue,
        (select count(*) from marts.sessions where is_bot) as n_bot_sessions,
        min(started_at) as first_started_at,
        max(started_at) as last_started_at,
    from journey_sessions
)

select * from final
""",
    "segments": f"""
with {_JOURNEY_SESSIONS.strip()},

by_segment as (
    select
        if(grouping(device) = 0, 'device', 'channel') as dimension,
        coalesce(if(grouping(device) = 0, device, channel), 'unknown') as value,
        count(*) as n_sessions,
        count(distinct person_id) as n_persons,
        count(*) filter (where is_converted) as n_converted,
        coalesce(sum(revenue), 0) as revenue,
    from journey_sessions
    group by grouping sets ((device), (channel))
)

select * from by_segment
order by dimension, n_sessions desc, value
""",
    "transitions": """
select from_touchpoint, to_touchpoint, n_transitions, n_sessions
from marts.transitions
order by n_transitions desc, from_touchpoint, to_touchpoint
""",
    "blockers": """
select rank, touchpoint, segment, kind, lost_conversions, evidence, n_sessions
from marts.blockers
order by rank
""",
    "paths": """
select outcome, variant, rank, path, n_sessions, share, median_steps, median_seconds_to_convert
from marts.paths
order by outcome, variant, rank
""",
    "runs": """
select
    run_id,
    started_at,
    ended_at,
    status,
    version,
    n_read,
    n_accepted,
    n_duplicates,
    n_quarantined,
    cast(nulled_fields as varchar) as nulled_fields,
    n_persons,
    n_sessions,
    n_bot_sessions,
    error,
from raw.runs
order by run_id desc
limit 10
""",
    "run_files": f"""
select source, format, n_bytes, n_read, n_accepted, n_duplicates, n_quarantined
from raw.run_files
where run_id = {_LATEST_OK_RUN}
order by source
""",
    "quarantine": f"""
with quarantine as (
    select * from marts.quarantine_by_reason where run_id = {_LATEST_OK_RUN}
),

final as (
    select
        reason,
        cast(sum(count_rows) as bigint) as count_rows,
        count(*) as count_files,
        left(arg_min(example_raw, source), 300) as example_raw,
    from quarantine
    group by reason
)

select * from final order by count_rows desc, reason
""",
}


@dataclass(frozen=True)
class SankeyFlow:
    """A Sankey's nodes and links, and which journeys it covers.

    `nodes` (see `NODES_SCHEMA`): `id` (0, 1, ... in drawing order: by column, top to
    bottom), `column` (1 = leftmost), `step` (the journey step the node stands for: 1, 2, ...
    from the start; 0, -1, ... counting back from the last step when aligned at the end),
    `kind` (`NODE_KINDS`), `touchpoint` (null for synthetic nodes and "Others"), `label`,
    `n_sessions`, `share_of_journeys` (of the journeys the chart covers), `pct_of_previous`
    (of the sessions at the step before; null where that is not a meaningful base) and
    `detail` (what an "Others" bucket holds).
    `links`: `source`, `target` (node ids), `n_sessions`, `pct_of_previous` (share of the
    source node's sessions).
    """

    nodes: pl.DataFrame
    links: pl.DataFrame
    n_journeys: int  # every journey in the input
    n_covered: int  # the journeys this chart shows (first column, or all sources)
    n_steps: int
    anchor: str | None = None
    converted_only: bool = False
    align: str = "start"

    @property
    def coverage(self) -> float:
        """Share of all journeys the chart covers (0 when there are none)."""
        return self.n_covered / self.n_journeys if self.n_journeys else 0.0


# ------------------------------------------------------------------------------ journeys


def journeys_from_steps(
    journey_steps: pl.LazyFrame | pl.DataFrame, sessions: pl.LazyFrame | pl.DataFrame
) -> pl.DataFrame:
    """Distinct journeys with their session counts: the Polars twin of
    `REPORT_INPUTS["journeys"]`.

    Columns: touchpoints (list, in step order), is_converted, n_sessions.
    """
    paths = (
        journey_steps.lazy()
        .group_by("session_id")
        .agg(touchpoints=pl.col("touchpoint").sort_by("position"))
        .join(sessions.lazy().select("session_id", "is_converted"), on="session_id")
    )
    return (
        paths.group_by("touchpoints", "is_converted")
        .agg(n_sessions=pl.len().cast(pl.Int64))
        .sort("n_sessions", "is_converted", descending=[True, False])
        .collect()
        .cast(JOURNEYS_SCHEMA)
    )


def _clean_journeys(journeys: pl.DataFrame) -> pl.DataFrame:
    return (
        journeys.select(list(JOURNEYS_SCHEMA))
        .cast(JOURNEYS_SCHEMA)
        .with_columns(pl.col("is_converted").fill_null(False))
        .filter((pl.col("n_sessions") > 0) & (pl.col("touchpoints").list.len() > 0))
    )


# ----------------------------------------------------------------------------- step Sankey


def step_sankey(
    journeys: pl.DataFrame,
    n_steps: int = 6,
    top_k: int = 6,
    anchor: str | None = None,
    converted_only: bool = False,
    align: str = "start",
) -> SankeyFlow:
    """The journeys step by step: column k holds the k-th touchpoint of each journey.

    Parameters
    ----------
    journeys : DataFrame
        Distinct journeys (`REPORT_INPUTS["journeys"]` or `journeys_from_steps`).
    n_steps : int
        Steps drawn. With align "start", journeys longer than that end in one `continues`
        node after the last column; with align "end", they enter from one `earlier` node.
    top_k : int
        Touchpoints shown per step; the rest of that step is one "Others" node (only when
        it would hold two touchpoints or more, so a column has at most top_k + 1 of them).
    anchor : str, optional
        Draw the journeys that visit this touchpoint, from their first visit to it on
        (column 1 is the anchor).
    converted_only : bool
        Only converted journeys.
    align : {"start", "end"}
        "start": column k is step k; after each step a journey goes on to the next step,
        drops off (`drop_off` node) or has converted (`conversion` node). "end": the
        columns count back from each journey's last step (for converted journeys the
        conversion step), which is followed by one `conversion` or `drop_off` node; a
        journey enters at an `entry` node where it starts, or from `earlier` when it is
        longer than n_steps.

    Returns
    -------
    SankeyFlow
        Nodes and links (see `SankeyFlow`). Flows are conserved: every touchpoint and
        "Others" node passes on exactly the sessions it holds, and receives them too unless
        it is in the first column of a start-aligned chart; an "Others" node holds exactly
        the sessions of the touchpoints it replaces.

    Examples
    --------
    >>> import polars as pl
    >>> journeys = pl.DataFrame(
    ...     {"touchpoints": [["home", "cart"]], "is_converted": [True], "n_sessions": [2]}
    ... )
    >>> step_sankey(journeys).nodes["label"].to_list()
    ['home (step 1)', 'cart (step 2)', 'Converted at step 2']
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    everything = _clean_journeys(journeys)
    n_journeys = int(everything["n_sessions"].sum())
    chosen = everything.filter(pl.col("is_converted")) if converted_only else everything
    if anchor:
        first_visit = pl.col("touchpoints").list.eval((pl.element() == anchor).arg_max())
        chosen = chosen.filter(pl.col("touchpoints").list.contains(anchor)).with_columns(
            pl.col("touchpoints").list.slice(first_visit.list.first())
        )
    n_covered = int(chosen["n_sessions"].sum())
    if align == "end":
        chosen = chosen.with_columns(pl.col("touchpoints").list.reverse())
    keyed_nodes, keyed_links = _step_flow(chosen, n_steps, top_k, forward=align == "start")
    nodes, links = _number(keyed_nodes, keyed_links, n_covered)
    return SankeyFlow(
        nodes=_step_labels(nodes, n_covered, n_steps, forward=align == "start"),
        links=links,
        n_journeys=n_journeys,
        n_covered=n_covered,
        n_steps=n_steps,
        anchor=anchor or None,
        converted_only=converted_only,
        align=align,
    )


def _step_flow(
    chosen: pl.DataFrame, n_steps: int, top_k: int, forward: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Nodes keyed by (column, kind, name) and the links between those keys.

    Sequences are walked from their first element: the journey's start (forward) or, for
    align "end", its last step (the sequences arrive reversed). `walk` counts those steps;
    `column_of` places a walked step in the drawing.
    """
    walked = chosen.with_row_index("journey").with_columns(
        length=pl.col("touchpoints").list.len().cast(pl.Int32),
        window=pl.col("touchpoints").list.head(n_steps),
    )
    visits = (
        walked.select(
            "journey",
            "n_sessions",
            touchpoint="window",
            walk=pl.int_ranges(1, pl.col("window").list.len() + 1, dtype=pl.Int32),
        )
        .explode("touchpoint", "walk")
        .with_columns(pl.col("walk").cast(pl.Int32))
    )
    buckets = _buckets(visits, top_k)
    here = visits.join(buckets.select("walk", "touchpoint", "name"), on=["walk", "touchpoint"])

    def column_of(walk: pl.Expr) -> pl.Expr:
        # Forward: step k is column k. Backward: the last step is column n_steps + 1, the
        # step before it column n_steps, ...; column 1 is the `earlier` source.
        return (walk if forward else n_steps + 2 - walk).cast(pl.Int32)

    step_nodes = (
        buckets.group_by("walk", "name")
        .agg(
            n_sessions=pl.col("n_sessions").sum(),
            detail=pl.when(pl.col("name").first() == _OTHERS_KEY)
            .then(_others_detail())
            .otherwise(pl.lit(None, pl.String)),
        )
        .select(
            column=column_of(pl.col("walk")),
            step=pl.col("walk") if forward else 1 - pl.col("walk"),
            kind=_kind_of("name"),
            name="name",
            n_sessions="n_sessions",
            detail="detail",
        )
    )
    pairs = (
        here.join(
            here.select("journey", walk=pl.col("walk") - 1, next_name="name"),
            on=["journey", "walk"],
        )
        .group_by("walk", "name", "next_name")
        .agg(n_sessions=pl.col("n_sessions").sum())
    )
    inner = pairs.select(
        from_column=column_of(pl.col("walk")),
        from_kind=_kind_of("name"),
        from_name="name",
        to_column=column_of(pl.col("walk") + 1),
        to_kind=_kind_of("next_name"),
        to_name="next_name",
        n_sessions="n_sessions",
    )
    # Where a walk stops: the journey ended there, or it goes on beyond the drawn window.
    beyond = pl.col("length") > n_steps
    if forward:
        stop_kind = (
            pl.when(beyond)
            .then(pl.lit("continues"))
            .when(pl.col("is_converted"))
            .then(pl.lit("conversion"))
            .otherwise(pl.lit("drop_off"))
        )
        stop_column = column_of(pl.col("walk") + 1)
    else:
        stop_kind = pl.when(beyond).then(pl.lit("earlier")).otherwise(pl.lit("entry"))
        stop_column = (
            pl.when(beyond).then(pl.lit(1, pl.Int32)).otherwise(column_of(pl.col("walk") + 1))
        )
    stops = (
        walked.select(
            "journey",
            "is_converted",
            "length",
            walk=pl.min_horizontal("length", pl.lit(n_steps, pl.Int32)),
        )
        .join(here.select("journey", "walk", "name", "n_sessions"), on=["journey", "walk"])
        .with_columns(stop_kind=stop_kind, stop_column=stop_column)
        .group_by("walk", "name", "stop_kind", "stop_column")
        .agg(n_sessions=pl.col("n_sessions").sum())
    )
    stop_links = stops.select(
        from_column=column_of(pl.col("walk")),
        from_kind=_kind_of("name"),
        from_name="name",
        to_column="stop_column",
        to_kind="stop_kind",
        to_name="stop_kind",
        n_sessions="n_sessions",
    )
    stop_nodes = stop_links.group_by("to_column", "to_kind", "to_name").agg(
        n_sessions=pl.col("n_sessions").sum()
    )
    if forward:
        links = [inner, stop_links]
        stop_step = pl.col("to_column") - 1  # the step after which the journeys stopped
        extra_nodes = []
    else:
        # Every journey ends in its outcome, after its last step (the last column).
        outcome = (
            here.filter(pl.col("walk") == 1)
            .join(walked.select("journey", "is_converted"), on="journey")
            .with_columns(
                outcome=pl.when(pl.col("is_converted"))
                .then(pl.lit("conversion"))
                .otherwise(pl.lit("drop_off"))
            )
            .group_by("name", "outcome")
            .agg(n_sessions=pl.col("n_sessions").sum())
        )
        outcome_links = outcome.select(
            from_column=pl.lit(n_steps + 1, pl.Int32),
            from_kind=_kind_of("name"),
            from_name="name",
            to_column=pl.lit(n_steps + 2, pl.Int32),
            to_kind="outcome",
            to_name="outcome",
            n_sessions="n_sessions",
        )
        # Walked backwards, drawn forwards: the step links and the entries point the other
        # way round.
        links = [_reverse(inner), _reverse(stop_links), outcome_links]
        # An entry in column c feeds column c + 1 (step c - n_steps, the journey's first);
        # `earlier` feeds the journeys longer than the window.
        stop_step = (
            pl.when(pl.col("to_kind") == "earlier")
            .then(pl.lit(-n_steps))
            .otherwise(pl.col("to_column") - n_steps)
        )
        extra_nodes = [
            outcome_links.group_by("to_column", "to_kind", "to_name")
            .agg(n_sessions=pl.col("n_sessions").sum())
            .select(
                column="to_column",
                step=pl.lit(1),
                kind="to_kind",
                name="to_name",
                n_sessions="n_sessions",
                detail=pl.lit(None, pl.String),
            )
        ]
    stop_nodes = stop_nodes.select(
        column="to_column",
        step=stop_step,
        kind="to_kind",
        name="to_name",
        n_sessions="n_sessions",
        detail=pl.lit(None, pl.String),
    )
    node_types = {"column": pl.Int32, "step": pl.Int32, "n_sessions": pl.Int64}
    nodes = pl.concat([f.cast(node_types) for f in [step_nodes, stop_nodes, *extra_nodes]])
    links = pl.concat([f.cast({"n_sessions": pl.Int64}) for f in links])
    return nodes, links


def _kind_of(name_column: str) -> pl.Expr:
    return (
        pl.when(pl.col(name_column) == _OTHERS_KEY)
        .then(pl.lit("others"))
        .otherwise(pl.lit("touchpoint"))
    )


def _reverse(links: pl.DataFrame) -> pl.DataFrame:
    """The same links pointing the other way."""
    return links.select(
        from_column="to_column",
        from_kind="to_kind",
        from_name="to_name",
        to_column="from_column",
        to_kind="from_kind",
        to_name="from_name",
        n_sessions="n_sessions",
    )


def _buckets(visits: pl.DataFrame, top_k: int) -> pl.DataFrame:
    """Per walked step and touchpoint: its sessions and the node it is drawn in (`name`:
    itself, or "Others" beyond the step's top_k when that bucket holds two or more)."""
    counted = (
        visits.group_by("walk", "touchpoint")
        .agg(n_sessions=pl.col("n_sessions").sum())
        .sort(["walk", "n_sessions", "touchpoint"], descending=[False, True, False])
        .with_columns(
            rank=pl.int_range(1, pl.len() + 1).over("walk"),
            n_touchpoints=pl.len().over("walk"),
        )
    )
    bucketed = (pl.col("n_touchpoints") > top_k + 1) & (pl.col("rank") > top_k)
    return counted.with_columns(
        name=pl.when(bucketed).then(pl.lit(_OTHERS_KEY)).otherwise(pl.col("touchpoint"))
    )


def _others_detail(shown: int = 6) -> pl.Expr:
    """What an "Others" node holds, largest first: "search 40, login 30 (+3 more)"."""
    parts = pl.format("{} {}", pl.col("touchpoint"), pl.col("n_sessions")).sort_by(
        pl.col("n_sessions"), pl.col("touchpoint"), descending=[True, False]
    )
    more = pl.len().cast(pl.Int64) - shown
    return pl.concat_str(
        parts.head(shown).str.join(", "),
        pl.when(more > 0).then(pl.format(" (+{} more)", more)).otherwise(pl.lit("")),
    )


# Top to bottom within a column: the journeys that go on, then how they end (conversions
# next to drop-offs at the bottom, so their thin bands do not cross the whole chart).
_KIND_ORDER = {
    "start": 0,
    "touchpoint": 1,
    "others": 2,
    "continues": 3,
    "earlier": 3,
    "entry": 4,
    "conversion": 5,
    "drop_off": 6,
}


def _number(
    nodes: pl.DataFrame, links: pl.DataFrame, n_covered: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give the keyed nodes ids in drawing order (by column, then top to bottom) and point
    the links at them; add shares."""
    numbered = (
        nodes.with_columns(order=pl.col("kind").replace_strict(_KIND_ORDER, return_dtype=pl.Int32))
        .sort(["column", "order", "n_sessions", "name"], descending=[False, False, True, False])
        .with_row_index("id")
        .with_columns(
            touchpoint=pl.when(pl.col("kind") == "touchpoint").then(pl.col("name")),
            share_of_journeys=pl.col("n_sessions") / n_covered if n_covered else pl.lit(0.0),
        )
        .drop("order")
    )
    keys = numbered.select("id", "column", "kind", "name", "n_sessions")
    linked = (
        links.join(
            keys.rename(
                {
                    "id": "source",
                    "column": "from_column",
                    "kind": "from_kind",
                    "name": "from_name",
                    "n_sessions": "source_sessions",
                }
            ),
            on=["from_column", "from_kind", "from_name"],
        )
        .join(
            keys.drop("n_sessions").rename(
                {"id": "target", "column": "to_column", "kind": "to_kind", "name": "to_name"}
            ),
            on=["to_column", "to_kind", "to_name"],
        )
        .select(
            "source",
            "target",
            "n_sessions",
            pct_of_previous=pl.col("n_sessions") / pl.col("source_sessions"),
        )
        .sort("source", "target")
        .cast(LINKS_SCHEMA)
    )
    return numbered, linked


def _step_labels(nodes: pl.DataFrame, n_covered: int, n_steps: int, forward: bool) -> pl.DataFrame:
    """Labels ("cart (step 3)") and, forwards, each node's share of the step before it."""
    labels = []
    for kind, name, step in nodes.select("kind", "name", "step").iter_rows():
        if kind in ("touchpoint", "others"):
            where = f"step {step}" if forward else f"{-step} before" if step else "last"
            labels.append(f"{OTHERS if kind == 'others' else name} ({where})")
        elif kind == "drop_off":
            labels.append(f"Drop-off after step {step}" if forward else "Dropped off")
        elif kind == "conversion":
            labels.append(f"Converted at step {step}" if forward else "Converted")
        elif kind == "continues":
            labels.append(f"Continues past step {step}")
        elif kind == "earlier":
            labels.append(f"Earlier steps (journeys over {n_steps} steps)")
        else:  # entry: it feeds the journeys' first step, `step` (0 = last) counts back
            length = 1 - step
            labels.append(f"Start of {length}-step journeys")
    nodes = nodes.with_columns(label=pl.Series(labels, dtype=pl.String))
    if forward:
        per_step = (
            nodes.filter(pl.col("kind").is_in(["touchpoint", "others"]))
            .group_by("step")
            .agg(base=pl.col("n_sessions").sum())
        )
        per_step = pl.concat(
            [pl.DataFrame({"step": [0], "base": [n_covered]}).cast(per_step.schema), per_step]
        )
        # A step's node compares with the step before; a stop after step k with step k.
        base_step = (
            pl.when(pl.col("kind").is_in(SINK_KINDS))
            .then(pl.col("step"))
            .otherwise(pl.col("step") - 1)
        )
        nodes = (
            nodes.with_columns(base_step=base_step.cast(pl.Int32))
            .join(per_step.rename({"step": "base_step"}), on="base_step", how="left")
            .with_columns(pct_of_previous=pl.col("n_sessions") / pl.col("base"))
            .sort("id")
        )
    else:
        nodes = nodes.with_columns(pct_of_previous=pl.lit(None, pl.Float64))
    return nodes.select(list(NODES_SCHEMA)).cast(NODES_SCHEMA)


# ------------------------------------------------------------------------ aggregate Sankey


def aggregate_sankey(transitions: pl.DataFrame, top_k: int = 10) -> SankeyFlow:
    """Touchpoint-to-touchpoint flow of `marts.transitions`, in two columns.

    Left: where a transition comes from (`Session start` and each touchpoint); right: where
    it goes (each touchpoint, `Conversion`, `Drop-off`). Values are transitions (a session
    passing a touchpoint twice counts twice), so each touchpoint's left node equals its
    right node: every visit is entered once and left once. The top_k touchpoints by visits
    are drawn; the rest are "Others" on both sides. Two columns instead of a chain keep the
    loops of real journeys (cart > shipping > cart) readable.

    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {
    ...         "from_touchpoint": ["START", "home"],
    ...         "to_touchpoint": ["home", "EXIT"],
    ...         "n_transitions": [4, 4],
    ...     }
    ... )
    >>> aggregate_sankey(transitions).nodes["label"].to_list()
    ['Session start', 'home →', '→ home', 'Drop-off (exit)']
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    edges = transitions.select(
        "from_touchpoint", "to_touchpoint", pl.col("n_transitions").cast(pl.Int64)
    ).filter(pl.col("n_transitions") > 0)
    visits = (
        edges.filter(~pl.col("to_touchpoint").is_in([CONVERSION, EXIT]))
        .group_by(touchpoint="to_touchpoint")
        .agg(n_sessions=pl.col("n_transitions").sum())
        .with_columns(walk=pl.lit(1, pl.Int32))
    )
    buckets = _buckets(visits, top_k).select("touchpoint", "name")
    synthetic = pl.DataFrame(
        {"touchpoint": [START, CONVERSION, EXIT], "name": [START, CONVERSION, EXIT]}
    )
    names = pl.concat([buckets, synthetic])
    counted = edges.join(
        names.rename({"touchpoint": "from_touchpoint", "name": "from_name"}), on="from_touchpoint"
    ).join(names.rename({"touchpoint": "to_touchpoint", "name": "to_name"}), on="to_touchpoint")
    links = (
        counted.group_by("from_name", "to_name")
        .agg(n_sessions=pl.col("n_transitions").sum())
        .select(
            from_column=pl.lit(1, pl.Int32),
            from_kind=_aggregate_kind("from_name"),
            from_name="from_name",
            to_column=pl.lit(2, pl.Int32),
            to_kind=_aggregate_kind("to_name"),
            to_name="to_name",
            n_sessions="n_sessions",
        )
    )
    details = (
        buckets.join(visits.select("touchpoint", "n_sessions"), on="touchpoint")
        .filter(pl.col("name") == _OTHERS_KEY)
        .select(pl.lit(_OTHERS_KEY).alias("name"), detail=_others_detail())
        .filter(pl.col("detail").is_not_null() & (pl.col("detail") != ""))
    )
    sides = []
    for side, column in (("from", 1), ("to", 2)):
        sides.append(
            links.group_by(kind=f"{side}_kind", name=f"{side}_name")
            .agg(n_sessions=pl.col("n_sessions").sum())
            .with_columns(column=pl.lit(column, pl.Int32), step=pl.lit(column, pl.Int32))
        )
    nodes = (
        pl.concat(sides)
        .join(details, on="name", how="left")
        .select("column", "step", "kind", "name", "n_sessions", "detail")
    )
    n_journeys = int(edges.filter(pl.col("from_touchpoint") == START)["n_transitions"].sum())
    nodes, links = _number(nodes, links, n_journeys)
    labels = []
    for kind, name, column in nodes.select("kind", "name", "column").iter_rows():
        labels.append(
            {
                "start": "Session start",
                "conversion": "Conversion",
                "drop_off": "Drop-off (exit)",
            }.get(kind, _aggregate_label(OTHERS if kind == "others" else name, column))
        )
    # Transitions are not journeys: no share of journeys, and no "previous step" either.
    nodes = nodes.with_columns(
        label=pl.Series(labels, dtype=pl.String),
        share_of_journeys=pl.lit(None, pl.Float64),
        pct_of_previous=pl.lit(None, pl.Float64),
    )
    return SankeyFlow(
        nodes=nodes.select(list(NODES_SCHEMA)).cast(NODES_SCHEMA),
        links=links,
        n_journeys=n_journeys,
        n_covered=n_journeys,
        n_steps=1,
    )


def _aggregate_label(name: str, column: int) -> str:
    return f"{name} →" if column == 1 else f"→ {name}"


def _aggregate_kind(name_column: str) -> pl.Expr:
    name = pl.col(name_column)
    return (
        pl.when(name == START)
        .then(pl.lit("start"))
        .when(name == CONVERSION)
        .then(pl.lit("conversion"))
        .when(name == EXIT)
        .then(pl.lit("drop_off"))
        .when(name == _OTHERS_KEY)
        .then(pl.lit("others"))
        .otherwise(pl.lit("touchpoint"))
    )


# ---------------------------------------------------------------------------------- funnel


def funnel(journeys: pl.DataFrame, steps: list[str] | tuple[str, ...]) -> pl.DataFrame:
    """Sessions that reached funnel steps 1..i in that order within their journey.

    Steps need not be adjacent (product > search > cart reaches product > cart), but must
    come in order. Counts never rise from one step to the next.

    Columns: step (1-based), touchpoint, n_sessions, share_of_journeys (of every journey),
    conversion_from_previous (n_sessions / the previous step's; for step 1, / all
    journeys), drop_off (the previous step's sessions that did not reach this one; for step
    1, the journeys that never reached it).

    >>> import polars as pl
    >>> journeys = pl.DataFrame(
    ...     {
    ...         "touchpoints": [["a", "x", "b"], ["b", "a"], ["a"]],
    ...         "is_converted": [False, False, False],
    ...         "n_sessions": [1, 1, 1],
    ...     }
    ... )
    >>> funnel(journeys, ["a", "b"])["n_sessions"].to_list()
    [3, 1]
    """
    if not steps:
        raise ValueError("a funnel needs at least one step")
    numbered = _clean_journeys(journeys).with_row_index("journey")
    n_journeys = int(numbered["n_sessions"].sum())
    visits = numbered.select(
        "journey",
        touchpoint="touchpoints",
        position=pl.int_ranges(0, pl.col("touchpoints").list.len()),
    ).explode("touchpoint", "position")
    # Greedy: the earliest match after the previous step's match leaves the most room for
    # the steps after it, so a journey counts at step i exactly when it has steps 1..i in
    # order.
    reached = numbered.select("journey", position=pl.lit(-1, pl.Int64))
    rows = []
    before = n_journeys
    for i, touchpoint in enumerate(steps, 1):
        reached = (
            visits.filter(pl.col("touchpoint") == touchpoint)
            .join(reached.rename({"position": "previous"}), on="journey")
            .filter(pl.col("position") > pl.col("previous"))
            .group_by("journey")
            .agg(pl.col("position").min())
        )
        n = int(
            reached.join(numbered.select("journey", "n_sessions"), on="journey")["n_sessions"].sum()
        )
        rows.append(
            {
                "step": i,
                "touchpoint": touchpoint,
                "n_sessions": n,
                "share_of_journeys": n / n_journeys if n_journeys else 0.0,
                "conversion_from_previous": n / before if before else 0.0,
                "drop_off": before - n,
            }
        )
        before = n
    return pl.DataFrame(rows, schema=FUNNEL_SCHEMA)


# ------------------------------------------------------------------------------------ KPIs


def headline_kpis(kpis: pl.DataFrame) -> dict[str, float | int | None]:
    """The report's headline numbers from `REPORT_INPUTS["kpis"]`, with the conversion rate
    (converted sessions / journey sessions)."""
    row = kpis.row(0, named=True) if kpis.height else {}
    n_sessions = int(row.get("n_sessions") or 0)
    n_converted = int(row.get("n_converted") or 0)
    return {
        "n_sessions": n_sessions,
        "n_persons": int(row.get("n_persons") or 0),
        "n_converted": n_converted,
        "conversion_rate": n_converted / n_sessions if n_sessions else None,
        "revenue": float(row.get("revenue") or 0.0),
        "n_bot_sessions": int(row.get("n_bot_sessions") or 0),
        "first_started_at": row.get("first_started_at"),
        "last_started_at": row.get("last_started_at"),
    }


def segment_kpis(segments: pl.DataFrame, top: int = 10) -> pl.DataFrame:
    """Sessions, persons and conversion per device and per channel (`REPORT_INPUTS
    ["segments"]`), the `top` largest values of each dimension.

    Columns: dimension, value, n_sessions, share (of the dimension's sessions), n_persons,
    n_converted, conversion_rate, revenue.
    """
    return (
        segments.with_columns(
            share=pl.col("n_sessions") / pl.col("n_sessions").sum().over("dimension"),
            conversion_rate=pl.col("n_converted") / pl.col("n_sessions"),
        )
        .sort(["dimension", "n_sessions", "value"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("dimension") < top)
        .select(
            "dimension",
            "value",
            "n_sessions",
            "share",
            "n_persons",
            "n_converted",
            "conversion_rate",
            "revenue",
        )
    )


@dataclass(frozen=True)
class RunQuality:
    """Data quality of the run the marts come from (the latest successful one)."""

    run: dict | None  # the raw.runs row
    failed_after: list[dict]  # failed runs after it: the marts do not include them
    nulled_fields: dict[str, int]
    reconciles: bool  # read == accepted + duplicates + quarantined


def run_quality(runs: pl.DataFrame) -> RunQuality:
    """Pick the latest successful run from `REPORT_INPUTS["runs"]` and check its counts."""
    if runs.is_empty():
        return RunQuality(run=None, failed_after=[], nulled_fields={}, reconciles=False)
    ordered = runs.sort("run_id", descending=True)
    ok = ordered.filter(pl.col("status") == "ok")
    run = ok.row(0, named=True) if ok.height else None
    after = ordered.filter(pl.col("status") != "ok")
    if run is not None:
        after = after.filter(pl.col("run_id") > run["run_id"])
    nulled: dict[str, int] = {}
    if run is not None and run.get("nulled_fields"):
        try:
            parsed = json.loads(run["nulled_fields"])
        except (TypeError, ValueError):
            parsed = {}
        if isinstance(parsed, dict):
            nulled = {str(k): int(v) for k, v in parsed.items() if isinstance(v, int | float)}
    reconciles = run is not None and (run["n_read"] or 0) == (run["n_accepted"] or 0) + (
        run["n_duplicates"] or 0
    ) + (run["n_quarantined"] or 0)
    return RunQuality(
        run=run,
        failed_after=after.to_dicts(),
        nulled_fields=nulled,
        reconciles=reconciles,
    )
