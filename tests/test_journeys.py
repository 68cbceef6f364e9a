"""Unit and property tests of `pipeline.journeys`: one rule per test, tiny inline frames.

Every expected value is worked out by hand from the rows the test builds; the arithmetic is
written next to it. Touchpoint steps are built with `visit()` / `steps()` (defaults filled in,
a step is the conversion when its touchpoint is `confirmation`), sessions with `sessions()`.

The blocker tests use small synthetic populations (`population()`): cohorts of identical
journeys, spread evenly over four device x browser cells unless a test singles one out, so
that only the problem a test plants differs between segments.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline import journeys, schemas
from pipeline.config import Config, ConversionConfig
from pipeline.journeys import CONVERSION, EXIT, START

T0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
CONVERTS_AT = "confirmation"

STEP_SCHEMA = {**schemas.SESSION_STEPS.columns, "touchpoint": pl.String(), "stage": pl.String()}
STEP_DEFAULTS = {"url": "/", "event_type": "page_view", "status": 200, "stage": "journey"}
SESSION_COLUMNS = ("session_id", "started_at", "device", "browser", "os", "channel")
SESSION_SCHEMA = {
    **{c: schemas.SESSIONS.columns[c] for c in SESSION_COLUMNS},
    "is_converted": pl.Boolean(),
}
SESSION_DEFAULTS = {
    "started_at": T0,
    "device": "desktop",
    "browser": "Chrome",
    "os": "Windows",
    "channel": "direct",
    "is_converted": False,
}
TRANSITION_SCHEMA = {
    "from_touchpoint": pl.String(),
    "to_touchpoint": pl.String(),
    "n_transitions": pl.Int64(),
    "n_sessions": pl.Int64(),
    "median_seconds": pl.Float64(),
}


def at(s: float) -> datetime:
    """A moment `s` seconds after T0 (2024-03-05 10:00:00 UTC)."""
    return T0 + timedelta(seconds=s)


def visit(session_id: str, touchpoint: str, s: float, **columns) -> dict:
    """One touchpoint step `s` seconds after T0; other columns default (see STEP_DEFAULTS)."""
    return {"session_id": session_id, "touchpoint": touchpoint, "ts": at(s), **columns}


def steps(*rows: dict) -> pl.LazyFrame:
    """Touchpoint steps from partial rows: steps numbered 1, 2, ... per session in the order
    given, event ids e1, e2, ..., is_conversion = (touchpoint == "confirmation") unless set."""
    numbered = Counter()
    full = []
    for i, row in enumerate(rows, start=1):
        numbered[row["session_id"]] += 1
        full.append(
            {
                "step": numbered[row["session_id"]],
                "event_id": f"e{i}",
                "is_conversion": row["touchpoint"] == CONVERTS_AT,
                **STEP_DEFAULTS,
                **row,
            }
        )
    return pl.DataFrame(full, schema=STEP_SCHEMA, orient="row").lazy()


def walk(session_id: str, path: str, times: list[float]) -> list[dict]:
    """One session's visits: `path` like "home > cart", entered at `times` (s after T0)."""
    return [visit(session_id, t, s) for t, s in zip(path.split(" > "), times, strict=True)]


def sessions(*rows: dict) -> pl.LazyFrame:
    """marts.sessions rows (the columns journeys reads), defaults from SESSION_DEFAULTS."""
    full = [{**SESSION_DEFAULTS, **row} for row in rows]
    return pl.DataFrame(full, schema=SESSION_SCHEMA, orient="row").lazy()


def journey_steps_frame(rows: list[tuple]) -> pl.DataFrame:
    """Expected collapse_repeats output from (session_id, position, touchpoint, stage,
    entered s, left s, n_repeats, n_errors, is_conversion) tuples."""
    return pl.DataFrame(
        [
            (sid, pos, tp, stage, at(a), at(b), r, e, c)
            for sid, pos, tp, stage, a, b, r, e, c in rows
        ],
        schema=journeys.JOURNEY_STEPS_SCHEMA,
        orient="row",
    )


def transitions_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=TRANSITION_SCHEMA, orient="row")


# ----------------------------------------------------------------------------- map_journeys


def test_map_journeys_marks_touchpoint_conversions_and_leaves_bots_out_of_journeys():
    """With `conversion.touchpoint = "cart"`, a cart step converts although its URL and event
    type do not: the human session s1 (/ then /cart twice) and the bot session s2 (/cart)
    both become converted. s1's journey is home > cart, cut after its first cart step (the
    second is service, not a repeat); the bot's session has no journey."""
    cfg = Config(conversion=ConversionConfig(touchpoint="cart"))
    session_steps = pl.DataFrame(
        [
            ("s1", 1, at(0), "e1", "a1", "/", "page_view", 200, False),
            ("s1", 2, at(10), "e2", "a1", "/cart", "page_view", 200, False),
            ("s1", 3, at(20), "e3", "a1", "/cart", "page_view", 200, False),
            ("s2", 1, at(5), "e4", "b1", "/cart", "page_view", 200, False),
        ],
        schema=schemas.SESSION_STEPS.columns,
        orient="row",
    )
    session_rows = pl.DataFrame(
        {"session_id": ["s1", "s2"], "is_bot": [False, True], "is_converted": [False, False]}
    )

    sessions, steps, journey_steps = journeys.map_journeys(session_rows, session_steps, cfg)

    assert steps["is_conversion"].to_list() == [False, True, True, True]
    assert sessions.sort("session_id")["is_converted"].to_list() == [True, True]
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "orientation", 0, 0, 0, 0, False),
            ("s1", 2, "cart", "purchase", 10, 10, 0, 0, True),
        ]
    )
    assert_frame_equal(journey_steps, expected)


# ------------------------------------------------------------------------- collapse_repeats


def test_consecutive_repeats_merge_into_one_step_with_a_repeat_count():
    """Consecutive visits of one touchpoint are one step: entered at the first visit, left at
    the last, n_repeats = the extra visits (3 product views -> n_repeats 2)."""
    frame = steps(
        visit("s1", "home", 0),
        visit("s1", "product", 10),
        visit("s1", "product", 20),
        visit("s1", "product", 35),
        visit("s1", "cart", 50),
    )
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "product", "journey", 10, 35, 2, 0, False),
            ("s1", 3, "cart", "journey", 50, 50, 0, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


def test_non_consecutive_revisits_stay_separate_steps():
    """A > B > A is three steps: only *consecutive* repeats are merged."""
    frame = steps(visit("s1", "home", 0), visit("s1", "search", 10), visit("s1", "home", 20))
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "search", "journey", 10, 10, 0, 0, False),
            ("s1", 3, "home", "journey", 20, 20, 0, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


def test_n_errors_counts_the_5xx_visits_of_a_step():
    """n_errors counts a step's visits answered 5xx: 500 and 503 count; 200, 404, 499 and an
    unknown (null) status do not. payment: 200, 500, 503 -> 2; cart: 404, 499, null -> 0."""
    frame = steps(
        visit("s1", "payment", 0, status=200),
        visit("s1", "payment", 5, status=500),
        visit("s1", "payment", 9, status=503),
        visit("s1", "cart", 20, status=404),
        visit("s1", "cart", 25, status=499),
        visit("s1", "cart", 30, status=None),
    )
    expected = journey_steps_frame(
        [
            ("s1", 1, "payment", "journey", 0, 9, 2, 2, False),
            ("s1", 2, "cart", "journey", 20, 30, 2, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


def test_steps_after_the_first_conversion_are_dropped_and_the_conversion_is_kept():
    """The journey ends at its first conversion step (kept); what follows (order status, a
    second purchase, help) is the service phase and is not part of it."""
    frame = steps(
        visit("s1", "cart", 0),
        visit("s1", "payment", 10),
        visit("s1", "confirmation", 20),
        visit("s1", "orders", 30),
        visit("s1", "confirmation", 40),
        visit("s1", "help", 50),
    )
    expected = journey_steps_frame(
        [
            ("s1", 1, "cart", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "payment", "journey", 10, 10, 0, 0, False),
            ("s1", 3, "confirmation", "journey", 20, 20, 0, 0, True),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


def test_a_step_with_an_unknown_conversion_flag_is_kept_as_not_converting():
    """is_conversion may be null in session_steps: such a step stays in the journey (cart here)
    and counts as no conversion."""
    frame = steps(
        visit("s1", "home", 0),
        visit("s1", "cart", 10, is_conversion=None),
        visit("s1", "payment", 20),
    )
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "cart", "journey", 10, 10, 0, 0, False),
            ("s1", 3, "payment", "journey", 20, 20, 0, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


def test_positions_count_1_to_n_per_session_whatever_the_row_order():
    """Positions restart at 1 in every session and follow `step`, not the input row order."""
    rows = [
        visit("s2", "cart", 100, step=2),
        visit("s1", "search", 10, step=2),
        visit("s2", "home", 90, step=1),
        visit("s1", "product", 20, step=3),
        visit("s1", "home", 0, step=1),
    ]
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "search", "journey", 10, 10, 0, 0, False),
            ("s1", 3, "product", "journey", 20, 20, 0, 0, False),
            ("s2", 1, "home", "journey", 90, 90, 0, 0, False),
            ("s2", 2, "cart", "journey", 100, 100, 0, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(steps(*rows)).collect(), expected)


def test_sessions_kept_together_but_not_sorted_collapse_as_if_sorted():
    """Sessionised steps come grouped by person, not by session id: s2's steps before s1's,
    each in step order, collapse to the same journey steps as sorted input."""
    rows = [
        visit("s2", "home", 90),
        visit("s2", "cart", 100),
        visit("s2", "cart", 105, status=503),
        visit("s1", "home", 0),
        visit("s1", "confirmation", 10),
        visit("s1", "home", 20),
    ]
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "confirmation", "journey", 10, 10, 0, 0, True),
            ("s2", 1, "home", "journey", 90, 90, 0, 0, False),
            ("s2", 2, "cart", "journey", 100, 105, 1, 1, False),
        ]
    )
    collapsed = journeys.collapse_repeats(steps(*rows)).collect()
    assert_frame_equal(collapsed.sort("session_id", "position"), expected)


def test_a_repeat_never_spans_two_sessions():
    """s1 ending on cart and s2 starting on cart are two steps, one in each session."""
    frame = steps(visit("s1", "home", 0), visit("s1", "cart", 10), visit("s2", "cart", 20))
    expected = journey_steps_frame(
        [
            ("s1", 1, "home", "journey", 0, 0, 0, 0, False),
            ("s1", 2, "cart", "journey", 10, 10, 0, 0, False),
            ("s2", 1, "cart", "journey", 20, 20, 0, 0, False),
        ]
    )
    assert_frame_equal(journeys.collapse_repeats(frame).collect(), expected)


# --------------------------------------------------------------- edges and transition counts

# Four journeys (times in s after T0):
#   s1 converted: home@0 > product@30 > cart@90 > confirmation@150
#   s2 abandoned: home@0 > product@60 > home@80 > product@100     (home > product twice)
#   s3 abandoned: product@0 > cart@20
#   s4 converted: home@0 > product@10 > cart@40 > confirmation@100 > orders@200 (service)
FOUR = steps(
    *walk("s1", "home > product > cart > confirmation", [0, 30, 90, 150]),
    *walk("s2", "home > product > home > product", [0, 60, 80, 100]),
    *walk("s3", "product > cart", [0, 20]),
    *walk("s4", "home > product > cart > confirmation > orders", [0, 10, 40, 100, 200]),
)
FOUR_SESSIONS = sessions(
    {"session_id": "s1", "device": "desktop", "browser": "Chrome", "is_converted": True},
    {"session_id": "s2", "device": "mobile", "browser": "Safari", "channel": "email"},
    {"session_id": "s3", "device": "mobile", "browser": "Chrome", "started_at": at(86_400)},
    {"session_id": "s4", "device": "desktop", "browser": "Safari", "is_converted": True},
)


def four_edges() -> pl.LazyFrame:
    return journeys.journey_edges(journeys.collapse_repeats(FOUR), FOUR_SESSIONS)


def test_journey_edges_run_from_start_to_the_outcome_with_seconds_between_entries():
    """A journey's edges: START > first step, one per consecutive pair (seconds between the
    two entries), last step > CONVERSION or EXIT; synthetic edges carry no seconds."""
    edges = (
        four_edges()
        .filter(pl.col("session_id") == "s2")
        .select("session_id", "position", "from_touchpoint", "to_touchpoint", "seconds")
        .sort("position")
        .collect()
    )
    expected = pl.DataFrame(
        [
            ("s2", 1, START, "home", None),
            ("s2", 2, "home", "product", 60.0),  # 60 - 0
            ("s2", 3, "product", "home", 20.0),  # 80 - 60
            ("s2", 4, "home", "product", 20.0),  # 100 - 80
            ("s2", 5, "product", EXIT, None),
        ],
        schema={
            "session_id": pl.String,
            "position": pl.UInt32,
            "from_touchpoint": pl.String,
            "to_touchpoint": pl.String,
            "seconds": pl.Float64,
        },
        orient="row",
    )
    assert_frame_equal(edges, expected)


def test_count_transitions_counts_edges_sessions_and_median_seconds():
    """The transitions table of the four journeys, by hand (sorted by n_transitions desc, then
    from, to). home > product: s1 30 s, s2 60 s and 20 s, s4 10 s -> 4 transitions in 3
    sessions, median of (10, 20, 30, 60) = 25 s. product > cart: 60, 20, 30 -> 30 s.
    cart > confirmation: 60, 60 -> 60 s. s4's service step (orders) is not an edge."""
    expected = transitions_frame(
        [
            ("home", "product", 4, 3, 25.0),
            (START, "home", 3, 3, None),
            ("product", "cart", 3, 3, 30.0),
            ("cart", "confirmation", 2, 2, 60.0),
            ("confirmation", CONVERSION, 2, 2, None),
            (START, "product", 1, 1, None),
            ("cart", EXIT, 1, 1, None),
            ("product", EXIT, 1, 1, None),
            ("product", "home", 1, 1, 20.0),
        ]
    )
    assert_frame_equal(journeys.count_transitions(four_edges()).collect(), expected)


def test_flow_is_conserved_at_every_touchpoint_of_the_four_journeys():
    """Inflow = outflow at every touchpoint (home 3+1 = 4, product 4+1 = 3+1+1, cart 3 = 2+1,
    confirmation 2 = 2); START sends 4 journeys = 2 EXIT + 2 CONVERSION."""
    transitions = journeys.count_transitions(four_edges()).collect()
    inflow, outflow = flows(transitions)
    assert inflow == {"home": 4, "product": 5, "cart": 3, "confirmation": 2, EXIT: 2, CONVERSION: 2}
    assert outflow == {START: 4, "home": 4, "product": 5, "cart": 3, "confirmation": 2}


def flows(transitions: pl.DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """n_transitions into and out of every node."""

    def total(side: str) -> dict[str, int]:
        summed = transitions.group_by(side).agg(pl.col("n_transitions").sum())
        return dict(summed.iter_rows())

    return total("to_touchpoint"), total("from_touchpoint")


PAGES = ["home", "product", "cart", "payment"]
SERVICE = ["orders", "help"]
random_journeys = st.lists(
    st.tuples(
        st.lists(st.sampled_from(PAGES), min_size=1, max_size=6),  # repeats allowed
        st.booleans(),  # converts
        st.lists(st.sampled_from(SERVICE), max_size=2),  # service steps after converting
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=random_journeys)
def test_flow_conservation_holds_for_any_journeys(specs):
    """For any journeys: inflow = outflow at every touchpoint, and START's outflow = the number
    of journeys = EXIT inflow + CONVERSION inflow (= the abandoned and the converted)."""
    rows, outcomes = [], []
    for i, (pages, converts, service) in enumerate(specs):
        path = pages + ([CONVERTS_AT, *service] if converts else [])
        rows += [visit(f"s{i}", page, 10 * k) for k, page in enumerate(path)]
        outcomes.append({"session_id": f"s{i}", "is_converted": converts})
    edges = journeys.journey_edges(journeys.collapse_repeats(steps(*rows)), sessions(*outcomes))
    inflow, outflow = flows(journeys.count_transitions(edges).collect())

    n_converted = sum(converts for _, converts, _ in specs)
    assert outflow[START] == len(specs)
    assert inflow.get(CONVERSION, 0) == n_converted
    assert inflow.get(EXIT, 0) == len(specs) - n_converted
    for node in set(inflow) - {EXIT, CONVERSION}:
        assert inflow[node] == outflow[node], node


def test_transitions_by_segment_blocks_add_up_to_the_total():
    """Each segment type partitions the journeys, so its blocks add up to the whole table:
    devices desktop (s1, s4: 10 edges) + mobile (s2, s3: 8 edges) = 18 edges; per edge too,
    e.g. home > product = desktop 2 (s1, s4) + mobile 2 (both in s2)."""
    edges = four_edges()
    by_segment = journeys.transitions_by_segment(edges).collect()
    totals = journeys.count_transitions(edges).collect()

    devices = by_segment.filter(pl.col("segment_type") == "device")
    per_device = dict(devices.group_by("segment_value").agg(pl.col("n_transitions").sum()).rows())
    assert per_device == {"desktop": 10, "mobile": 8}
    home_product = devices.filter(
        (pl.col("from_touchpoint") == "home") & (pl.col("to_touchpoint") == "product")
    ).sort("segment_value")
    assert home_product.select("segment_value", "n_transitions", "n_sessions").rows() == [
        ("desktop", 2, 2),
        ("mobile", 2, 1),
    ]
    for segment_type in ("device", "browser", "channel", "date"):
        summed = (
            by_segment.filter(pl.col("segment_type") == segment_type)
            .group_by("from_touchpoint", "to_touchpoint")
            .agg(pl.col("n_transitions").sum())
        )
        assert_frame_equal(
            summed,
            totals.select("from_touchpoint", "to_touchpoint", "n_transitions"),
            check_row_order=False,
        )


# ------------------------------------------------------------------------------------ paths


def test_session_paths_spell_out_each_journey_and_its_outcome():
    """One row per journey: the path up to the conversion (s4's service step is not in it),
    the loop-folded path (s2 home > product > home > product folds to home > product),
    n_steps, outcome, and seconds from the first step to the conversion (s1 150 - 0,
    s4 100 - 0; none when abandoned)."""
    paths = journeys.session_paths(journeys.collapse_repeats(FOUR), FOUR_SESSIONS)
    expected = pl.DataFrame(
        [
            (
                "s1",
                "home > product > cart > confirmation",
                "home > product > cart > confirmation",
                4,
                "converted",
                150.0,
            ),
            ("s2", "home > product > home > product", "home > product", 4, "abandoned", None),
            ("s3", "product > cart", "product > cart", 2, "abandoned", None),
            (
                "s4",
                "home > product > cart > confirmation",
                "home > product > cart > confirmation",
                4,
                "converted",
                100.0,
            ),
        ],
        schema={
            "session_id": pl.String,
            "path": pl.String,
            "path_folded": pl.String,
            "n_steps": pl.UInt32,
            "outcome": pl.String,
            "seconds_to_convert": pl.Float64,
        },
        orient="row",
    )
    assert_frame_equal(paths.sort("session_id").collect(), expected)


def test_folding_keeps_each_touchpoint_at_its_first_visit():
    """A > B > A > C folds to A > B > C (the return to A is dropped, C stays after B)."""
    frame = steps(*walk("s1", "home > search > home > cart", [0, 10, 20, 30]))
    paths = journeys.session_paths(journeys.collapse_repeats(frame), sessions({"session_id": "s1"}))
    assert paths.select("path", "path_folded").collect().rows() == [
        ("home > search > home > cart", "home > search > cart")
    ]


# Eight journeys' paths, given directly (the session_paths columns top_paths reads).
PATHS = pl.LazyFrame(
    [
        ("p1", "home > cart > pay", "home > cart > pay", 3, "converted", 100.0),
        ("p2", "home > cart > pay", "home > cart > pay", 3, "converted", 200.0),
        ("p3", "home > cart > home > cart > pay", "home > cart > pay", 5, "converted", 400.0),
        ("p4", "search > pay", "search > pay", 2, "converted", 50.0),
        ("p5", "home > cart", "home > cart", 2, "abandoned", None),
        ("p6", "home", "home", 1, "abandoned", None),
        ("p7", "home", "home", 1, "abandoned", None),
        ("p8", "home > cart > home", "home > cart", 3, "abandoned", None),
    ],
    schema={
        "session_id": pl.String,
        "path": pl.String,
        "path_folded": pl.String,
        "n_steps": pl.UInt32,
        "outcome": pl.String,
        "seconds_to_convert": pl.Float64,
    },
    orient="row",
)
TOP_PATHS_SCHEMA = {
    "outcome": pl.String,
    "variant": pl.String,
    "rank": pl.UInt32,
    "path": pl.String,
    "n_sessions": pl.Int64,
    "share": pl.Float64,
    "median_steps": pl.Float64,
    "median_seconds_to_convert": pl.Float64,
}


def test_top_paths_rank_exact_and_folded_paths_per_outcome():
    """Paths counted per outcome, share of that outcome's 4 journeys, ranked by count then
    path. Folded, p1-p3 are one path: 3 of 4 converted, median steps (3, 3, 5) = 3, median
    seconds (100, 200, 400) = 200; abandoned home (p6, p7) and home > cart (p5, p8) tie at 2
    and rank by path; median steps of home > cart = (2 + 3) / 2."""
    expected = pl.DataFrame(
        [
            ("abandoned", "exact", 1, "home", 2, 0.5, 1.0, None),
            ("abandoned", "exact", 2, "home > cart", 1, 0.25, 2.0, None),
            ("abandoned", "exact", 3, "home > cart > home", 1, 0.25, 3.0, None),
            ("converted", "exact", 1, "home > cart > pay", 2, 0.5, 3.0, 150.0),
            ("converted", "exact", 2, "home > cart > home > cart > pay", 1, 0.25, 5.0, 400.0),
            ("converted", "exact", 3, "search > pay", 1, 0.25, 2.0, 50.0),
            ("abandoned", "folded", 1, "home", 2, 0.5, 1.0, None),
            ("abandoned", "folded", 2, "home > cart", 2, 0.5, 2.5, None),
            ("converted", "folded", 1, "home > cart > pay", 3, 0.75, 3.0, 200.0),
            ("converted", "folded", 2, "search > pay", 1, 0.25, 2.0, 50.0),
        ],
        schema=TOP_PATHS_SCHEMA,
        orient="row",
    )
    assert_frame_equal(journeys.top_paths(PATHS).collect(), expected)


def test_top_paths_keeps_the_top_k_of_each_outcome_and_variant():
    """top=1 keeps rank 1 of each (outcome, variant): 2 outcomes x 2 variants = 4 rows."""
    top = journeys.top_paths(PATHS, top=1).collect()
    assert top.select("outcome", "variant", "rank", "path").rows() == [
        ("abandoned", "exact", 1, "home"),
        ("converted", "exact", 1, "home > cart > pay"),
        ("abandoned", "folded", 1, "home"),
        ("converted", "folded", 1, "home > cart > pay"),
    ]


def test_top_path_shares_add_up_to_one_per_outcome_and_variant():
    """Every journey has one path, so an outcome's shares sum to 1 (before the top-K cut)."""
    top = journeys.top_paths(PATHS).collect()
    sums = top.group_by("outcome", "variant").agg(pl.col("share").sum())
    assert sorted(sums.rows()) == [
        ("abandoned", "exact", 1.0),
        ("abandoned", "folded", 1.0),
        ("converted", "exact", 1.0),
        ("converted", "folded", 1.0),
    ]


def test_path_lengths_count_journeys_by_outcome_and_length():
    """abandoned: 1 step x2 (p6, p7), 2 x1 (p5), 3 x1 (p8); converted: 2 x1 (p4), 3 x2 (p1,
    p2), 5 x1 (p3); shares of each outcome's 4 journeys."""
    expected = pl.DataFrame(
        [
            ("abandoned", 1, 2, 0.5),
            ("abandoned", 2, 1, 0.25),
            ("abandoned", 3, 1, 0.25),
            ("converted", 2, 1, 0.25),
            ("converted", 3, 2, 0.5),
            ("converted", 5, 1, 0.25),
        ],
        schema={
            "outcome": pl.String,
            "n_steps": pl.UInt32,
            "n_sessions": pl.Int64,
            "share": pl.Float64,
        },
        orient="row",
    )
    assert_frame_equal(journeys.path_lengths(PATHS).collect(), expected)


# --------------------------------------------------------------------------------- blockers

STAGES = {
    "home": "orientation",
    "product": "orientation",
    "search": "browse",
    "category": "browse",
    "deals": "browse",
    "compare": "browse",
    "cart": "purchase",
    "shipping": "purchase",
    "payment": "purchase",
    "review": "purchase",
    "checkout": "purchase",
    "confirmation": "purchase",
}
CELLS = [("desktop", "Chrome"), ("mobile", "Chrome"), ("desktop", "Safari"), ("mobile", "Safari")]
OSES = ["Windows", "macOS", "Linux"]
CHANNELS = ["direct", "search", "email", "social"]


def cohort(
    n: int, path: str, *, device: str, browser: str, error_at: str | None = None
) -> list[dict]:
    """n identical journeys of one device and browser; `error_at` answers HTTP 500."""
    return [{"path": path, "device": device, "browser": browser, "error_at": error_at}] * n


def everywhere(n: int, path: str) -> list[dict]:
    """n journeys along `path` in each of the four device x browser cells (4n in all)."""
    return [j for d, b in CELLS for j in cohort(n, path, device=d, browser=b)]


def population(*cohorts: list[dict]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(journey steps, sessions) of the cohorts' journeys; a journey converts when it reaches
    confirmation. OS and channel cycle over the sessions, independent of the journeys."""
    plan = [j for c in cohorts for j in c]
    rows = [
        visit(
            f"p{i:04d}",
            page,
            i + 30 * k,
            step=k,
            stage=STAGES[page],
            status=500 if page == j["error_at"] else 200,
        )
        for i, j in enumerate(plan)
        for k, page in enumerate(j["path"].split(" > "), start=1)
    ]
    frame = sessions(
        *(
            {
                "session_id": f"p{i:04d}",
                "started_at": at(i),
                "device": j["device"],
                "browser": j["browser"],
                "os": OSES[i % len(OSES)],
                "channel": CHANNELS[i % len(CHANNELS)],
                "is_converted": CONVERTS_AT in j["path"],
            }
            for i, j in enumerate(plan)
        )
    )
    return journeys.collapse_repeats(steps(*rows)), frame


# (a) A failing payment step on Firefox. 80 Firefox sessions (40 desktop, 40 mobile) get HTTP
# 500 at payment and leave there. The other 320 (80 per cell) reach payment too: 32 leave at
# payment, 48 go on to review and leave there, 240 go on and convert.
FIREFOX_PAYMENT_FAILS = [
    cohort(40, "home > product > cart > payment", device="desktop", browser="Firefox",
           error_at="payment"),
    cohort(40, "home > product > cart > payment", device="mobile", browser="Firefox",
           error_at="payment"),
    everywhere(8, "home > product > cart > payment"),
    everywhere(12, "home > product > cart > payment > review"),
    everywhere(60, "home > product > cart > payment > review > confirmation"),
]  # fmt: skip


def test_a_segment_failing_at_a_step_is_the_top_blocker_of_kind_error():
    """Firefox sessions answered 500 at payment all leave there while the rest mostly
    convert: rank 1 is payment, kind error, blamed on Firefox."""
    blockers = journeys.find_blockers(*population(*FIREFOX_PAYMENT_FAILS))
    top = blockers.row(0, named=True)
    assert (top["touchpoint"], top["kind"]) == ("payment", "error")
    assert top["segment"] in (
        "browser=Firefox",
        "device_browser=desktop / Firefox",
        "device_browser=mobile / Firefox",
    )
    assert (top["error_rate"], top["exit_rate"]) == (1.0, 1.0)  # 80/80 and 80/80


def test_lost_conversions_of_a_failing_step_match_the_hand_estimate():
    """Lost = Firefox sessions at payment x (their exit rate - the rest's) x the share of the
    rest that converts after continuing past payment
    = 80 x (80/80 - 32/320) x 240/288 = 80 x 0.9 x 0.8333 = 60.0.
    The code takes cautious Wilson bounds on both exit rates (z = 3: >= 0.899 vs <= 0.162, so
    ~49; z = 1.96: ~54), hence "within 30 %"."""
    blockers = journeys.find_blockers(*population(*FIREFOX_PAYMENT_FAILS))
    top = blockers.row(0, named=True)
    assert top["n_sessions"] == 80
    assert top["lost_conversions"] == pytest.approx(60.0, rel=0.3)


# (b) Bouncing between cart and shipping. 40 sessions go cart > shipping > cart > shipping and
# leave; of the 160 that visit both without bouncing, 140 pay and convert, 20 leave at shipping.
CART_SHIPPING_LOOP = [
    everywhere(10, "home > cart > shipping > cart > shipping"),
    everywhere(35, "home > cart > shipping > payment > confirmation"),
    everywhere(5, "home > cart > shipping"),
]


def test_sessions_bouncing_between_two_steps_are_the_top_blocker_of_kind_loop():
    """Loopers convert 0/40 vs 140/160 of the non-looping visitors of both pages: rank 1 is the
    loop "cart <> shipping" (touchpoints in alphabetical order), over all traffic.
    Lost ~ 40 x (0.875 - 0) = 35 before the Wilson bounds (0.815 - 0.088: ~29.1)."""
    blockers = journeys.find_blockers(*population(*CART_SHIPPING_LOOP))
    top = blockers.row(0, named=True)
    assert (top["touchpoint"], top["kind"], top["segment"]) == ("cart <> shipping", "loop", "all")
    assert top["n_sessions"] == 40
    assert (top["conversion_rate_segment"], top["conversion_rate_rest"]) == (0.0, 140 / 160)
    assert top["lost_conversions"] == pytest.approx(35.0, rel=0.3)


# (c) A dead end. After home, each journey opens one browse page, 80 sessions each. search,
# category and deals keep 4 of 20 per cell (20 %); compare keeps 18 of 20 (90 %). Everyone who
# goes on checks out and converts.
def browse(page: str, n_exit: int, n_convert: int) -> list[list[dict]]:
    return [
        everywhere(n_exit, f"home > {page}"),
        everywhere(n_convert, f"home > {page} > checkout > confirmation"),
    ]


def test_a_page_most_mid_journey_visitors_leave_is_the_top_blocker_of_kind_dead_end():
    """compare: 72 of its 80 mid-journey visitors leave there (90 %) vs 16/80 = 20 % on the
    other browse pages: rank 1 is compare, kind dead_end."""
    blockers = journeys.find_blockers(
        *population(
            *browse("search", 4, 16),
            *browse("category", 4, 16),
            *browse("deals", 4, 16),
            *browse("compare", 18, 2),
        )
    )
    top = blockers.row(0, named=True)
    assert (top["touchpoint"], top["kind"], top["segment"]) == ("compare", "dead_end", "all")
    assert (top["n_sessions"], top["exit_rate"]) == (80, 0.9)


def test_a_dead_end_is_found_when_its_stage_has_one_other_page():
    """The usual exit rate of a stage is that of its other pages: with only search (20 %) and
    compare (90 %) in the browse stage, compare is still a dead end (a median over both pages,
    55 %, would set the bar at 2 x 55 % = 110 % and hide it)."""
    blockers = journeys.find_blockers(
        *population(*browse("search", 4, 16), *browse("compare", 18, 2))
    )
    top = blockers.row(0, named=True)
    assert (top["touchpoint"], top["kind"]) == ("compare", "dead_end")
    assert top["conversion_rate_rest"] == 64 / 80  # search's visitors: 16 x 4 convert


# (d) No problem: every cell behaves the same. Per cell 20 convert, 5 leave at product, 5 at
# cart and 5 at payment (140 sessions).
NO_PROBLEM = [
    everywhere(20, "home > product > cart > payment > confirmation"),
    everywhere(5, "home > product"),
    everywhere(5, "home > product > cart"),
    everywhere(5, "home > product > cart > payment"),
]


def test_a_population_without_a_problem_has_no_material_blocker():
    """When all segments leave every page at the same rate and nobody loops, nothing loses more
    than one conversion."""
    blockers = journeys.find_blockers(*population(*NO_PROBLEM))
    assert blockers.filter(pl.col("lost_conversions") > 1.0).is_empty()


def test_a_busy_page_with_a_normal_exit_rate_is_not_a_blocker():
    """product loses the most sessions (15 per cell x 6 cells = 90 of 240, 37.5 % everywhere)
    but at the same rate in every segment: it is not a blocker; payment, where Firefox fails
    (50 exits), is."""
    firefox = [("desktop", "Firefox"), ("mobile", "Firefox")]
    journey_steps, frame = population(
        everywhere(15, "home > product"),
        everywhere(25, "home > product > cart > payment > confirmation"),
        *(cohort(15, "home > product", device=d, browser=b) for d, b in firefox),
        *(
            cohort(25, "home > product > cart > payment", device=d, browser=b, error_at="payment")
            for d, b in firefox
        ),
    )
    ends = journeys.journey_edges(journey_steps, frame).filter(pl.col("to_touchpoint") == EXIT)
    exits = dict(ends.group_by("from_touchpoint").len().collect().rows())
    assert exits == {"product": 90, "payment": 50}

    blockers = journeys.find_blockers(journey_steps, frame)
    assert "product" not in blockers["touchpoint"].to_list()
    assert blockers.row(0, named=True)["touchpoint"] == "payment"


def test_blockers_follow_the_schema_and_rank_by_lost_conversions():
    """With several problems at once (the Firefox payment failure and the cart/shipping loop):
    columns and dtypes are BLOCKERS_SCHEMA, ranks run 1..n, lost_conversions descends."""
    blockers = journeys.find_blockers(
        *population(*FIREFOX_PAYMENT_FAILS, *CART_SHIPPING_LOOP), min_sessions=20
    )
    assert blockers.schema == pl.Schema(journeys.BLOCKERS_SCHEMA)
    assert blockers.height >= 2
    assert blockers["rank"].to_list() == list(range(1, blockers.height + 1))
    lost = blockers["lost_conversions"].to_list()
    assert lost == sorted(lost, reverse=True)
    assert {"payment", "cart <> shipping"} <= set(blockers["touchpoint"])


def test_too_few_sessions_give_an_empty_blockers_table():
    """Below min_sessions nothing can be judged: an empty table of BLOCKERS_SCHEMA, no error."""
    journey_steps, frame = population(everywhere(1, "home > cart"))
    blockers = journeys.find_blockers(journey_steps, frame)
    assert_frame_equal(blockers, pl.DataFrame(schema=journeys.BLOCKERS_SCHEMA))


@pytest.mark.parametrize("seed", [0, 1])
def test_journey_marts_do_not_depend_on_the_row_order_of_the_steps(seed):
    """Steps grouped by session in position order skip the sorts; shuffled steps are sorted
    first. Edges, paths and blockers (all three kinds) come out the same either way."""
    population_steps, population_sessions = population(*FIREFOX_PAYMENT_FAILS, *CART_SHIPPING_LOOP)
    ordered = population_steps.collect()
    shuffled = ordered.sample(fraction=1.0, shuffle=True, seed=seed)
    assert not shuffled.equals(ordered)

    def marts(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
        steps_, sessions_ = frame.lazy(), population_sessions
        edges = journeys.journey_edges(steps_, sessions_).collect()
        return {
            "edges": edges.sort("session_id", "position"),
            "paths": journeys.session_paths(steps_, sessions_).collect().sort("session_id"),
            "reach": journeys.touchpoint_reach(steps_, sessions_)
            .collect()
            .sort("session_id", "touchpoint"),
            "blockers": journeys.find_blockers(steps_, sessions_),
        }

    expected, got = marts(ordered), marts(shuffled)
    assert {b for b in expected["blockers"]["kind"]} >= {"error", "loop"}
    for name, frame in expected.items():
        assert_frame_equal(got[name], frame, check_exact=True)


def test_edges_without_segments_are_the_same_edges():
    """segments=False skips the join with the sessions' segments, nothing else: same rows,
    same transition counts."""
    with_segments = four_edges().collect()
    plain = journeys.journey_edges(
        journeys.collapse_repeats(FOUR), FOUR_SESSIONS, segments=False
    ).collect()
    assert plain.columns == [
        "session_id", "position", "from_touchpoint", "to_touchpoint", "seconds"
    ]  # fmt: skip
    key = ["session_id", "position"]
    assert_frame_equal(plain.sort(key), with_segments.select(plain.columns).sort(key))
    assert_frame_equal(
        journeys.count_transitions(plain.lazy()).collect(),
        journeys.count_transitions(with_segments.lazy()).collect(),
    )


# ------------------------------------------------------------ marts, partition by partition


def split(frame: pl.DataFrame, part_of: dict[str, int], part: int) -> pl.DataFrame:
    ids = [s for s, p in part_of.items() if p == part]
    return frame.filter(pl.col("session_id").is_in(pl.Series(ids, dtype=pl.String).implode()))


def assert_same_marts(got: dict[str, pl.DataFrame], expected: dict[str, pl.DataFrame]) -> None:
    assert got.keys() == expected.keys()
    for name, frame in expected.items():
        # exit_rates and stages are keyed tables without an order of their own.
        if name in ("exit_rates", "stages"):
            frame, got[name] = frame.sort("touchpoint"), got[name].sort("touchpoint")
        try:
            assert_frame_equal(got[name], frame, check_exact=True)
        except AssertionError as err:
            raise AssertionError(f"mart {name}: {err}") from err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_parts=st.integers(min_value=1, max_value=5),
    assignment=st.lists(st.integers(min_value=0, max_value=4), min_size=1000, max_size=1000),
)
def test_marts_of_any_split_of_the_sessions_equal_the_marts_of_one_pass(n_parts, assignment):
    """A session's contribution to every mart is its own: whichever way the sessions are dealt
    into partitions (some maybe empty), the merged pieces give exactly the one-pass marts,
    blockers of all three kinds included."""
    all_steps, all_sessions = population(
        *FIREFOX_PAYMENT_FAILS, *CART_SHIPPING_LOOP, *browse("search", 4, 16),
        *browse("compare", 18, 2),
    )  # fmt: skip
    steps_, sessions_ = all_steps.collect(), all_sessions.collect()
    part_of = {
        s: assignment[i % len(assignment)] % n_parts for i, s in enumerate(sessions_["session_id"])
    }
    expected = journeys.marts_from_pieces(journeys.mart_pieces(steps_, sessions_))
    assert set(expected["blockers"]["kind"]) == {"error", "loop", "dead_end"}
    pieces = [
        journeys.mart_pieces(split(steps_, part_of, p), split(sessions_, part_of, p))
        for p in range(n_parts)
    ]
    assert_same_marts(journeys.marts_from_pieces(journeys.merge_pieces(pieces)), expected)


def test_partition_pieces_merge_eight_of_equal_weight_at_a_time_into_the_one_pass_marts():
    """73 partitions' pieces, added one at a time, are held as one piece of 64 partitions, one
    of 8 and one of 1 (the first partition's rows merged twice so far, where one growing
    piece merged every eighth partition took them into all ten merges), and merged they
    give the one-pass marts."""
    all_steps, all_sessions = population(
        *FIREFOX_PAYMENT_FAILS, *CART_SHIPPING_LOOP, *browse("search", 4, 16)
    )
    steps_, sessions_ = all_steps.collect(), all_sessions.collect()
    n_parts = 73
    part_of = {s: i % n_parts for i, s in enumerate(sessions_["session_id"])}
    pieces: journeys.WeightedPieces = []
    weights_seen = []
    for p in range(n_parts):
        piece = journeys.mart_pieces(split(steps_, part_of, p), split(sessions_, part_of, p))
        pieces = journeys.add_piece(pieces, piece)
        weights_seen.append([w for w, _ in pieces])
    assert weights_seen[6] == [1] * 7
    assert weights_seen[7] == [8]
    assert weights_seen[62] == [8] * 7 + [1] * 7
    assert weights_seen[63] == [64]
    assert weights_seen[-1] == [64, 8, 1]
    expected = journeys.marts_from_pieces(journeys.mart_pieces(steps_, sessions_))
    assert_same_marts(journeys.marts_from_pieces(journeys.merge_weighted(pieces)), expected)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=random_journeys,
    gaps=st.lists(st.integers(min_value=1, max_value=10_000), min_size=60, max_size=60),
    n_parts=st.integers(min_value=1, max_value=4),
)
def test_merged_transition_medians_are_the_medians_of_all_edges(specs, gaps, n_parts):
    """The transitions mart from pieces equals `count_transitions` over every edge (the
    definition), medians of uneven gaps (milliseconds apart) included, however the sessions
    are split."""
    rows, outcomes, t = [], [], 0.0
    for i, (pages, converts, service) in enumerate(specs):
        path = pages + ([CONVERTS_AT, *service] if converts else [])
        for k, page in enumerate(path):
            t += gaps[(i * 7 + k) % len(gaps)] / 1000
            rows.append(visit(f"s{i}", page, t))
        outcomes.append({"session_id": f"s{i}", "is_converted": converts})
    steps_ = journeys.collapse_repeats(steps(*rows)).collect()
    sessions_ = sessions(*outcomes).collect()
    edges = journeys.journey_edges(steps_.lazy(), sessions_.lazy())
    expected = journeys.count_transitions(edges).collect()

    part_of = {f"s{i}": i % n_parts for i in range(len(specs))}
    pieces = [
        journeys.mart_pieces(split(steps_, part_of, p), split(sessions_, part_of, p))
        for p in range(n_parts)
    ]
    marts = journeys.marts_from_pieces(journeys.merge_pieces(pieces))
    assert_frame_equal(marts["transitions"], expected, check_exact=True)
    by_date = marts["transitions_by_segment"].filter(pl.col("segment_type") == "date")
    assert_frame_equal(
        by_date.drop("segment_type", "segment_value"), expected, check_exact=True
    )  # one day: the date block is the whole table
