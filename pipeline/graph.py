"""The transition graph: transitions in, a networkx DiGraph and its journey metrics out.

Nodes are touchpoints plus three synthetic ones: `START` (every journey begins there) and the
absorbing `CONVERSION` and `EXIT` (every journey ends in exactly one). Read as a first-order
absorbing Markov chain, the graph gives, for each touchpoint, the probability of converting
from it and its removal effect (DESIGN.md, "Metric definitions").

Pure functions except `export_graphml` and `export_json`, which write one file each.

>>> import polars as pl
>>> transitions = pl.DataFrame(
...     {
...         "from_touchpoint": ["START", "home", "home"],
...         "to_touchpoint": ["home", "CONVERSION", "EXIT"],
...         "n_transitions": [4, 1, 3],
...         "n_sessions": [4, 1, 3],
...         "median_seconds": [None, None, None],
...     },
...     schema_overrides={"median_seconds": pl.Float64},
... )
>>> graph = build_transition_graph(transitions)
>>> conversion_probabilities(graph)["START"]
0.25
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import networkx as nx
import numpy as np
import polars as pl

START, CONVERSION, EXIT = "START", "CONVERSION", "EXIT"
ABSORBING = (CONVERSION, EXIT)
SYNTHETIC = (START, CONVERSION, EXIT)
Z_95 = 1.96  # two-sided 95 % normal quantile, to two decimals as everywhere else

# The input contract (the `transitions` mart, see `journeys.count_transitions`).
TRANSITIONS_SCHEMA = {
    "from_touchpoint": pl.String(),
    "to_touchpoint": pl.String(),
    "n_transitions": pl.Int64(),
    "n_sessions": pl.Int64(),
    "median_seconds": pl.Float64(),
}
EDGE_ATTRIBUTES = {
    "n_transitions": pl.Int64(),
    "n_sessions": pl.Int64(),
    "probability": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "is_thin": pl.Boolean(),
    "median_seconds": pl.Float64(),
}
EDGE_TABLE_SCHEMA = {"from": pl.String(), "to": pl.String(), **EDGE_ATTRIBUTES}
TOUCHPOINT_METRICS_SCHEMA = {
    "touchpoint": pl.String(),
    "visits": pl.Int64(),
    "n_exits": pl.Int64(),
    "exit_rate": pl.Float64(),
    "n_conversions_direct": pl.Int64(),
    "conversion_probability": pl.Float64(),
    "removal_effect": pl.Float64(),
    "lost_conversions_if_removed": pl.Float64(),
    "backtrack_count": pl.Int64(),
}
FLOW_VIOLATIONS_SCHEMA = {
    "touchpoint": pl.String(),
    "inflow": pl.Int64(),
    "outflow": pl.Int64(),
}


# ------------------------------------------------------------------------ confidence intervals


def wilson_interval(successes, trials, z: float = Z_95):
    """Wilson score interval of the proportion `successes / trials` (`wilson_bounds` on
    plain numbers).

    Works on scalars (returns a pair of floats) and on array-likes (returns a pair of numpy
    arrays). With no trials nothing is known, so the interval is (0, 1). The bounds are exact
    0 when there are no successes and exact 1 when every trial succeeded.

    Parameters
    ----------
    successes, trials
        Counts, ``0 <= successes <= trials``.
    z
        Normal quantile of the confidence level (default: 95 %).

    Returns
    -------
    tuple
        ``(low, high)``.

    Examples
    --------
    >>> low, high = wilson_interval(81, 263)
    >>> round(low, 4), round(high, 4)
    (0.2553, 0.3662)
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(s < 0) or np.any(s > n):
        raise ValueError("wilson_interval needs 0 <= successes <= trials")
    counts = pl.DataFrame({"s": np.atleast_1d(s), "n": np.atleast_1d(n)})
    low, high = (
        counts.select(wilson_bounds(pl.col("s"), pl.col("n"), z)).to_numpy().astype(np.float64).T
    )
    if s.ndim == 0 and n.ndim == 0:
        return float(low[0]), float(high[0])
    return low, high


def wilson_bounds(successes: pl.Expr, trials: pl.Expr, z: float = Z_95) -> tuple[pl.Expr, pl.Expr]:
    """`wilson_interval` as Polars expressions, named ``ci_low`` and ``ci_high``.

    Null counts give null bounds; no trials give (0, 1).

    Examples
    --------
    >>> import polars as pl
    >>> low, high = wilson_bounds(pl.col("s"), pl.col("n"))
    >>> pl.DataFrame({"s": [0, 10], "n": [10, 10]}).select(low.round(4), high.round(4)).rows()
    [(0.0, 0.2775), (0.7225, 1.0)]
    """
    s = successes.cast(pl.Float64)
    n = trials.cast(pl.Float64)
    p = s / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * (p * (1 - p) / n + z2n / (4 * n)).sqrt() / (1 + z2n)
    low = pl.when((n <= 0) | (s <= 0)).then(0.0).otherwise((centre - half).clip(0.0, 1.0))
    high = pl.when((n <= 0) | (s >= n)).then(1.0).otherwise((centre + half).clip(0.0, 1.0))
    return low.alias("ci_low"), high.alias("ci_high")


# ----------------------------------------------------------------------------- the graph


def check_flow_conservation(transitions: pl.DataFrame) -> pl.DataFrame:
    """The real touchpoints whose inflow and outflow of transitions differ.

    Every journey that enters a touchpoint leaves it (to another touchpoint, CONVERSION or
    EXIT), so for each touchpoint the `n_transitions` into it and out of it must be equal.
    START, CONVERSION and EXIT are sources and sinks and are not checked.

    Returns
    -------
    pl.DataFrame
        touchpoint, inflow, outflow; one row per offending touchpoint, empty when conserved.

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "home"], "to_touchpoint": ["home", "EXIT"],
    ...      "n_transitions": [5, 4]}
    ... )
    >>> check_flow_conservation(transitions).rows()
    [('home', 5, 4)]
    """
    count = pl.col("n_transitions").cast(pl.Int64)
    inflow = transitions.group_by(touchpoint="to_touchpoint").agg(inflow=count.sum())
    outflow = transitions.group_by(touchpoint="from_touchpoint").agg(outflow=count.sum())
    return (
        inflow.join(outflow, on="touchpoint", how="full", coalesce=True)
        .with_columns(pl.col("inflow", "outflow").fill_null(0))
        .filter(~pl.col("touchpoint").is_in(SYNTHETIC), pl.col("inflow") != pl.col("outflow"))
        .select(pl.col(name).cast(dtype) for name, dtype in FLOW_VIOLATIONS_SCHEMA.items())
        .sort("touchpoint")
    )


def build_transition_graph(
    transitions: pl.DataFrame, min_support: int = 30, max_ci_width: float = 0.25
) -> nx.DiGraph:
    """The transition graph with counts, probabilities, their uncertainty and timing.

    Edge attributes: ``n_transitions``, ``n_sessions``, ``median_seconds`` (None where the
    input is null), ``probability`` (``n_transitions`` / all transitions out of the source, so
    each node's outgoing probabilities sum to 1), ``ci_low`` and ``ci_high`` (Wilson 95 %
    interval of that probability) and ``is_thin``.

    An edge is thin when ``n_transitions < min_support`` (too few journeys to report it on its
    own) or when its interval is wider than ``max_ci_width`` (its probability is too uncertain
    to rank against other edges). The second rule matters for rare sources: 30 of 45
    transitions (p = 0.67) has an interval 0.27 wide.

    Node attributes: ``visits`` (transitions into the node; for START, out of it: the number
    of journeys) and ``kind`` (start, touchpoint, conversion or exit). Graph attributes:
    ``min_support`` and ``max_ci_width``.

    Parameters
    ----------
    transitions
        from_touchpoint, to_touchpoint, n_transitions, n_sessions, median_seconds; one row
        per (from, to) pair, ``n_transitions >= 1``, nothing leaves CONVERSION or EXIT and
        nothing enters START.
    min_support, max_ci_width
        The thin-edge rule above.

    Raises
    ------
    ValueError
        When `transitions` breaks the contract; the message names the rule.

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "home"], "to_touchpoint": ["home", "EXIT"],
    ...      "n_transitions": [5, 5], "n_sessions": [5, 5], "median_seconds": [None, None]},
    ...     schema_overrides={"median_seconds": pl.Float64},
    ... )
    >>> graph = build_transition_graph(transitions)
    >>> graph.nodes["home"]["visits"], graph.edges["home", "EXIT"]["probability"]
    (5, 1.0)
    """
    edges = _validated(transitions)
    outflow = pl.col("n_transitions").sum().over("from_touchpoint")
    ci_low, ci_high = wilson_bounds(pl.col("n_transitions"), outflow)
    edges = edges.with_columns(
        probability=pl.col("n_transitions") / outflow, ci_low=ci_low, ci_high=ci_high
    ).with_columns(
        is_thin=(pl.col("n_transitions") < min_support)
        | (pl.col("ci_high") - pl.col("ci_low") > max_ci_width)
    )
    inflow = dict(edges.group_by("to_touchpoint").agg(pl.col("n_transitions").sum()).iter_rows())
    n_journeys = int(edges.filter(pl.col("from_touchpoint") == START)["n_transitions"].sum())
    names = set(edges["from_touchpoint"]) | set(edges["to_touchpoint"])

    graph = nx.DiGraph(min_support=min_support, max_ci_width=max_ci_width)
    graph.add_nodes_from(
        (
            name,
            {
                "kind": _kind(name),
                "visits": n_journeys if name == START else int(inflow.get(name, 0)),
            },
        )
        for name in _node_order(names)
    )
    graph.add_edges_from(
        (row.pop("from_touchpoint"), row.pop("to_touchpoint"), row)
        for row in edges.select("from_touchpoint", "to_touchpoint", *EDGE_ATTRIBUTES).iter_rows(
            named=True
        )
    )
    return graph


def _validated(transitions: pl.DataFrame) -> pl.DataFrame:
    """The transitions in the exact input contract, or a ValueError naming the broken rule."""
    missing = [c for c in TRANSITIONS_SCHEMA if c not in transitions.columns]
    if missing:
        raise ValueError(f"transitions: missing columns {missing}")
    edges = transitions.select(
        pl.col(name).cast(dtype) for name, dtype in TRANSITIONS_SCHEMA.items()
    ).with_columns(pl.col("median_seconds").fill_nan(None))
    for name in ("from_touchpoint", "to_touchpoint", "n_transitions", "n_sessions"):
        if edges[name].null_count():
            raise ValueError(f"transitions.{name}: nulls in a required column")
    if (edges["n_transitions"] < 1).any() or (edges["n_sessions"] < 1).any():
        raise ValueError("transitions: n_transitions and n_sessions must be >= 1")
    if edges.select("from_touchpoint", "to_touchpoint").is_duplicated().any():
        raise ValueError("transitions: (from_touchpoint, to_touchpoint) is not unique")
    if edges["from_touchpoint"].is_in(ABSORBING).any():
        raise ValueError("transitions: CONVERSION and EXIT are absorbing; nothing may leave them")
    if (edges["to_touchpoint"] == START).any():
        raise ValueError("transitions: nothing may enter START")
    return edges


def _kind(name: str) -> str:
    return {START: "start", CONVERSION: "conversion", EXIT: "exit"}.get(name, "touchpoint")


def _node_order(names: Iterable[str]) -> list[str]:
    """START first, touchpoints by name, then CONVERSION and EXIT: stable exports."""
    order = {START: 0, CONVERSION: 2, EXIT: 3}
    return sorted(names, key=lambda name: (order.get(name, 1), name))


def _is_touchpoint(name: str) -> bool:
    return name not in SYNTHETIC


# ------------------------------------------------------------------- absorbing Markov chain


def _chain(graph: nx.DiGraph) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Transient nodes that can reach CONVERSION, their transition matrix Q among themselves
    and their one-step conversion probabilities r.

    Only these nodes are solved for: every other transient node converts with probability 0,
    and restricting to them keeps I - Q invertible (from each of them some mass leaks into
    CONVERSION, so Q^k -> 0). Transitions to dropped nodes or EXIT are lost mass, as they
    should be.
    """
    if CONVERSION not in graph:
        return [], np.zeros((0, 0)), np.zeros(0)
    chain = nx.subgraph_view(graph, filter_edge=lambda u, _v: u not in ABSORBING)
    nodes = _node_order(n for n in nx.ancestors(chain, CONVERSION) if n not in ABSORBING)
    index = {name: i for i, name in enumerate(nodes)}
    edges = edge_table(graph).select(
        i=pl.col("from").replace_strict(index, default=None, return_dtype=pl.Int64),
        j=pl.col("to").replace_strict(index, default=None, return_dtype=pl.Int64),
        is_conversion=pl.col("to") == CONVERSION,
        probability="probability",
    )
    q = np.zeros((len(nodes), len(nodes)))
    inner = edges.filter(pl.col("i").is_not_null(), pl.col("j").is_not_null())
    np.add.at(q, (inner["i"].to_numpy(), inner["j"].to_numpy()), inner["probability"].to_numpy())
    r = np.zeros(len(nodes))
    into = edges.filter(pl.col("i").is_not_null(), pl.col("is_conversion"))
    np.add.at(r, into["i"].to_numpy(), into["probability"].to_numpy())
    return nodes, q, r


def conversion_probabilities(graph: nx.DiGraph) -> dict[str, float]:
    """P(absorbed in CONVERSION rather than EXIT | at node), for START and every touchpoint.

    Solves ``(I - Q) x = r`` once, where Q holds the transition probabilities among transient
    nodes and r the probabilities of stepping into CONVERSION. Nodes that cannot reach
    CONVERSION (including any that cannot reach an absorbing node at all) get 0.

    For a chain estimated from complete journeys (every one from START to CONVERSION or EXIT)
    the value at START equals the observed share of converted journeys: with conserved flow,
    the observed visits per journey solve the same equations as the chain's expected visits.

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "a", "a"], "to_touchpoint": ["a", "CONVERSION", "EXIT"],
    ...      "n_transitions": [10, 3, 7], "n_sessions": [10, 3, 7],
    ...      "median_seconds": [None, None, None]},
    ...     schema_overrides={"median_seconds": pl.Float64},
    ... )
    >>> conversion_probabilities(build_transition_graph(transitions))
    {'START': 0.3, 'a': 0.3}
    """
    result = {name: 0.0 for name in graph if name not in ABSORBING}
    nodes, q, r = _chain(graph)
    if nodes:
        x = np.linalg.solve(np.eye(len(nodes)) - q, r)
        result.update(zip(nodes, np.clip(x, 0.0, 1.0).tolist(), strict=True))
    return result


def removal_effects(graph: nx.DiGraph) -> dict[str, float]:
    """Removal effect of each touchpoint T: 1 - P(conversion | T removed) / P(conversion).

    "Removed" means every transition into T goes to EXIT instead (DESIGN.md). All effects come
    from one fundamental matrix ``N = (I - Q)^-1``: a journey from START reaches T before
    absorption with probability ``N[START, T] / N[T, T]``, and removing T loses exactly the
    conversions that pass through T, so ``P(conversion | T removed) = x[START] -
    N[START, T] / N[T, T] * x[T]`` (the Sherman-Morrison update of zeroing T's column of Q).
    Effects are 0 when P(conversion) is 0, and lie in [0, 1].

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "START", "a", "b"],
    ...      "to_touchpoint": ["a", "b", "CONVERSION", "EXIT"],
    ...      "n_transitions": [1, 1, 1, 1], "n_sessions": [1, 1, 1, 1],
    ...      "median_seconds": [None] * 4},
    ...     schema_overrides={"median_seconds": pl.Float64},
    ... )
    >>> removal_effects(build_transition_graph(transitions))
    {'a': 1.0, 'b': 0.0}
    """
    effects = {name: 0.0 for name in graph if _is_touchpoint(name)}
    nodes, q, r = _chain(graph)
    if START not in nodes:  # START cannot reach CONVERSION: P(conversion) = 0
        return effects
    fundamental = np.linalg.solve(np.eye(len(nodes)) - q, np.eye(len(nodes)))
    x = fundamental @ r
    start = nodes.index(START)
    reach = fundamental[start] / np.diag(fundamental)  # N[t, t] >= 1: never a division by 0
    effect = np.clip(reach * x / x[start], 0.0, 1.0)
    effects.update(
        (name, value) for name, value in zip(nodes, effect.tolist(), strict=True) if name != START
    )
    return effects


# ------------------------------------------------------------------------------- tables


def edge_table(graph: nx.DiGraph) -> pl.DataFrame:
    """One row per edge: from, to and the edge attributes, busiest first.

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "a"], "to_touchpoint": ["a", "EXIT"],
    ...      "n_transitions": [3, 3], "n_sessions": [3, 3], "median_seconds": [None, None]},
    ...     schema_overrides={"median_seconds": pl.Float64},
    ... )
    >>> edge_table(build_transition_graph(transitions)).select("from", "to", "is_thin").rows()
    [('START', 'a', True), ('a', 'EXIT', True)]
    """
    rows = [
        {"from": u, "to": v, **{name: data.get(name) for name in EDGE_ATTRIBUTES}}
        for u, v, data in graph.edges(data=True)
    ]
    return pl.DataFrame(rows, schema=EDGE_TABLE_SCHEMA).sort(
        "n_transitions", "from", "to", descending=[True, False, False]
    )


def touchpoint_metrics(graph: nx.DiGraph) -> pl.DataFrame:
    """One row per real touchpoint: traffic, exits, conversion and what removing it costs.

    Columns:

    - ``visits``: transitions into the touchpoint (a journey that comes back counts twice);
    - ``n_exits``: transitions to EXIT, i.e. journeys abandoned there;
      ``exit_rate = n_exits / visits`` (per visit; null without visits);
    - ``n_conversions_direct``: transitions to CONVERSION;
    - ``conversion_probability`` and ``removal_effect``: see the functions of those names;
    - ``lost_conversions_if_removed = removal_effect * total conversions`` (a model estimate);
    - ``backtrack_count``: sum over neighbours B of ``min(n(T->B), n(B->T))``. Each bounce
      T->B->T uses one T->B and one B->T transition, so this is an upper bound on the number
      of bounces from T, estimated from edge counts alone (exact bounces need the paths). It
      is symmetric: the pair (T, B) adds the same amount to B's count. Self-loops don't count.

    Sorted by visits (busiest first), then touchpoint.

    Examples
    --------
    >>> import polars as pl
    >>> transitions = pl.DataFrame(
    ...     {"from_touchpoint": ["START", "a", "a"], "to_touchpoint": ["a", "CONVERSION", "EXIT"],
    ...      "n_transitions": [4, 1, 3], "n_sessions": [4, 1, 3],
    ...      "median_seconds": [None, None, None]},
    ...     schema_overrides={"median_seconds": pl.Float64},
    ... )
    >>> touchpoint_metrics(build_transition_graph(transitions)).select("exit_rate").item()
    0.75
    """
    probabilities = conversion_probabilities(graph)
    effects = removal_effects(graph)
    total_conversions = graph.nodes[CONVERSION]["visits"] if CONVERSION in graph else 0
    touchpoints = pl.DataFrame(
        {
            "touchpoint": list(effects),
            "visits": [graph.nodes[name]["visits"] for name in effects],
            "conversion_probability": [probabilities[name] for name in effects],
            "removal_effect": list(effects.values()),
        },
        schema={
            "touchpoint": pl.String(),
            "visits": pl.Int64(),
            "conversion_probability": pl.Float64(),
            "removal_effect": pl.Float64(),
        },
    )
    edges = edge_table(graph).select("from", "to", "n_transitions")

    def into(node: str, column: str) -> pl.DataFrame:
        return edges.filter(pl.col("to") == node).select(
            touchpoint="from", **{column: "n_transitions"}
        )

    backtracks = (
        edges.join(edges, left_on=["from", "to"], right_on=["to", "from"], suffix="_back")
        .filter(pl.col("from") != pl.col("to"))
        .group_by(touchpoint="from")
        .agg(backtrack_count=pl.min_horizontal("n_transitions", "n_transitions_back").sum())
    )
    return (
        touchpoints.join(into(EXIT, "n_exits"), on="touchpoint", how="left")
        .join(into(CONVERSION, "n_conversions_direct"), on="touchpoint", how="left")
        .join(backtracks, on="touchpoint", how="left")
        .with_columns(pl.col("n_exits", "n_conversions_direct", "backtrack_count").fill_null(0))
        .with_columns(
            exit_rate=pl.when(pl.col("visits") > 0).then(pl.col("n_exits") / pl.col("visits")),
            lost_conversions_if_removed=pl.col("removal_effect") * total_conversions,
        )
        .select(pl.col(name).cast(dtype) for name, dtype in TOUCHPOINT_METRICS_SCHEMA.items())
        .sort("visits", "touchpoint", descending=[True, False])
    )


# ------------------------------------------------------------------------------- exports


def export_graphml(graph: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write the graph as GraphML (Gephi, yEd, Cytoscape).

    GraphML has no null, so attributes that are None (``median_seconds`` of edges from START
    and into CONVERSION/EXIT) are left out of that edge rather than written as a fake value.

    Examples
    --------
    >>> export_graphml(graph, "data/out/journeys.graphml")  # doctest: +SKIP
    """
    safe = nx.DiGraph(**_present(graph.graph))
    safe.add_nodes_from((name, _present(data)) for name, data in graph.nodes(data=True))
    safe.add_edges_from((u, v, _present(data)) for u, v, data in graph.edges(data=True))
    nx.write_graphml(safe, path, encoding="utf-8")


def export_json(graph: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write the graph as node-link JSON (`networkx.node_link_data`, links under "edges").

    UTF-8, labels unescaped; None becomes null. Read back with
    ``networkx.node_link_graph(json.load(f), edges="edges")``.

    Examples
    --------
    >>> export_json(graph, "data/out/journeys.json")  # doctest: +SKIP
    """
    data = nx.node_link_data(graph, edges="edges")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, ensure_ascii=False, allow_nan=False, indent=1)
        file.write("\n")


def _present(attributes: dict) -> dict:
    return {key: value for key, value in attributes.items() if value is not None}
