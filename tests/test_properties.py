"""Properties of ingest + sessionise on arbitrary mixes of hostile input (hypothesis).

A generated file mixes valid lines (a few visitors, pages, assets and health checks over
four hours), garbage, lines with bytes that are not UTF-8, and exact duplicates, in any
order, as a combined log or as NDJSON. For every such file:

- every line is counted once: read == accepted + duplicates + quarantined, and each term
  is what the construction says it must be;
- every accepted step event is in exactly one session;
- sessions and their steps do not depend on the order of the lines.

Examples are few (each one runs the whole pipeline into a fresh DuckDB) and kept small.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from support import without_limit

from pipeline import cli, store
from pipeline.config import Config

NOW = datetime(2024, 10, 12, tzinfo=UTC)
START = datetime(2024, 10, 10, 8, 0, tzinfo=UTC)
VISITORS = [
    ("203.0.113.1", "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"),
    ("203.0.113.2", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) Mobile/15E148"),
    ("2001:db8::3", "curl/8.4.0"),  # a bot: its sessions are kept, flagged
]
# Page -> is it a journey step? (assets and health checks are not)
PAGES = {
    "/": True,
    "/products/1": True,
    "/search?q=red+shoes": True,
    "/cart": True,
    "/checkout/success": True,
    "/static/app.js": False,
    "/img/logo.png": False,
    "/healthz": False,
}
# Each of these bytes sequences is invalid UTF-8 wherever it is put in an ASCII line.
INVALID_BYTES = [b"\xff", b"\xfe\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Hit:
    """One valid request: who, when (seconds after START), what."""

    visitor: int
    second: int
    page: str
    method: str
    status: int
    user: str | None

    def combined(self) -> bytes:
        ip, ua = VISITORS[self.visitor]
        ts = (START + timedelta(seconds=self.second)).strftime("%d/%b/%Y:%H:%M:%S +0000")
        user = self.user or "-"
        line = (
            f'{ip} - {user} [{ts}] "{self.method} {self.page} HTTP/1.1" {self.status} 10 "-" "{ua}"'
        )
        return line.encode()

    def ndjson(self) -> bytes:
        event = {
            "anonymous_id": f"visitor-{self.visitor}",
            "ts": (START + timedelta(seconds=self.second)).isoformat(),
            "event_type": "page_view" if self.method == "GET" else "post",
            "url": self.page,
            "status": self.status,
            "user_agent": VISITORS[self.visitor][1],
        }
        if self.user:
            event["user_id"] = self.user
        return json.dumps(event).encode()


hits = st.builds(
    Hit,
    visitor=st.integers(0, len(VISITORS) - 1),
    # Steps a few minutes apart, over four hours: gaps both under and over 30 minutes.
    second=st.integers(0, 4 * 3600 // 60).map(lambda m: m * 60),
    page=st.sampled_from(list(PAGES)),
    method=st.sampled_from(["GET", "POST"]),
    status=st.sampled_from([200, 302, 404, 500]),
    user=st.sampled_from([None, None, None, "u1", "u2"]),
)
garbage = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=40
).map(str.encode)


@dataclass(frozen=True)
class Mix:
    lines: list[bytes]
    n_valid: int  # valid lines, duplicates included
    n_distinct: int  # distinct valid lines
    n_bad: int  # garbage and invalid UTF-8 lines


@st.composite
def mixes(draw, fmt: str) -> Mix:
    valid = draw(st.lists(hits, min_size=1, max_size=25, unique=True))
    rendered = [hit.combined() if fmt == "combined" else hit.ndjson() for hit in valid]
    duplicates = draw(st.lists(st.sampled_from(rendered), max_size=6))
    junk = draw(st.lists(garbage, max_size=6))
    broken = []
    for line in draw(st.lists(st.sampled_from(rendered), max_size=4)):
        at = draw(st.integers(0, len(line)))
        broken.append(line[:at] + draw(st.sampled_from(INVALID_BYTES)) + line[at:])
    lines = draw(st.permutations(rendered + duplicates + junk + broken))
    return Mix(lines, len(rendered) + len(duplicates), len(rendered), len(junk) + len(broken))


def run(
    directory: Path, name: str, lines: list[bytes], db: Path | None = None
) -> tuple[store.FileCounts, Path]:
    path = directory / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    db = db or directory / f"{name}.duckdb"
    summary = cli.run_pipeline([path], db, without_limit(Config()), now=NOW)
    (counts,) = summary.files
    return counts, db


def twin_databases(directory: Path) -> tuple[Path, Path]:
    """Two empty databases with the same visitor salt, so access-log ids (and hence the
    order of events at the same instant) are comparable between them."""
    first, second = directory / "first.duckdb", directory / "second.duckdb"
    con = store.connect(first)
    try:
        store.ensure_schema(con)
        store.visitor_salt(con)
    finally:
        con.close()
    shutil.copy(first, second)
    return first, second


def query(db: Path, sql: str) -> pl.DataFrame:
    con = store.connect(db, read_only=True)
    try:
        return store.query(con, sql)
    finally:
        con.close()


def check_accounting(mix: Mix, counts: store.FileCounts) -> None:
    assert counts.n_read == counts.n_accepted + counts.n_duplicates + counts.n_quarantined
    assert counts.n_read == len(mix.lines)
    assert counts.n_quarantined == mix.n_bad
    assert counts.n_accepted == mix.n_distinct
    assert counts.n_duplicates == mix.n_valid - mix.n_distinct


def check_steps_in_one_session(db: Path) -> None:
    steps = query(db, "select session_id, event_id from marts.session_steps")
    events = query(db, "select event_id, url from raw.events")
    assert steps["event_id"].is_unique().all(), "an event is a step of two sessions"
    step_events = {e for e, url in events.iter_rows() if PAGES[url]}
    assert set(steps["event_id"]) == step_events
    sessions = query(db, "select session_id, n_steps from marts.sessions")
    per_session = steps.group_by("session_id").len()
    joined = sessions.join(per_session, on="session_id", how="full", coalesce=True)
    assert (joined["n_steps"] == joined["len"]).all(), "n_steps != steps listed"


@SETTINGS
@given(mix=mixes("combined"))
def test_combined_log_rows_are_all_accounted_for(mix):
    """Combined log: read == accepted + duplicates + quarantined, line by line."""
    with tempfile.TemporaryDirectory() as tmp:
        counts, db = run(Path(tmp), "access.log", mix.lines)
        check_accounting(mix, counts)
        check_steps_in_one_session(db)


@SETTINGS
@given(mix=mixes("ndjson"))
def test_ndjson_rows_are_all_accounted_for(mix):
    """NDJSON: read == accepted + duplicates + quarantined, line by line."""
    with tempfile.TemporaryDirectory() as tmp:
        counts, db = run(Path(tmp), "events.ndjson", mix.lines)
        check_accounting(mix, counts)
        check_steps_in_one_session(db)


def marts(db: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    sessions = query(db, "select * from marts.sessions order by session_id")
    steps = query(db, "select * from marts.session_steps order by session_id, step")
    return sessions, steps


def check_order_does_not_matter(mix: Mix, order, name: str) -> None:
    shuffled = list(mix.lines)
    order.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = twin_databases(Path(tmp))
        run(Path(tmp), name, mix.lines, first)
        run(Path(tmp), name, shuffled, second)
        for original, reordered in zip(marts(first), marts(second), strict=True):
            assert_frame_equal(reordered, original)


@SETTINGS
@given(mix=mixes("ndjson"), order=st.randoms(use_true_random=False))
def test_ndjson_sessions_do_not_depend_on_line_order(mix, order):
    """The same NDJSON lines in another order give identical sessions and steps."""
    check_order_does_not_matter(mix, order, "events.ndjson")


@SETTINGS
@given(mix=mixes("combined"), order=st.randoms(use_true_random=False))
def test_access_log_sessions_do_not_depend_on_line_order(mix, order):
    """The same log lines in another order give identical sessions and steps."""
    check_order_does_not_matter(mix, order, "access.log")
