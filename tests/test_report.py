"""The report's numbers (`pipeline.funnels`) and its HTML (`pipeline.report`).

Three layers:

- unit rules on tiny inline journeys, the expected nodes and links worked out by hand;
- a generated shop (20,000 events, planted blockers, plus sessions and a quarantined line
  carrying XSS payloads) run through the whole pipeline: every Sankey node and link, the
  funnel and the KPIs are checked against the marts, recomputed independently from
  `marts.journey_steps` rather than from the `journeys` frame the charts use;
- properties (hypothesis) on random journeys: flows are conserved at every Sankey node and
  funnel counts never rise from step to step.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from support import write_hostile_sessions

from pipeline import cli, funnels, report, store
from pipeline.config import Config, config_from_dict, load_config
from pipeline.errors import ConfigError, UsageError
from pipeline.sample import write_sample

PAYLOAD_SCRIPT = "<script>alert(1)</script>"
PAYLOAD_IMG = '"><img src=x onerror=alert(1)>'
URL_SCRIPT = f"/x/{PAYLOAD_SCRIPT}"
URL_IMG = f"/y/{PAYLOAD_IMG}"


def journeys_frame(*rows: tuple[str, bool, int]) -> pl.DataFrame:
    """Journeys from ("home > cart", converted, sessions) tuples."""
    return pl.DataFrame(
        [(path.split(" > "), converted, n) for path, converted, n in rows],
        schema=funnels.JOURNEYS_SCHEMA,
        orient="row",
    )


def labelled_links(flow: funnels.SankeyFlow) -> set[tuple[str, str, int]]:
    """Links as (source label, target label, sessions): easy to write down by hand."""
    labels = dict(flow.nodes.select("id", "label").iter_rows())
    return {
        (labels[s], labels[t], n)
        for s, t, n in flow.links.select("source", "target", "n_sessions").iter_rows()
    }


def node_sessions(flow: funnels.SankeyFlow) -> dict[str, int]:
    return dict(flow.nodes.select("label", "n_sessions").iter_rows())


def assert_flows_conserved(flow: funnels.SankeyFlow) -> None:
    """Every touchpoint and "Others" node passes on what it holds and, unless it starts the
    chart, receives it; sinks only receive, sources only send."""
    inflow = dict(flow.links.group_by("target").agg(pl.col("n_sessions").sum()).iter_rows())
    outflow = dict(flow.links.group_by("source").agg(pl.col("n_sessions").sum()).iter_rows())
    for node in flow.nodes.iter_rows(named=True):
        got_in, got_out = inflow.get(node["id"], 0), outflow.get(node["id"], 0)
        where = f"{node['label']} (column {node['column']})"
        if node["kind"] in funnels.SINK_KINDS:
            assert (got_in, got_out) == (node["n_sessions"], 0), where
        elif node["kind"] in funnels.SOURCE_KINDS:
            assert (got_in, got_out) == (0, node["n_sessions"]), where
        else:
            assert got_out == node["n_sessions"], where
            first = flow.align == "start" and node["column"] == 1
            assert got_in == (0 if first else node["n_sessions"]), where
        assert node["n_sessions"] > 0, where
    starts = flow.nodes.filter(
        pl.col("kind").is_in(funnels.SOURCE_KINDS) if flow.align == "end" else pl.col("column") == 1
    )
    ends = flow.nodes.filter(pl.col("kind").is_in(funnels.SINK_KINDS))
    assert starts["n_sessions"].sum() == flow.n_covered
    assert ends["n_sessions"].sum() == flow.n_covered


# ------------------------------------------------------------------------ step Sankey rules


def test_each_step_ends_in_the_next_step_a_drop_off_or_a_conversion():
    """home > cart (converted, 2), home (3): step 1 home 5 goes on to cart 2 and drops off 3;
    cart at step 2 converts 2."""
    flow = funnels.step_sankey(journeys_frame(("home > cart", True, 2), ("home", False, 3)))
    assert labelled_links(flow) == {
        ("home (step 1)", "cart (step 2)", 2),
        ("home (step 1)", "Drop-off after step 1", 3),
        ("cart (step 2)", "Converted at step 2", 2),
    }
    assert node_sessions(flow) == {
        "home (step 1)": 5,
        "cart (step 2)": 2,
        "Drop-off after step 1": 3,
        "Converted at step 2": 2,
    }
    assert (flow.n_journeys, flow.n_covered) == (5, 5)


def test_shares_are_of_the_step_before():
    """cart (2 of 5 at step 1) is 40 % of the step before; the drop-off (3) is 60 % of step
    1; a link carries its share of the source node."""
    flow = funnels.step_sankey(journeys_frame(("home > cart", True, 2), ("home", False, 3)))
    shares = dict(flow.nodes.select("label", "pct_of_previous").iter_rows())
    assert shares["cart (step 2)"] == pytest.approx(0.4)
    assert shares["Drop-off after step 1"] == pytest.approx(0.6)
    assert shares["home (step 1)"] == pytest.approx(1.0)
    assert sorted(flow.links["pct_of_previous"].to_list()) == pytest.approx([0.4, 0.6, 1.0])


def test_journeys_longer_than_the_window_continue():
    """With 2 steps drawn, a - b - c - d ends in "Continues past step 2", not in a drop-off."""
    flow = funnels.step_sankey(journeys_frame(("a > b > c > d", False, 4)), n_steps=2)
    assert labelled_links(flow) == {
        ("a (step 1)", "b (step 2)", 4),
        ("b (step 2)", "Continues past step 2", 4),
    }


def test_the_rest_of_a_step_is_one_others_node_holding_exactly_what_it_replaces():
    """top_k 1 of a(5), b(2), c(1) at step 1: a stays, Others holds b + c = 3 sessions."""
    flow = funnels.step_sankey(
        journeys_frame(("a", False, 5), ("b", False, 2), ("c", False, 1)), top_k=1
    )
    others = flow.nodes.filter(pl.col("kind") == "others").row(0, named=True)
    assert (others["label"], others["n_sessions"]) == ("Others (step 1)", 3)
    assert others["detail"] == "b 2, c 1"
    assert node_sessions(flow)["a (step 1)"] == 5


def test_a_touchpoint_called_others_is_not_mixed_into_the_bucket():
    """A touchpoint named "Others" (a rule may say so) stays a node of its own: the bucket of
    top_k 2 over a(5), Others(4), b(2), c(1) holds b + c = 3, not 7."""
    flow = funnels.step_sankey(
        journeys_frame(("a", False, 5), ("Others", False, 4), ("b", False, 2), ("c", False, 1)),
        top_k=2,
    )
    by_kind = flow.nodes.group_by("kind").agg(pl.col("n_sessions").sort())
    assert dict(by_kind.iter_rows()) == {
        "touchpoint": [4, 5],
        "others": [3],
        "drop_off": [12],
    }
    assert flow.nodes.filter(pl.col("touchpoint") == "Others")["n_sessions"].to_list() == [4]


def test_a_single_leftover_touchpoint_is_drawn_not_bucketed():
    """top_k 1 of a(5), b(2): an "Others" of one touchpoint hides nothing, so b is drawn."""
    flow = funnels.step_sankey(journeys_frame(("a", False, 5), ("b", False, 2)), top_k=1)
    assert "others" not in flow.nodes["kind"].to_list()
    assert node_sessions(flow)["b (step 1)"] == 2


def test_anchored_journeys_start_at_their_first_visit_to_the_anchor():
    """Anchored at cart: home > cart > pay > cart is drawn cart > pay > cart; a journey
    without cart is left out (covered 2 of 3)."""
    flow = funnels.step_sankey(
        journeys_frame(("home > cart > pay > cart", False, 2), ("home", False, 1)),
        anchor="cart",
    )
    assert labelled_links(flow) == {
        ("cart (step 1)", "pay (step 2)", 2),
        ("pay (step 2)", "cart (step 3)", 2),
        ("cart (step 3)", "Drop-off after step 3", 2),
    }
    assert (flow.n_journeys, flow.n_covered, flow.coverage) == (3, 2, pytest.approx(2 / 3))


def test_end_aligned_paths_count_back_from_the_conversion():
    """Converted only, aligned at the end, 2 steps: a > b > c enters from "earlier", b > c
    starts at its first step; both reach c (the last step) and then the conversion."""
    flow = funnels.step_sankey(
        journeys_frame(("a > b > c", True, 1), ("b > c", True, 2), ("x", False, 9)),
        n_steps=2,
        converted_only=True,
        align="end",
    )
    assert labelled_links(flow) == {
        ("Earlier steps (journeys over 2 steps)", "b (1 before)", 1),
        ("Start of 2-step journeys", "b (1 before)", 2),
        ("b (1 before)", "c (last)", 3),
        ("c (last)", "Converted", 3),
    }
    assert (flow.n_journeys, flow.n_covered) == (12, 3)
    assert_flows_conserved(flow)


def test_nodes_are_numbered_column_by_column_ending_with_drop_offs():
    """Ids run left to right, and within a column touchpoints come before the conversion and
    the drop-off (so thin outcome bands stay at the bottom)."""
    flow = funnels.step_sankey(
        journeys_frame(("a > b", True, 1), ("a > c", False, 3), ("a", False, 1))
    )
    assert flow.nodes["id"].to_list() == list(range(flow.nodes.height))
    assert flow.nodes["label"].to_list() == [
        "a (step 1)",
        "c (step 2)",
        "b (step 2)",
        "Drop-off after step 1",
        "Converted at step 2",
        "Drop-off after step 2",
    ]


def test_no_journeys_give_an_empty_flow():
    """Nothing to draw is not an error: no nodes, no links, coverage 0."""
    flow = funnels.step_sankey(journeys_frame())
    assert (flow.nodes.height, flow.links.height, flow.coverage) == (0, 0, 0.0)


# ----------------------------------------------------------------------- aggregate + funnel


def test_aggregate_sankey_enters_and_leaves_every_touchpoint_equally():
    """START > a > b > a > EXIT: a is left twice and entered twice (transitions, not
    sessions); START and CONVERSION/EXIT sit on their own sides."""
    transitions = pl.DataFrame(
        {
            "from_touchpoint": ["START", "a", "b", "a"],
            "to_touchpoint": ["a", "b", "a", "EXIT"],
            "n_transitions": [1, 1, 1, 1],
        }
    )
    flow = funnels.aggregate_sankey(transitions)
    assert labelled_links(flow) == {
        ("Session start", "→ a", 1),
        ("a →", "→ b", 1),
        ("b →", "→ a", 1),
        ("a →", "Drop-off (exit)", 1),
    }
    sessions = node_sessions(flow)
    assert sessions["a →"] == sessions["→ a"] == 2


def test_funnel_steps_must_come_in_order_but_need_not_be_adjacent():
    """Funnel a > b: a x b counts at b (x in between is fine); b a does not (wrong order)."""
    result = funnels.funnel(
        journeys_frame(("a > x > b", False, 1), ("b > a", False, 1), ("a", False, 1)), ["a", "b"]
    )
    expected = pl.DataFrame(
        {
            "step": [1, 2],
            "touchpoint": ["a", "b"],
            "n_sessions": [3, 1],
            "share_of_journeys": [1.0, 1 / 3],
            "conversion_from_previous": [1.0, 1 / 3],
            "drop_off": [0, 2],
        },
        schema=funnels.FUNNEL_SCHEMA,
    )
    assert_frame_equal(result, expected)


def test_a_repeated_funnel_step_needs_a_second_visit():
    """Funnel a > a counts only journeys that visit a twice (a > b > a), not a once."""
    result = funnels.funnel(journeys_frame(("a > b > a", False, 2), ("a", False, 5)), ["a", "a"])
    assert result["n_sessions"].to_list() == [7, 2]


def test_report_config_is_validated():
    """Bad [report] values fail at load with a message naming the key."""
    with pytest.raises(ConfigError, match="report.sankey_steps"):
        config_from_dict({"report": {"sankey_steps": 0}})
    with pytest.raises(ConfigError, match="funnel_steps is empty"):
        config_from_dict({"report": {"funnel_steps": []}})
    with pytest.raises(ConfigError, match="synthetic node"):
        config_from_dict({"report": {"sankey_anchor": "EXIT"}})
    assert config_from_dict({"report": {"sankey_anchor": ""}}).report.sankey_anchor == ""


# --------------------------------------------------------------- against the marts of a run


@dataclass
class Built:
    db: Path
    cfg: Config
    frames: dict[str, pl.DataFrame]
    marts: dict[str, pl.DataFrame]
    html: str
    path: Path


MART_QUERIES = {
    "journey_steps": "select session_id, position, touchpoint from marts.journey_steps",
    "sessions": "select session_id, person_id, is_bot, is_converted from marts.sessions",
    "transitions": "select * from marts.transitions",
    "touchpoints": "select touchpoint, n_sessions from marts.touchpoints",
    "paths": "select * from marts.paths",
}


def plant_payloads(path: Path, start: datetime, n_sessions: int = 120) -> None:
    """Sessions whose URLs and user agent carry XSS payloads, and a rejected line (a JSON
    array: `not_a_json_object`, which the sample never has) whose raw text carries them."""
    write_hostile_sessions(
        path,
        start,
        urls=[URL_SCRIPT, URL_IMG, "/cart"],
        user_agent=f"Mozilla/5.0 {PAYLOAD_IMG}",
        rejected=json.dumps([PAYLOAD_SCRIPT, {"user_agent": PAYLOAD_IMG}]),
        prefix="xss",
        n_sessions=n_sessions,
        minutes_apart=7,
        seconds_per_step=20,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """A generated shop with payload-carrying sessions, through the pipeline and the report."""
    root = tmp_path_factory.mktemp("report")
    sample = root / "sample"
    write_sample(sample, 20_000, seed=5)
    plant_payloads(sample / "planted.ndjson", datetime(2026, 10, 8, 12, tzinfo=UTC))
    db = root / "db.duckdb"
    cfg = load_config(sample / "journeymap.toml")
    cli.run_pipeline([sample], db, cfg)
    con = store.connect(db, read_only=True)
    try:
        frames = {name: store.query(con, sql) for name, sql in funnels.REPORT_INPUTS.items()}
        marts = {name: store.query(con, sql) for name, sql in MART_QUERIES.items()}
    finally:
        con.close()
    path = report.render_report(frames, cfg, root / "report.html", source=str(db))
    return Built(db, cfg, frames, marts, path.read_text(encoding="utf-8"), path)


@pytest.fixture(scope="module")
def steps(built) -> pl.DataFrame:
    """marts.journey_steps with each journey's length and outcome: the independent check."""
    journey_steps = built.marts["journey_steps"]
    return journey_steps.join(
        journey_steps.group_by("session_id").agg(length=pl.col("position").max()),
        on="session_id",
    ).join(built.marts["sessions"].select("session_id", "is_converted"), on="session_id")


def test_the_journeys_sql_and_its_polars_twin_agree(built):
    """REPORT_INPUTS["journeys"] (DuckDB) == journeys_from_steps on the marts (Polars)."""
    marts = built.marts
    expected = funnels.journeys_from_steps(marts["journey_steps"], marts["sessions"])
    order = ["n_sessions", "is_converted", "touchpoints"]
    got = built.frames["journeys"].with_columns(key=pl.col("touchpoints").list.join(">"))
    want = expected.with_columns(key=pl.col("touchpoints").list.join(">"))
    assert_frame_equal(
        got.sort("key", "is_converted").drop("key").select(order),
        want.sort("key", "is_converted").drop("key").select(order),
    )


def test_every_chart_counts_the_same_journey_sessions(built):
    """Step Sankey column 1 == KPI sessions == funnel denominator == START flow of
    marts.transitions == journey sessions in marts.journey_steps."""
    flow = funnels.step_sankey(built.frames["journeys"])
    kpis = funnels.headline_kpis(built.frames["kpis"])
    n_journeys = built.marts["journey_steps"]["session_id"].n_unique()
    transitions = built.marts["transitions"]
    starts = transitions.filter(pl.col("from_touchpoint") == "START")["n_sessions"].sum()
    first_column = flow.nodes.filter(pl.col("column") == 1)["n_sessions"].sum()
    assert first_column == flow.n_covered == kpis["n_sessions"] == starts == n_journeys
    funnel = funnels.funnel(built.frames["journeys"], list(built.cfg.report.funnel_steps))
    assert funnel["drop_off"][0] + funnel["n_sessions"][0] == n_journeys
    human = built.marts["sessions"].filter(~pl.col("is_bot"))
    assert kpis["n_converted"] == human["is_converted"].sum()
    assert kpis["n_persons"] == human["person_id"].n_unique()


def test_step_sankey_nodes_and_links_match_the_journey_steps(built, steps):
    """Each drawn touchpoint node holds the sessions whose step k is that touchpoint; each
    link between drawn touchpoints the sessions going from one to the other; "Others" the
    rest of its step; each outcome node the journeys of that length and outcome."""
    n_steps, top_k = built.cfg.report.sankey_steps, built.cfg.report.sankey_top_k
    flow = funnels.step_sankey(built.frames["journeys"], n_steps, top_k)
    at_step = steps.group_by("position", "touchpoint").agg(n=pl.len())
    nodes = flow.nodes
    for step in range(1, n_steps + 1):
        expected = dict(
            at_step.filter(pl.col("position") == step).select("touchpoint", "n").iter_rows()
        )
        column = nodes.filter((pl.col("column") == step) & (pl.col("step") == step))
        drawn = dict(
            column.filter(pl.col("kind") == "touchpoint")
            .select("touchpoint", "n_sessions")
            .iter_rows()
        )
        for touchpoint, n in drawn.items():
            assert expected[touchpoint] == n, (step, touchpoint)
        others = column.filter(pl.col("kind") == "others")["n_sessions"].sum()
        replaced = {t: n for t, n in expected.items() if t not in drawn}
        assert others == sum(replaced.values()), step
        assert len(drawn) <= top_k + 1 and (others == 0 or len(replaced) >= 2)
        # Outcomes after this step: journeys of exactly `step` steps, by outcome.
        ended = steps.filter((pl.col("position") == 1) & (pl.col("length") == step))
        outcomes = dict(
            nodes.filter(pl.col("step") == step, pl.col("kind").is_in(funnels.SINK_KINDS))
            .select("kind", "n_sessions")
            .iter_rows()
        )
        assert outcomes.get("conversion", 0) == ended["is_converted"].sum()
        assert outcomes.get("drop_off", 0) == (~ended["is_converted"]).sum()
    continues = nodes.filter(pl.col("kind") == "continues")["n_sessions"].sum()
    assert (
        continues == steps.filter((pl.col("position") == 1) & (pl.col("length") > n_steps)).height
    )
    # Links between two drawn touchpoints, recomputed by joining position k with k + 1.
    pairs = (
        steps.join(
            steps.select("session_id", position=pl.col("position") - 1, next="touchpoint"),
            on=["session_id", "position"],
        )
        .group_by("position", "touchpoint", "next")
        .agg(n=pl.len())
    )
    expected_pairs = {(p, a, b): n for p, a, b, n in pairs.iter_rows()}
    by_id = {row["id"]: row for row in nodes.iter_rows(named=True)}
    checked = 0
    for source, target, n in flow.links.select("source", "target", "n_sessions").iter_rows():
        src, dst = by_id[source], by_id[target]
        if src["kind"] == dst["kind"] == "touchpoint":
            assert expected_pairs[(src["step"], src["touchpoint"], dst["touchpoint"])] == n
            checked += 1
    assert checked > 20


def test_step_sankey_flows_are_conserved_on_the_sample(built):
    """Conservation at every node of every variant the report draws."""
    flows = report.report_flows(built.frames, built.cfg)
    for name in ("step_sankey", "anchored_sankey", "conversion_sankey"):
        assert_flows_conserved(flows[name])


def test_anchored_sankey_covers_the_sessions_reaching_the_anchor(built):
    """Anchored at cart: one node in column 1 holding every session that reached cart
    (marts.touchpoints.n_sessions)."""
    anchor = built.cfg.report.sankey_anchor
    flow = funnels.step_sankey(built.frames["journeys"], anchor=anchor)
    first = flow.nodes.filter(pl.col("column") == 1)
    reached = built.marts["touchpoints"].filter(pl.col("touchpoint") == anchor)["n_sessions"][0]
    assert first["label"].to_list() == [f"{anchor} (step 1)"]
    assert first["n_sessions"][0] == flow.n_covered == reached


def test_conversion_sankey_holds_every_converted_journey(built, steps):
    """Converted journeys, aligned at the end: the green outcome holds them all, and each
    enters once (its start, or `earlier` when longer than the window)."""
    n_steps = built.cfg.report.sankey_steps
    flow = funnels.step_sankey(built.frames["journeys"], n_steps, converted_only=True, align="end")
    converted = steps.filter((pl.col("position") == 1) & pl.col("is_converted"))
    outcome = flow.nodes.filter(pl.col("kind") == "conversion")
    assert outcome["n_sessions"].to_list() == [converted.height]
    earlier = flow.nodes.filter(pl.col("kind") == "earlier")["n_sessions"].sum()
    assert earlier == converted.filter(pl.col("length") > n_steps).height
    entries = flow.nodes.filter(pl.col("kind") == "entry")
    for step, n in entries.select("step", "n_sessions").iter_rows():
        assert n == converted.filter(pl.col("length") == 1 - step).height


def test_aggregate_sankey_matches_marts_transitions(built):
    """Every transition is drawn once: totals match marts.transitions, each touchpoint is
    entered as often as it is left, and "Others" holds the rest on both sides."""
    transitions = built.marts["transitions"]
    flow = funnels.aggregate_sankey(transitions, built.cfg.report.transitions_top_k)
    assert flow.links["n_sessions"].sum() == transitions["n_transitions"].sum()
    assert_flows_conserved_bipartite(flow)
    left = flow.nodes.filter(pl.col("column") == 1)
    right = flow.nodes.filter(pl.col("column") == 2)
    for kind in ("touchpoint", "others"):
        assert dict(
            left.filter(pl.col("kind") == kind).select("label", "n_sessions").iter_rows()
        ) == {
            label.replace("→ ", "") + " →": n
            for label, n in right.filter(pl.col("kind") == kind)
            .select("label", "n_sessions")
            .iter_rows()
        }
    exits = transitions.filter(pl.col("to_touchpoint") == "EXIT")["n_transitions"].sum()
    assert right.filter(pl.col("kind") == "drop_off")["n_sessions"][0] == exits


def assert_flows_conserved_bipartite(flow: funnels.SankeyFlow) -> None:
    inflow = dict(flow.links.group_by("target").agg(pl.col("n_sessions").sum()).iter_rows())
    outflow = dict(flow.links.group_by("source").agg(pl.col("n_sessions").sum()).iter_rows())
    for node in flow.nodes.iter_rows(named=True):
        if node["column"] == 1:
            assert (inflow.get(node["id"], 0), outflow[node["id"]]) == (0, node["n_sessions"])
        else:
            assert (inflow[node["id"]], outflow.get(node["id"], 0)) == (node["n_sessions"], 0)


def test_funnel_matches_the_marts(built):
    """Step 1 == sessions reaching the first funnel touchpoint (marts.touchpoints); counts
    never rise; the last step (order confirmation) never exceeds the converted sessions."""
    steps = list(built.cfg.report.funnel_steps)
    result = funnels.funnel(built.frames["journeys"], steps)
    reached = dict(built.marts["touchpoints"].iter_rows())
    assert result["n_sessions"][0] == reached[steps[0]]
    counts = result["n_sessions"].to_list()
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0
    assert counts[-1] <= funnels.headline_kpis(built.frames["kpis"])["n_converted"]


def test_paths_in_the_report_are_the_marts_paths(built):
    """The top abandoning path of marts.paths is in the report with its session count, and
    it agrees with the journeys frame."""
    paths = built.marts["paths"].filter(
        (pl.col("outcome") == "abandoned") & (pl.col("variant") == "exact")
    )
    top = paths.sort("rank").row(0, named=True)
    journeys = built.frames["journeys"].filter(
        ~pl.col("is_converted") & (pl.col("touchpoints").list.join(" > ") == top["path"])
    )
    assert journeys["n_sessions"].sum() == top["n_sessions"]
    assert f">{top['n_sessions']:,}<" in built.html


# ------------------------------------------------------------------------------ the HTML


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of every script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_the_report_is_one_self_contained_file(built):
    """Exactly one plotly.js bundle, inline; no src/href that leaves the file; a CSP that
    allows no network request and only the page's own two scripts."""
    page = built.html
    tags = parse(page)
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert len(scripts) == 2 and not any("src" in attrs for attrs in scripts)
    assert len(re.findall(r"\* plotly\.js v\d+\.\d+\.\d+", page)) == 1
    assert sum("Plotly.newPlot" in s for s in tags.scripts) == 1
    for tag, attrs in tags.tags:
        for name in ("src", "href", "action", "data"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    csp = next(
        a["content"] for t, a in tags.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert (
        "default-src 'none'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert csp.count("'sha256-") == 2


def test_the_report_draws_every_section(built):
    """KPIs, data quality, the four Sankeys, the funnel, blockers and paths are all there,
    and the planted payment failure is the blocker table's first row."""
    page = built.html
    for section in ("kpis", "quality", "sankey", "transitions", "funnel", "blockers", "paths"):
        assert f'<section id="{section}">' in page
    for figure in report.build_figures(built.frames, built.cfg):
        assert f'id="fig-{figure}"' in page
    assert "read = accepted + duplicates + quarantined" in page
    assert "not_a_json_object" in page
    first_blocker = built.frames["blockers"].row(0, named=True)
    assert html_escape(first_blocker["evidence"]) in page


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_xss_payloads_from_the_data_are_shown_escaped_never_as_tags(built):
    """URLs (touchpoint templates), a user agent and a quarantined line carry `<script>` and
    `"><img onerror>`: the page shows them as text and holds no such raw tag."""
    page = built.html
    assert PAYLOAD_SCRIPT not in page and "<img" not in page.lower()
    assert "onerror=alert(1)>" not in page
    assert html_escape(URL_SCRIPT) in page  # in the paths table, as text
    assert html_escape(PAYLOAD_IMG) in page  # the quarantined line's user agent
    tags = parse(page)
    assert [t for t, _ in tags.tags if t in ("img", "iframe", "object", "embed")] == []
    assert sum(t == "script" for t, _ in tags.tags) == 2
    for tag, attrs in tags.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    # Inside the chart data the labels are escaped too (Plotly renders them as HTML).
    figures = report.build_figures(built.frames, built.cfg)
    node = figures["step_sankey"].data[0].node
    assert f"{html_escape(URL_SCRIPT)} (step 1)" in node.label
    hover = "\n".join(node.customdata)
    assert html_escape(URL_SCRIPT) in hover and PAYLOAD_SCRIPT not in hover
    assert not any(PAYLOAD_SCRIPT in label for label in node.label)


def test_every_string_cell_is_escaped_whatever_frame_it_comes_from(tmp_path):
    """Every string of every input frame set to a payload: still no raw tag in the page."""
    payload = '<script>alert(1)</script>"><img src=x onerror=alert(1)>&amp;'
    frames = {
        "journeys": journeys_frame((f"{payload} > cart", True, 3), (payload, False, 4)),
        "transitions": pl.DataFrame(
            {
                "from_touchpoint": ["START", payload, "cart"],
                "to_touchpoint": [payload, "cart", "CONVERSION"],
                "n_transitions": [7, 3, 3],
                "n_sessions": [7, 3, 3],
            }
        ),
        "kpis": pl.DataFrame({"n_sessions": [7], "n_persons": [5], "n_converted": [3]}),
        "segments": pl.DataFrame(
            {
                "dimension": ["device", "channel"],
                "value": [payload, payload],
                "n_sessions": [7, 7],
                "n_persons": [5, 5],
                "n_converted": [3, 3],
                "revenue": [0.0, 0.0],
            }
        ),
        "blockers": pl.DataFrame(
            {
                "rank": [1],
                "touchpoint": [payload],
                "segment": [payload],
                "kind": [payload],
                "lost_conversions": [2.0],
                "evidence": [payload],
                "n_sessions": [4],
            }
        ),
        "paths": pl.DataFrame(
            {
                "outcome": ["converted"],
                "variant": ["exact"],
                "rank": [1],
                "path": [f"{payload} > cart"],
                "n_sessions": [3],
                "share": [1.0],
                "median_steps": [2.0],
                "median_seconds_to_convert": [30.0],
            }
        ),
        "runs": pl.DataFrame(
            {
                "run_id": [2, 1],
                "started_at": [datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)],
                "status": ["failed", "ok"],
                "version": [payload, payload],
                "n_read": [0, 10],
                "n_accepted": [0, 8],
                "n_duplicates": [0, 1],
                "n_quarantined": [0, 1],
                "nulled_fields": [None, json.dumps({payload: 1})],
                "n_bot_sessions": [0, 0],
                "error": [payload, None],
            }
        ),
        "run_files": pl.DataFrame(
            {
                "source": [payload],
                "format": [payload],
                "n_read": [10],
                "n_accepted": [8],
                "n_duplicates": [1],
                "n_quarantined": [1],
            }
        ),
        "quarantine": pl.DataFrame(
            {"reason": [payload], "count_rows": [1], "count_files": [1], "example_raw": [payload]}
        ),
    }
    cfg = config_from_dict({"report": {"funnel_steps": [payload.replace(" ", ""), "cart"]}})
    page = report.render_report(frames, cfg, tmp_path / "r.html", source=payload).read_text()
    assert "<script>alert" not in page and "<img" not in page.lower()
    tags = parse(page)
    assert sum(t == "script" for t, _ in tags.tags) == 2
    assert not any(n.startswith("on") for _, attrs in tags.tags for n in attrs)
    assert page.count(html_escape(payload)) >= 8  # tables, header, warning, cards


def test_png_export_without_kaleido_says_what_to_install(monkeypatch, tmp_path):
    """No kaleido: a UsageError naming the package, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(UsageError, match="pip install 'kaleido"):
        report.export_png({}, tmp_path)


def test_an_empty_database_gives_a_report_not_an_error(tmp_path):
    """No frames at all (a database without journeys): every section says so."""
    page = report.render_report({}, Config(), tmp_path / "empty.html").read_text()
    assert "No successful run recorded yet." in page
    assert "No data for this chart yet." in page or "No journey" in page


# ---------------------------------------------------------------------------- properties

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
random_journeys = st.lists(
    st.tuples(
        st.lists(st.sampled_from("abcdef"), min_size=1, max_size=9),
        st.booleans(),
        st.integers(1, 5),
    ),
    max_size=25,
).map(lambda rows: pl.DataFrame(rows, schema=funnels.JOURNEYS_SCHEMA, orient="row"))


@PROPERTY_SETTINGS
@given(
    journeys=random_journeys,
    n_steps=st.integers(1, 5),
    top_k=st.integers(1, 4),
    anchor=st.sampled_from([None, "a", "c"]),
    converted_only=st.booleans(),
    align=st.sampled_from(funnels.ALIGNS),
)
def test_flows_are_conserved_at_every_sankey_node(
    journeys, n_steps, top_k, anchor, converted_only, align
):
    """Any journeys, any settings: every node passes on what it receives, the first column
    (or the sources) holds exactly the journeys covered, and so do the outcome sinks."""
    flow = funnels.step_sankey(journeys, n_steps, top_k, anchor, converted_only, align)
    assert_flows_conserved(flow)
    per_column = (
        flow.nodes.filter(pl.col("kind").is_in(["touchpoint", "others"]))
        .group_by("column")
        .agg(pl.len())
    )
    assert per_column["len"].max() is None or per_column["len"].max() <= top_k + 1


@PROPERTY_SETTINGS
@given(journeys=random_journeys, steps=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5))
def test_funnel_counts_never_rise_and_match_a_subsequence_check(journeys, steps):
    """Counts never rise from step to step, and step i counts exactly the sessions whose
    journey holds steps 1..i as a subsequence."""
    result = funnels.funnel(journeys, steps)
    counts = result["n_sessions"].to_list()
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))

    def holds(path: list[str], wanted: list[str]) -> bool:
        it = iter(path)
        return all(any(t == w for t in it) for w in wanted)

    for i in range(len(steps)):
        expected = sum(n for path, _, n in journeys.iter_rows() if holds(path, steps[: i + 1]))
        assert counts[i] == expected
