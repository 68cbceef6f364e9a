"""Unit and property tests of `pipeline.graph`: one rule per test, tiny inline transition tables.

Most tests use CHAIN, a conserved four-touchpoint journey graph solved by hand below. Expected
values are fractions worked out on paper; the comments show the working.
"""

from __future__ import annotations

import itertools
import json

import networkx as nx
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline import graph as g
from pipeline.graph import CONVERSION, EXIT, START


def transitions_frame(*edges: tuple[str, str, int]) -> pl.DataFrame:
    """A transitions table from (from, to, n) triples; n_sessions = n, timing only between
    real touchpoints (1 second per transition, so median_seconds is not null there)."""
    synthetic = {START, CONVERSION, EXIT}
    return pl.DataFrame(
        {
            "from_touchpoint": [a for a, _, _ in edges],
            "to_touchpoint": [b for _, b, _ in edges],
            "n_transitions": [n for _, _, n in edges],
            "n_sessions": [n for _, _, n in edges],
            "median_seconds": [None if {a, b} & synthetic else 1.0 for a, b, _ in edges],
        },
        schema=g.TRANSITIONS_SCHEMA,
    )


# 100 journeys, 25 converted. Conserved: A in 80 + 10 = 90 = out 60 + 10 + 20;
# B in 20 + 60 = 80 = out 40 + 10 + 30; C in 10 + 40 = 50 = out 25 + 25.
CHAIN = transitions_frame(
    (START, "A", 80),
    (START, "B", 20),
    ("A", "B", 60),
    ("A", "C", 10),
    ("A", EXIT, 20),
    ("B", "C", 40),
    ("B", "A", 10),
    ("B", EXIT, 30),
    ("C", CONVERSION, 25),
    ("C", EXIT, 25),
)
# x_T = P(CONVERSION | at T). Transition probabilities: A -> B 60/90 = 2/3, A -> C 10/90 = 1/9;
# B -> C 40/80 = 1/2, B -> A 10/80 = 1/8; C -> CONVERSION 25/50 = 1/2; START -> A 0.8, -> B 0.2.
#   x_C = 1/2
#   x_B = 1/2 x_C + 1/8 x_A           = 1/4 + x_A / 8
#   x_A = 2/3 x_B + 1/9 x_C           = 2/3 (1/4 + x_A / 8) + 1/18 = 2/9 + x_A / 12
#     => 11/12 x_A = 2/9 => x_A = 24/99 = 8/33
#   x_B = 1/4 + 1/33 = 37/132
#   x_START = 0.8 x_A + 0.2 x_B = 25.6/132 + 7.4/132 = 33/132 = 1/4  (= 25 of 100 observed)
CHAIN_P = {START: 1 / 4, "A": 8 / 33, "B": 37 / 132, "C": 1 / 2}
# Removal (inflow to T goes to EXIT):
#   without C: C is the only way into CONVERSION           => P = 0, effect 1
#   without A: x_B' = 1/2 x_C + 1/8 * 0 = 1/4, x_START' = 0.2 * 1/4 = 1/20
#              effect = 1 - (1/20) / (1/4) = 4/5
#   without B: x_A' = 1/9 x_C = 1/18, x_START' = 0.8 / 18 = 2/45
#              effect = 1 - (2/45) / (1/4) = 1 - 8/45 = 37/45
CHAIN_REMOVAL = {"A": 4 / 5, "B": 37 / 45, "C": 1.0}


def test_conversion_probabilities_solve_the_hand_worked_chain() -> None:
    """P(CONVERSION | node) is the solution of the absorbing-chain equations (CHAIN's comment)."""
    result = g.conversion_probabilities(g.build_transition_graph(CHAIN))
    assert result.keys() == CHAIN_P.keys()
    for node, expected in CHAIN_P.items():
        assert result[node] == pytest.approx(expected, abs=1e-9), node


def test_removal_effects_match_the_hand_worked_chain() -> None:
    """Removal effect = 1 - P(conversion | inflow to T sent to EXIT) / P(conversion)."""
    result = g.removal_effects(g.build_transition_graph(CHAIN))
    assert result.keys() == CHAIN_REMOVAL.keys()
    for node, expected in CHAIN_REMOVAL.items():
        assert result[node] == pytest.approx(expected, abs=1e-9), node


def test_touchpoint_metrics_of_the_hand_worked_chain() -> None:
    """Per touchpoint: visits = inflow, exit rate = exits / visits, direct conversions,
    lost conversions = removal effect * 25 conversions, backtracks = sum of min(n(T->B), n(B->T))."""
    # visits: A 80 + 10 = 90, B 20 + 60 = 80, C 10 + 40 = 50
    # exit rate: A 20/90, B 30/80, C 25/50
    # backtracks: A <-> B is the only two-way pair: min(60, 10) = 10 for both A and B
    expected = pl.DataFrame(
        {
            "touchpoint": ["A", "B", "C"],
            "visits": [90, 80, 50],
            "n_exits": [20, 30, 25],
            "exit_rate": [2 / 9, 3 / 8, 1 / 2],
            "n_conversions_direct": [0, 0, 25],
            "conversion_probability": [8 / 33, 37 / 132, 1 / 2],
            "removal_effect": [4 / 5, 37 / 45, 1.0],
            "lost_conversions_if_removed": [20.0, 25 * 37 / 45, 25.0],
            "backtrack_count": [10, 10, 0],
        },
        schema=g.TOUCHPOINT_METRICS_SCHEMA,
    )
    result = g.touchpoint_metrics(g.build_transition_graph(CHAIN))
    assert_frame_equal(result, expected, abs_tol=1e-9)


def test_node_visits_count_inflow_and_start_counts_journeys() -> None:
    """Node visits are transitions into it; START's are transitions out (the journeys)."""
    graph = g.build_transition_graph(CHAIN)
    visits = dict(graph.nodes(data="visits"))
    assert visits == {START: 100, "A": 90, "B": 80, "C": 50, CONVERSION: 25, EXIT: 75}
    assert list(graph) == [START, "A", "B", "C", CONVERSION, EXIT]


def test_edge_probability_is_count_over_outflow_and_sums_to_one() -> None:
    """probability(u -> v) = n(u -> v) / outflow(u); each non-absorbing node's sum to 1."""
    graph = g.build_transition_graph(CHAIN)
    assert graph.edges["A", "C"]["probability"] == pytest.approx(1 / 9)  # 10 / 90
    assert graph.edges["B", "A"]["probability"] == pytest.approx(1 / 8)  # 10 / 80
    for node in (START, "A", "B", "C"):
        total = sum(p for _, _, p in graph.out_edges(node, data="probability"))
        assert total == pytest.approx(1.0, abs=1e-12), node
    assert graph.out_degree(CONVERSION) == graph.out_degree(EXIT) == 0


def test_wilson_interval_known_values() -> None:
    """Wilson 95 % (z = 1.96): 81/263 -> (0.2553, 0.3662); 0/n -> (0, z²/(n+z²));
    n/n -> (n/(n+z²), 1); no trials -> (0, 1)."""
    z2 = 1.96**2
    assert g.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert g.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-12)
    assert g.wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-12)
    assert g.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= trials"):
        g.wilson_interval(3, 2)


def test_wilson_vectorised_and_polars_agree_with_scalar() -> None:
    """The array form and the Polars expressions give the scalar form's bounds; null in, null out."""
    successes = [0, 81, 10, 3, 0, None]
    trials = [10, 263, 10, 7, 0, 5]
    low, high = g.wilson_interval(successes[:5], trials[:5])
    for i in range(5):
        assert (low[i], high[i]) == pytest.approx(g.wilson_interval(successes[i], trials[i]))
    frame = pl.DataFrame({"s": successes, "n": trials}, schema={"s": pl.Int64, "n": pl.Int64})
    bounds = frame.select(*g.wilson_bounds(pl.col("s"), pl.col("n")))
    assert bounds.columns == ["ci_low", "ci_high"]
    np.testing.assert_allclose(bounds["ci_low"].to_numpy()[:5], low, atol=1e-12)
    np.testing.assert_allclose(bounds["ci_high"].to_numpy()[:5], high, atol=1e-12)
    assert bounds.row(5) == (None, None)


def test_thin_edges_have_few_transitions_or_a_wide_interval() -> None:
    """is_thin = n_transitions < min_support (30) or ci_high - ci_low > 0.25."""
    transitions = transitions_frame(
        (START, "X", 45),  # 45/45: interval (0.921, 1), width 0.079 -> solid
        ("X", "Y", 30),  # 30/45 = 0.67: interval (0.521, 0.786), width 0.266 -> thin
        ("X", EXIT, 15),  # 15 < 30 -> thin
        ("Y", EXIT, 30),  # 30/30: interval (0.886, 1), width 0.114 -> solid
    )
    table = g.edge_table(g.build_transition_graph(transitions))
    expected = pl.DataFrame(
        {
            "from": [START, "X", "Y", "X"],
            "to": ["X", "Y", EXIT, EXIT],
            "n_transitions": [45, 30, 30, 15],
            "is_thin": [False, True, False, True],
        },
        schema_overrides={"n_transitions": pl.Int64},
    )
    assert_frame_equal(table.select(expected.columns), expected)
    assert table.schema == pl.Schema(g.EDGE_TABLE_SCHEMA)
    lenient = g.build_transition_graph(transitions, min_support=10, max_ci_width=0.3)
    assert not any(thin for _, _, thin in lenient.edges(data="is_thin"))


def test_flow_conservation_passes_a_conserved_table() -> None:
    """CHAIN is conserved: no offending touchpoints."""
    result = g.check_flow_conservation(CHAIN)
    assert result.is_empty()
    assert result.schema == pl.Schema(g.FLOW_VIOLATIONS_SCHEMA)


def test_flow_conservation_finds_an_injected_violation() -> None:
    """With A -> EXIT 40 instead of 20 (CHAIN with one count changed), A has inflow 90 and
    outflow 60 + 10 + 40 = 110; nothing else changes."""
    broken = CHAIN.with_columns(
        n_transitions=pl.when(
            (pl.col("from_touchpoint") == "A") & (pl.col("to_touchpoint") == EXIT)
        )
        .then(40)
        .otherwise(pl.col("n_transitions"))
    )
    expected = pl.DataFrame(
        {"touchpoint": ["A"], "inflow": [90], "outflow": [110]}, schema=g.FLOW_VIOLATIONS_SCHEMA
    )
    assert_frame_equal(g.check_flow_conservation(broken), expected)


def test_nodes_that_cannot_reach_an_absorbing_node_convert_with_probability_zero() -> None:
    """B and C only lead to each other: they get 0, and the rest of the chain is still solved."""
    transitions = transitions_frame(
        (START, "A", 5),
        (START, "B", 5),
        ("A", CONVERSION, 5),
        ("B", "C", 5),
        ("C", "B", 5),
    )
    graph = g.build_transition_graph(transitions)
    # x_A = 1, x_B = x_C = 0, x_START = 0.5 * 1 + 0.5 * 0
    assert g.conversion_probabilities(graph) == {START: 0.5, "A": 1.0, "B": 0.0, "C": 0.0}
    # Every conversion passes through A; none through B or C.
    assert g.removal_effects(graph) == pytest.approx({"A": 1.0, "B": 0.0, "C": 0.0})


@pytest.mark.parametrize(
    "edges",
    [
        [(START, "A", 3), ("A", EXIT, 3)],  # no CONVERSION node at all
        [(START, "A", 3), ("A", EXIT, 3), ("B", CONVERSION, 2)],  # one START cannot reach
    ],
    ids=["no-conversion-node", "conversion-unreachable-from-start"],
)
def test_no_conversions_from_start_give_zero_removal_effects(edges) -> None:
    """P(START -> CONVERSION) = 0: every removal effect and lost conversion is 0, no division."""
    graph = g.build_transition_graph(transitions_frame(*edges))
    assert g.conversion_probabilities(graph)[START] == 0.0
    effects = g.removal_effects(graph)
    assert effects and set(effects.values()) == {0.0}
    metrics = g.touchpoint_metrics(graph)
    assert metrics["removal_effect"].to_list() == [0.0] * metrics.height
    assert metrics["lost_conversions_if_removed"].to_list() == [0.0] * metrics.height


def test_self_loops_are_solved_and_are_not_backtracks() -> None:
    """A -> A is a transition like any other in the chain; it is not an A->B->A bounce."""
    transitions = transitions_frame(
        (START, "A", 10), ("A", "A", 5), ("A", CONVERSION, 4), ("A", EXIT, 6)
    )
    graph = g.build_transition_graph(transitions)
    # x_A = 5/15 x_A + 4/15 => 2/3 x_A = 4/15 => x_A = 2/5 (= 4 of 10 journeys)
    assert g.conversion_probabilities(graph)["A"] == pytest.approx(0.4, abs=1e-12)
    metrics = g.touchpoint_metrics(graph).row(0, named=True)
    assert metrics["visits"] == 15  # 10 from START + 5 from itself
    assert metrics["backtrack_count"] == 0
    assert metrics["removal_effect"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(START, "A", 1), (START, "A", 1)], "not unique"),
        ([(START, "A", 1), (EXIT, "A", 1)], "absorbing"),
        ([("A", START, 1)], "enter START"),
        ([(START, "A", 0)], ">= 1"),
    ],
)
def test_contract_violations_raise(edges, message) -> None:
    """Duplicate pairs, edges out of CONVERSION/EXIT or into START, empty edges: ValueError."""
    with pytest.raises(ValueError, match=message):
        g.build_transition_graph(transitions_frame(*edges))


def test_missing_columns_raise() -> None:
    """A table without n_sessions is rejected with the column named."""
    with pytest.raises(ValueError, match="n_sessions"):
        g.build_transition_graph(CHAIN.drop("n_sessions"))


def test_empty_transitions_give_an_empty_graph_and_tables() -> None:
    """No transitions: empty graph, empty results with the declared schemas."""
    graph = g.build_transition_graph(CHAIN.clear())
    assert graph.number_of_nodes() == 0
    assert g.conversion_probabilities(graph) == {} == g.removal_effects(graph)
    assert g.touchpoint_metrics(graph).schema == pl.Schema(g.TOUCHPOINT_METRICS_SCHEMA)
    assert g.edge_table(graph).is_empty()


# A label that needs escaping in XML and is not ASCII.
ODD = 'Warenkorb <"größe"> & ünïcode ✓'


def test_graphml_export_round_trips(tmp_path) -> None:
    """Read back with networkx: same nodes, edges, counts and probabilities; null medians are
    absent rather than faked."""
    transitions = CHAIN.with_columns(pl.col("from_touchpoint", "to_touchpoint").replace("C", ODD))
    graph = g.build_transition_graph(transitions)
    path = tmp_path / "journeys.graphml"
    g.export_graphml(graph, path)
    back = nx.read_graphml(path)
    assert list(back) == list(graph)
    assert dict(back.nodes(data="visits")) == dict(graph.nodes(data="visits"))
    assert set(back.edges) == set(graph.edges)
    for u, v, data in graph.edges(data=True):
        read = back.edges[u, v]
        assert read["n_transitions"] == data["n_transitions"]
        assert read["n_sessions"] == data["n_sessions"]
        assert read["is_thin"] is data["is_thin"]
        assert read["probability"] == pytest.approx(data["probability"], rel=1e-12)
        assert read.get("median_seconds") == data["median_seconds"]


def test_json_export_round_trips(tmp_path) -> None:
    """node-link JSON in UTF-8: labels written as is, read back to an equal graph."""
    transitions = CHAIN.with_columns(pl.col("from_touchpoint", "to_touchpoint").replace("C", ODD))
    graph = g.build_transition_graph(transitions)
    path = tmp_path / "journeys.json"
    g.export_json(graph, path)
    text = path.read_text(encoding="utf-8")
    assert ODD.replace('"', '\\"') in text  # not \u-escaped
    back = nx.node_link_graph(json.loads(text), edges="edges")
    assert isinstance(back, nx.DiGraph) and not back.is_multigraph()
    assert list(back.nodes(data=True)) == list(graph.nodes(data=True))
    assert sorted(back.edges(data=True)) == sorted(graph.edges(data=True))
    assert back.graph == graph.graph


# -------------------------------------------------------------------------------- properties

TOUCHPOINTS = ["a", "b", "c", "d"]
JOURNEYS = st.lists(
    st.tuples(st.lists(st.sampled_from(TOUCHPOINTS), min_size=1, max_size=8), st.booleans()),
    min_size=1,
    max_size=25,
)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def transitions_from_journeys(journeys: list[tuple[list[str], bool]]) -> pl.DataFrame:
    """Count the transitions of complete journeys START -> steps -> CONVERSION/EXIT, with
    consecutive repeats collapsed (as the producer does)."""
    rows = []
    for session, (steps, converted) in enumerate(journeys):
        path = [START, *(step for step, _ in itertools.groupby(steps))]
        path.append(CONVERSION if converted else EXIT)
        rows += [(session, a, b) for a, b in itertools.pairwise(path)]
    edges = pl.DataFrame(
        rows, schema=["session_id", "from_touchpoint", "to_touchpoint"], orient="row"
    )
    return edges.group_by("from_touchpoint", "to_touchpoint").agg(
        n_transitions=pl.len().cast(pl.Int64),
        n_sessions=pl.col("session_id").n_unique().cast(pl.Int64),
        median_seconds=pl.lit(None, pl.Float64),
    )


def removed(transitions: pl.DataFrame, touchpoint: str) -> pl.DataFrame:
    """The removal chain the slow way: every transition into `touchpoint` goes to EXIT."""
    to = pl.col("to_touchpoint")
    return (
        transitions.with_columns(
            to_touchpoint=pl.when(to == touchpoint).then(pl.lit(EXIT)).otherwise(to)
        )
        .group_by("from_touchpoint", "to_touchpoint")
        .agg(pl.col("n_transitions", "n_sessions").sum(), median_seconds=pl.lit(None, pl.Float64))
    )


@SETTINGS
@given(JOURNEYS)
def test_chain_from_complete_journeys_reproduces_the_observed_conversion_share(journeys) -> None:
    """P(START -> ... -> CONVERSION) in the maximum-likelihood chain = converted / journeys.

    Why, loops included: let v_T be the visits of T (its inflow, = its outflow by
    conservation) and M the number of journeys. Then v_T = M [T = START] + sum_S v_S P(S, T),
    i.e. v / M solves the equations of the expected visits from START, whose solution
    N[START, :] is unique because every observed node reaches an absorbing node. So
    P(conversion) = sum_T N[START, T] P(T, CONVERSION) = sum_T (v_T / M) n(T, CONV) / v_T
    = conversions / M.
    """
    transitions = transitions_from_journeys(journeys)
    graph = g.build_transition_graph(transitions)
    observed = sum(converted for _, converted in journeys) / len(journeys)
    probabilities = g.conversion_probabilities(graph)
    assert probabilities[START] == pytest.approx(observed, abs=1e-9)
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())
    assert g.check_flow_conservation(transitions).is_empty()


@SETTINGS
@given(JOURNEYS)
def test_removal_effects_equal_re_solving_the_removed_chain(journeys) -> None:
    """The one-matrix removal effects equal 1 - P(removed chain) / P for each touchpoint,
    solved from scratch on a table with T's inflow redirected to EXIT; all lie in [0, 1]."""
    transitions = transitions_from_journeys(journeys)
    graph = g.build_transition_graph(transitions)
    p_start = g.conversion_probabilities(graph)[START]
    effects = g.removal_effects(graph)
    for touchpoint, effect in effects.items():
        without = g.build_transition_graph(removed(transitions, touchpoint))
        p_removed = g.conversion_probabilities(without)[START]
        expected = 1 - p_removed / p_start if p_start > 0 else 0.0
        assert effect == pytest.approx(expected, abs=1e-9), touchpoint
        assert 0.0 <= effect <= 1.0


@SETTINGS
@given(JOURNEYS)
def test_edge_probabilities_lie_in_their_wilson_interval(journeys) -> None:
    """Every probability lies in [0, 1] within its Wilson interval; each node's sum to 1."""
    graph = g.build_transition_graph(transitions_from_journeys(journeys))
    table = g.edge_table(graph)
    assert table.filter(
        ~pl.col("probability").is_between(pl.col("ci_low"), pl.col("ci_high"))
        | (pl.col("ci_low") < 0)
        | (pl.col("ci_high") > 1)
    ).is_empty()
    sums = table.group_by("from").agg(pl.col("probability").sum())["probability"]
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-12)
