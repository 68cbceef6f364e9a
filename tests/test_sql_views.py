"""The ad-hoc SQL layer in `sql/`: every view and macro, checked on the sample.

`data/sample/` goes through the whole pipeline once (module fixture); each view is then
compared with the same number worked out independently, in Polars, from the tables the run
computed in Python (`marts.sessions`, `marts.journey_steps`, `marts.transitions`, ...). The
funnel macro is also checked on five hand-made journeys, and against `pipeline.funnels`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from pipeline import cli, funnels, graph, store
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
REPORT_FUNNEL = ["product", "cart", "checkout_shipping", "checkout_payment", "order_confirmation"]

# How to call each table macro in the generic test; a new macro needs an entry here.
MACRO_CALLS = {
    "funnel": "select * from marts.funnel(['product', 'cart', 'checkout_shipping'])",
    "sessions_between": "select * from marts.sessions_between('2000-01-01', '2100-01-01')",
}


def sql_objects() -> list[tuple[str, str]]:
    """(layer, qualified name) of every file in sql/, in the order the run creates them."""
    objects = []
    for layer in store.SQL_LAYERS:
        schema = "staging" if layer == "staging" else "marts"
        for path in sorted((store.SQL_DIR / layer).glob("*.sql")):
            objects.append((layer, f"{schema}.{path.stem}"))
    return objects


@pytest.fixture(scope="module")
def con(tmp_path_factory) -> Iterator[duckdb.DuckDBPyConnection]:
    """The sample through the whole pipeline, opened read-only."""
    db = tmp_path_factory.mktemp("sql_views") / "sample.duckdb"
    cli.run_pipeline([SAMPLE], db, load_config(SAMPLE / "journeymap.toml"))
    connection = store.connect(db, read_only=True)
    yield connection
    connection.close()


def q(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    return store.query(con, sql, params)


@pytest.fixture(scope="module")
def human_sessions(con) -> pl.DataFrame:
    return q(con, "select * from marts.sessions where not is_bot")


@pytest.fixture(scope="module")
def journey_steps(con) -> pl.DataFrame:
    return q(con, "select * from marts.journey_steps")


# ------------------------------------------------------------------------ every object


@pytest.mark.parametrize(("layer", "name"), sql_objects())
def test_every_sql_object_answers_and_has_its_own_test(con, layer: str, name: str) -> None:
    """Each file in sql/ exists in the database after a run, returns rows on the sample,
    and is named by at least one other test in this module."""
    stem = name.split(".", 1)[1]
    if layer == "macros":
        assert stem in MACRO_CALLS, f"add an example call of {name} to MACRO_CALLS"
        sql = MACRO_CALLS[stem]
    else:
        sql = f"select * from {name} limit 5"
    assert con.sql(sql).to_arrow_table().num_rows > 0, f"{name} is empty on the sample"
    module = sys.modules[__name__]
    tests = [
        func
        for func_name, func in inspect.getmembers(module, inspect.isfunction)
        if func_name.startswith("test_")
        and func_name != "test_every_sql_object_answers_and_has_its_own_test"
    ]
    assert any(name in inspect.getsource(func) for func in tests), f"no test checks {name}"


# ------------------------------------------------------------------------------ staging


def test_stg_events_is_one_to_one_with_raw_events(con) -> None:
    """staging.stg_events has each stored event once, with its date and query-less path."""
    counts = q(
        con,
        """
        select
            (select count(*) from raw.events) as count_raw,
            count(*) as count_stg,
            count(distinct event_id) as count_ids,
            count(*) filter (where url_path like '%?%') as count_paths_with_query,
            count(*) filter (where event_date != cast(ts as date)) as count_wrong_dates,
        from staging.stg_events
        """,
    ).row(0, named=True)
    assert counts["count_raw"] == counts["count_stg"] == counts["count_ids"] > 0
    assert counts["count_paths_with_query"] == counts["count_wrong_dates"] == 0


def test_stg_sessions_is_one_to_one_with_sessions(con) -> None:
    """staging.stg_sessions has each session of marts.sessions once, bots included, with
    its UTC date, duration in minutes and landing path."""
    sessions = q(con, "select * from marts.sessions")
    stg = q(con, "select * from staging.stg_sessions")
    assert stg.height == sessions.height
    assert stg["session_id"].n_unique() == stg.height
    joined = sessions.join(stg, on="session_id", suffix="_stg")
    assert joined.height == sessions.height
    assert_series_equal(joined["started_at"].dt.date(), joined["session_date"], check_names=False)
    assert_series_equal(joined["duration_in_s"] / 60, joined["duration_in_min"], check_names=False)
    assert_series_equal(
        joined["landing_url"].str.replace(r"\?.*$", ""), joined["landing_path"], check_names=False
    )
    assert (joined["is_bot"] == joined["is_bot_stg"]).all()


def test_stg_sessions_numbers_each_persons_sessions_in_time_order(con) -> None:
    """session_index_for_person is 1, 2, ... by start time within each person."""
    stg = q(con, "select * from staging.stg_sessions")
    expected = stg.sort("person_id", "started_at", "session_id").with_columns(
        expected=pl.int_range(1, pl.len() + 1).over("person_id")
    )
    assert (expected["expected"] == expected["session_index_for_person"]).all()
    assert (expected["is_first_session_for_person"] == (expected["expected"] == 1)).all()
    assert expected["session_index_for_person"].max() > 1  # the sample has returning persons


# -------------------------------------------------------------------------------- marts


def test_sessions_by_day_matches_a_polars_group_by(con, human_sessions) -> None:
    """Human sessions and conversions per UTC day, channel and device."""
    got = q(
        con,
        """
        select session_date, channel, device, count_sessions, count_converted_sessions
        from marts.sessions_by_day
        """,
    )
    expected = human_sessions.group_by(
        pl.col("started_at").dt.date().alias("session_date"), "channel", "device"
    ).agg(
        count_sessions=pl.len(),
        count_converted_sessions=pl.col("is_converted").sum(),
    )
    keys = ["session_date", "channel", "device"]
    assert_frame_equal(got.sort(keys), expected.sort(keys), check_dtypes=False)


def test_quarantine_by_reason_adds_up_to_the_runs_quarantined_rows(con) -> None:
    """Per run, the rejected rows by file and reason add up to raw.runs.n_quarantined."""
    got = q(
        con,
        """
        select run_id, sum(count_rows) as count_rows
        from marts.quarantine_by_reason
        group by run_id
        """,
    )
    runs = q(con, "select run_id, n_quarantined from raw.runs where n_quarantined > 0")
    joined = runs.join(got, on="run_id", how="left")
    assert joined.height > 0
    assert (joined["n_quarantined"] == joined["count_rows"]).all()


def test_conversion_by_segment_counts_every_human_session_once_per_type(
    con, human_sessions
) -> None:
    """Within each segment_type, sessions, conversions and revenue add up to the human
    sessions of marts.sessions."""
    totals = q(
        con,
        """
        select
            segment_type,
            sum(count_sessions) as count_sessions,
            sum(count_converted_sessions) as count_converted_sessions,
            sum(revenue) as revenue,
        from marts.conversion_by_segment
        group by segment_type
        """,
    )
    assert set(totals["segment_type"]) == {
        "device",
        "browser",
        "os",
        "channel",
        "landing_touchpoint",
        "landing_path",
        "utm_campaign",
    }
    assert (totals["count_sessions"] == human_sessions.height).all()
    assert (totals["count_converted_sessions"] == human_sessions["is_converted"].sum()).all()
    expected_revenue = human_sessions["revenue"].fill_null(0).sum()
    assert totals["revenue"].to_list() == pytest.approx([expected_revenue] * totals.height)


def test_conversion_by_segment_matches_a_polars_group_by(con, human_sessions) -> None:
    """The channel rows equal a group-by of the human sessions."""
    got = q(
        con,
        """
        select segment_value as channel, count_sessions, count_converted_sessions
        from marts.conversion_by_segment
        where segment_type = 'channel'
        """,
    )
    expected = human_sessions.group_by(pl.col("channel").fill_null("unknown")).agg(
        count_sessions=pl.len().cast(pl.Int64),
        count_converted_sessions=pl.col("is_converted").sum().cast(pl.Int64),
    )
    assert_frame_equal(got.sort("channel"), expected.sort("channel"), check_dtypes=False)


def test_conversion_by_segment_wilson_bounds_match_python_and_bracket_the_rate(con) -> None:
    """conversion_rate_low/high are pipeline.graph.wilson_interval, around the rate."""
    rows = q(con, "select * from marts.conversion_by_segment")
    low, high = graph.wilson_interval(
        rows["count_converted_sessions"].to_numpy(), rows["count_sessions"].to_numpy()
    )
    assert rows["conversion_rate_low"].to_numpy() == pytest.approx(low)
    assert rows["conversion_rate_high"].to_numpy() == pytest.approx(high)
    assert (rows["conversion_rate_low"] <= rows["conversion_rate"]).all()
    assert (rows["conversion_rate"] <= rows["conversion_rate_high"]).all()
    rate = rows["count_converted_sessions"] / rows["count_sessions"]
    assert rows["conversion_rate"].to_numpy() == pytest.approx(rate.to_numpy())


def test_transition_probabilities_sum_to_one_per_from_touchpoint(con) -> None:
    """Every edge of marts.transitions is there once; probabilities add to 1 per from
    node, and rank 1 is the most taken edge."""
    transitions = q(con, "select * from marts.transitions")
    probs = q(con, "select * from marts.transition_probabilities")
    assert probs.height == transitions.height
    joined = transitions.join(probs, on=["from_touchpoint", "to_touchpoint"], suffix="_view")
    assert (joined["n_transitions"] == joined["n_transitions_view"]).all()
    sums = probs.group_by("from_touchpoint").agg(pl.col("probability").sum())
    assert sums["probability"].to_list() == pytest.approx([1.0] * sums.height)
    expected = joined.with_columns(
        expected=pl.col("n_transitions") / pl.col("n_transitions").sum().over("from_touchpoint")
    )
    assert expected["probability"].to_numpy() == pytest.approx(expected["expected"].to_numpy())
    top = probs.filter(pl.col("rank_from") == 1)
    most = transitions.group_by("from_touchpoint").agg(pl.col("n_transitions").max())
    assert_frame_equal(
        top.group_by("from_touchpoint")
        .agg(pl.col("n_transitions").first())
        .sort("from_touchpoint"),
        most.sort("from_touchpoint"),
    )


def test_top_paths_are_the_exact_paths_of_marts_paths(con) -> None:
    """marts.top_paths has the exact-variant rows of marts.paths, with n_steps the number
    of touchpoints in the path (for an exact path, also its median_steps)."""
    paths = q(con, "select * from marts.paths where variant = 'exact'")
    top = q(con, "select * from marts.top_paths")
    assert top.height == paths.height > 0
    joined = paths.join(top, on=["outcome", "rank"], suffix="_view")
    assert joined.height == paths.height
    assert (joined["path"] == joined["path_view"]).all()
    assert (joined["n_sessions"] == joined["n_sessions_view"]).all()
    assert (joined["n_steps"] == joined["path"].str.split(" > ").list.len()).all()
    assert (joined["n_steps"] == joined["median_steps"]).all()


def test_blocker_summary_is_a_pareto_table_ending_at_one(con) -> None:
    """Shares of lost conversions add to 1; the cumulative share rises with rank to 1."""
    blockers = q(con, "select * from marts.blockers order by rank")
    summary = q(con, "select * from marts.blocker_summary")
    assert summary.height == blockers.height > 0
    assert summary["rank"].to_list() == blockers["rank"].to_list()
    assert summary["share_of_lost_conversions"].sum() == pytest.approx(1.0)
    assert summary["cumulative_share"][-1] == pytest.approx(1.0)
    assert (summary["cumulative_share"].diff().drop_nulls() >= 0).all()
    expected = blockers["lost_conversions"].cum_sum() / blockers["lost_conversions"].sum()
    assert summary["cumulative_share"].to_numpy() == pytest.approx(expected.to_numpy())


def test_drop_off_by_touchpoint_agrees_with_the_touchpoints_mart(con) -> None:
    """Sessions reaching each touchpoint, exits there and the exit rate equal
    marts.touchpoints (computed in Python)."""
    touchpoints = q(
        con,
        "select touchpoint, stage, n_sessions, n_exit_sessions, exit_rate from marts.touchpoints",
    )
    drop_off = q(con, "select * from marts.drop_off_by_touchpoint")
    assert drop_off.height == touchpoints.height
    joined = touchpoints.join(drop_off, on="touchpoint", suffix="_view")
    assert joined.height == touchpoints.height
    assert (joined["stage"] == joined["stage_view"]).all()
    assert (joined["n_sessions"] == joined["count_sessions"]).all()
    assert (joined["n_exit_sessions"] == joined["count_exit_sessions"]).all()
    assert joined["exit_rate"].to_numpy() == pytest.approx(joined["exit_rate_view"].to_numpy())


def test_drop_off_next_touchpoint_is_the_busiest_outgoing_edge(con) -> None:
    """next_touchpoint is the touchpoint most often entered from this one in
    marts.transitions (START, CONVERSION and EXIT aside; ties alphabetical)."""
    edges = q(
        con,
        """
        select from_touchpoint as touchpoint, to_touchpoint, n_transitions
        from marts.transitions
        where from_touchpoint != 'START' and to_touchpoint not in ('CONVERSION', 'EXIT')
        """,
    )
    expected = (
        edges.sort(
            ["touchpoint", "n_transitions", "to_touchpoint"], descending=[False, True, False]
        )
        .group_by("touchpoint", maintain_order=True)
        .first()
        .rename({"to_touchpoint": "next_touchpoint", "n_transitions": "count_next_transitions"})
    )
    got = q(
        con,
        """
        select touchpoint, next_touchpoint, count_next_transitions
        from marts.drop_off_by_touchpoint
        where next_touchpoint is not null
        """,
    )
    assert_frame_equal(got.sort("touchpoint"), expected.sort("touchpoint"), check_dtypes=False)


def test_sessions_between_keeps_human_sessions_of_the_days_given(con, human_sessions) -> None:
    """Both dates are included; bots never are."""
    first_day = human_sessions["started_at"].dt.date().min()
    last_day = q(con, "select cast(? as date) + 2 as d", [first_day])["d"][0]
    got = q(con, "select * from marts.sessions_between(?, ?)", [first_day, last_day])
    days = human_sessions["started_at"].dt.date()
    expected = human_sessions.filter(days.is_between(first_day, last_day, closed="both"))
    assert 0 < got.height < human_sessions.height
    assert sorted(got["session_id"]) == sorted(expected["session_id"])
    assert not got["is_bot"].any()


# ------------------------------------------------------------------------------- funnel


@pytest.mark.parametrize(
    "steps",
    [
        REPORT_FUNNEL,
        ["product"],
        ["cart", "checkout_shipping", "cart", "checkout_shipping"],
        ["cart", "cart"],
        ["home", "no_such_touchpoint", "cart"],
    ],
)
def test_funnel_macro_equals_the_python_funnel(con, human_sessions, journey_steps, steps) -> None:
    """marts.funnel(steps) gives pipeline.funnels.funnel's counts, rates and drop-offs;
    counts never rise from step to step."""
    got = q(con, "select * from marts.funnel(?)", [steps])
    journeys = funnels.journeys_from_steps(journey_steps, human_sessions)
    expected = funnels.funnel(journeys, steps)
    assert got["step_index"].to_list() == list(range(1, len(steps) + 1))
    assert got["touchpoint"].to_list() == steps
    assert got["count_sessions"].to_list() == expected["n_sessions"].to_list()
    assert got["count_dropped"].to_list() == expected["drop_off"].to_list()
    assert got["conversion_from_previous"].to_numpy() == pytest.approx(
        expected["conversion_from_previous"].to_numpy()
    )
    first = got["count_sessions"][0]
    share = (got["count_sessions"] / first).to_numpy() if first else [0.0] * len(steps)
    assert got["share_of_first"].to_numpy() == pytest.approx(share)
    assert (got["count_sessions"].diff().drop_nulls() <= 0).all()


def test_funnel_macro_on_hand_made_journeys() -> None:
    """Steps count in order with other pages in between; a bot never counts.

    s1 home > product > cart > checkout   reaches product, cart, checkout
    s2 product > home > cart              reaches product, cart
    s3 cart > product                     reaches product (its cart comes first)
    s4 cart > home > cart                 reaches none of product > ...; cart > cart: both
    s5 product > cart > checkout (a bot)  left out: 4 journeys
    """
    con = duckdb.connect(":memory:")
    con.execute("create schema marts")
    con.execute(
        """
        create table marts.sessions as
        select * from (values
            ('s1', false, true), ('s2', false, false), ('s3', false, false),
            ('s4', false, false), ('s5', true, true)
        ) as t(session_id, is_bot, is_converted)
        """
    )
    journeys = {
        "s1": ["home", "product", "cart", "checkout"],
        "s2": ["product", "home", "cart"],
        "s3": ["cart", "product"],
        "s4": ["cart", "home", "cart"],
        "s5": ["product", "cart", "checkout"],
    }
    rows = [(s, i, t) for s, path in journeys.items() for i, t in enumerate(path, 1)]
    con.execute(
        "create table marts.journey_steps (session_id varchar, position uinteger, touchpoint varchar)"
    )
    con.executemany("insert into marts.journey_steps values (?, ?, ?)", rows)
    con.execute((store.SQL_DIR / "macros" / "funnel.sql").read_text(encoding="utf-8"))

    got = q(con, "select * from marts.funnel(['product', 'cart', 'checkout'])")
    expected = pl.DataFrame(
        {
            "step_index": [1, 2, 3],
            "touchpoint": ["product", "cart", "checkout"],
            "count_sessions": [3, 2, 1],
            "share_of_first": [1.0, 2 / 3, 1 / 3],
            "conversion_from_previous": [3 / 4, 2 / 3, 1 / 2],
            "count_dropped": [1, 1, 1],
        }
    )
    assert_frame_equal(got, expected, check_dtypes=False)

    repeated = q(con, "select count_sessions from marts.funnel(['cart', 'cart'])")
    assert repeated["count_sessions"].to_list() == [4, 1]
    con.close()
