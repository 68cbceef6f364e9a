"""The journey commands read what `journeymap run` stored: blockers, paths, suggest, graph."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
from click.testing import CliRunner

from pipeline import cli
from pipeline.config import load_config
from pipeline.sample import write_sample


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    """A database filled from a generated sample with the payment failure planted."""
    root = tmp_path_factory.mktemp("journeys")
    sample = root / "sample"
    write_sample(sample, 30_000, seed=3, problems=("payment_5xx",))
    db = root / "db.duckdb"
    cli.run_pipeline([sample], db, load_config(sample / "journeymap.toml"))
    return db


def invoke(*args: str):
    return CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)


def test_blockers_prints_the_planted_failure_first(demo_db):
    """`blockers --format csv` starts with the failing payment step and its segment."""
    result = invoke("blockers", "--db", str(demo_db), "--top", "3", "--format", "csv")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "rank,touchpoint,segment,kind,lost_conversions,evidence"
    first = lines[1].split(",")
    assert first[:2] == ["1", "checkout_payment"]
    assert "Mobile Safari" in first[2] and first[3] == "error"
    assert len(lines) <= 4


def test_blockers_json_is_a_list_of_ranked_rows(demo_db):
    """JSON output parses and keeps the ranking order."""
    result = invoke("blockers", "--db", str(demo_db), "--format", "json")
    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))


def test_paths_lists_converting_and_abandoning_paths(demo_db):
    """Both outcomes appear, converting paths end at the confirmation page."""
    result = invoke("paths", "--db", str(demo_db), "--top", "2", "--format", "csv")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()[1:]
    outcomes = [r.split(",")[0] for r in rows]
    assert outcomes.count("converted") == 2 and outcomes.count("abandoned") == 2
    converted = [r for r in rows if r.startswith("converted")]
    assert all(
        " > order_confirmation," in r or r.split(",")[2] == "order_confirmation" for r in converted
    )


def test_folded_paths_never_repeat_a_touchpoint(demo_db):
    """With --folded, each touchpoint appears at most once per path."""
    result = invoke("paths", "--db", str(demo_db), "--folded", "--top", "20", "--format", "json")
    for row in json.loads(result.stdout):
        steps = row["path"].split(" > ")
        assert len(steps) == len(set(steps))


def test_touchpoints_suggest_names_the_product_template(demo_db):
    """The product catalogue is one template, already named by the default product rule."""
    result = invoke("touchpoints", "suggest", "--db", str(demo_db), "--format", "json")
    rows = {r["template"]: r for r in json.loads(result.stdout)}
    assert rows["/p/:slug"]["matched_by"] == "product"
    assert rows["/p/:slug"]["n_distinct_urls"] > 100


def test_graph_export_round_trips(demo_db, tmp_path):
    """GraphML and JSON exports hold START, CONVERSION, EXIT and the touchpoints."""
    for name in ("g.graphml", "g.json"):
        out = tmp_path / name
        result = invoke("graph", "--db", str(demo_db), "--out", str(out))
        assert result.exit_code == 0, result.output
        graph = (
            nx.read_graphml(out)
            if name.endswith("graphml")
            else nx.node_link_graph(json.loads(out.read_text()), edges="edges")
        )
        assert {"START", "CONVERSION", "EXIT", "checkout_payment"} <= set(graph.nodes)


def test_journey_commands_need_a_filled_database(tmp_path, capsys):
    """On a database without marts: one line naming the fix, exit 2."""
    code = cli.main(["blockers", "--db", str(tmp_path / "missing.duckdb")])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "journeymap run" in err


def test_graph_out_needs_a_known_extension(demo_db, tmp_path, capsys):
    """--out x.txt is refused in one line."""
    code = cli.main(["graph", "--db", str(demo_db), "--out", str(tmp_path / "x.txt")])
    err = capsys.readouterr().err
    assert code == 2 and ".graphml or .json" in err
