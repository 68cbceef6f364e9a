"""Generated samples with one planted conversion blocker each: `journeymap run` ranks it first.

The sample generator plants each problem in raw logs (see pipeline/sample.py); nothing here
tells the pipeline where it is. Different URL schemes and conversion rules must not matter.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline import cli, store
from pipeline.config import load_config
from pipeline.sample import write_sample

EVENTS = 40_000

CASES = [
    ("payment_5xx", "en", "url"),
    ("payment_5xx", "nl", "event"),
    ("cart_loop", "en", "event"),
    ("cart_loop", "nl", "url"),
    ("search_dead_end", "en", "url"),
    ("search_dead_end", "nl", "event"),
]


def _blockers(
    tmp_path: Path, problems: tuple[str, ...], scheme: str, conversion: str, seed: int = 5
):
    out = tmp_path / "sample"
    write_sample(
        out, EVENTS, seed=seed, url_scheme=scheme, problems=problems, conversion=conversion
    )
    db = tmp_path / "db.duckdb"
    cli.run_pipeline([out], db, load_config(out / "journeymap.toml"))
    con = store.connect(db, read_only=True)
    try:
        return store.query(con, "select * from marts.blockers order by rank")
    finally:
        con.close()


def _matches(row: dict, problem: str) -> bool:
    if problem == "payment_5xx":
        return (
            row["kind"] == "error"
            and row["touchpoint"] == "checkout_payment"
            and "Mobile Safari" in row["segment"]
        )
    if problem == "cart_loop":
        return row["kind"] == "loop" and set(row["touchpoint"].split(" <> ")) == {
            "cart",
            "checkout_shipping",
        }
    return row["kind"] == "dead_end" and row["touchpoint"] == "search_no_results"


@pytest.mark.parametrize(("problem", "scheme", "conversion"), CASES)
def test_a_planted_blocker_is_ranked_first(tmp_path, problem, scheme, conversion):
    """The one planted problem is blocker #1, with its segment where it has one."""
    blockers = _blockers(tmp_path, (problem,), scheme, conversion)
    assert blockers.height >= 1
    top = blockers.row(0, named=True)
    assert _matches(top, problem), blockers.select("rank", "touchpoint", "segment", "kind").head(5)
    assert top["lost_conversions"] > 1


def test_all_three_planted_blockers_lead_the_ranking(tmp_path):
    """With all three planted, they are the top three, each estimated to cost conversions."""
    blockers = _blockers(tmp_path, ("payment_5xx", "cart_loop", "search_dead_end"), "en", "url")
    top3 = blockers.head(3).to_dicts()
    for problem in ("payment_5xx", "cart_loop", "search_dead_end"):
        assert any(_matches(row, problem) for row in top3), (problem, top3)


def test_no_planted_blocker_means_no_big_blocker(tmp_path):
    """Without planted problems nothing is estimated to cost even one conversion."""
    blockers = _blockers(tmp_path, (), "en", "url")
    assert blockers.filter(pl.col("lost_conversions") >= 1).is_empty(), blockers.head(5)
