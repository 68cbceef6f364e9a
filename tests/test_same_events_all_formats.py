"""The same journey, written as a combined log, NDJSON, CSV and Parquet, gives the same
sessions.

Nine hand-written events by two people:

- person A (a desktop) lands from Google, browses, loads a stylesheet (an asset, not a step),
  logs in as "alice" mid-journey, and comes back 31 minutes later to the order confirmation;
- person B (a phone) looks at two pages and leaves.

Identifiers depend on the format (an access log has no visitor id: the store hashes IP and
user agent with the database's salt), so sessions are compared on everything else:
boundaries, steps, timing, landing and exit pages, device, channel and conversion.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import cli, store
from pipeline.config import ColumnMapping, Config, InputConfig
from pipeline.schemas import UTC_US

DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:130.0) Gecko/20100101 Firefox/130.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"
)
GOOGLE = "https://www.google.com/"
VISITORS = {"A": ("203.0.113.10", DESKTOP), "B": ("198.51.100.20", PHONE)}

# who, UTC time, method, target, status, authenticated user, referrer
EVENTS = [
    ("A", (10, 0, 0), "GET", "/", 200, None, GOOGLE),
    ("A", (10, 2, 0), "GET", "/products/shoes", 200, None, None),
    ("A", (10, 2, 1), "GET", "/static/app.css", 200, None, None),
    ("A", (10, 5, 0), "GET", "/cart", 200, None, None),
    (
        "A",
        (10, 6, 0),
        "POST",
        "/login?email=alice%40example.com&next=%2Fcheckout",
        302,
        "alice",
        None,
    ),
    ("A", (10, 10, 0), "GET", "/checkout", 200, "alice", None),
    ("A", (10, 41, 0), "GET", "/checkout/success", 200, "alice", None),  # 31 min later
    ("B", (11, 0, 0), "GET", "/", 200, None, None),
    ("B", (11, 3, 0), "GET", "/products/hats", 200, None, None),
]
NOW = datetime(2024, 10, 12, tzinfo=UTC)


def at(hms: tuple[int, int, int]) -> datetime:
    return datetime(2024, 10, 10, *hms, tzinfo=UTC)


def event_type(method: str) -> str:
    """What the access-log parser makes of a method, so every format says the same."""
    return "page_view" if method in ("GET", "HEAD") else method.lower()


# -------------------------------------------------------------------- the four files


def write_combined(directory: Path) -> tuple[Path, Config]:
    """Apache combined log, local time of a server in +02:00."""
    rows = []
    for who, hms, method, target, status, user, referrer in EVENTS:
        ip, ua = VISITORS[who]
        local = (at(hms) + timedelta(hours=2)).strftime("%d/%b/%Y:%H:%M:%S +0200")
        rows.append(
            f'{ip} - {user or "-"} [{local}] "{method} {target} HTTP/1.1" {status} 1234 '
            f'"{referrer or "-"}" "{ua}"'
        )
    path = directory / "access.log"
    path.write_text("\n".join(rows) + "\n")
    return path, Config()


def write_ndjson(directory: Path) -> tuple[Path, Config]:
    """NDJSON with full URLs (host and fragment are normalised away) and mixed offsets."""
    rows = []
    for i, (who, hms, method, target, status, user, referrer) in enumerate(EVENTS):
        ts = at(hms)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ") if i % 2 else ts.isoformat()
        event = {
            "anonymous_id": f"anon-{who}",
            "ts": stamp,
            "event_type": event_type(method),
            "url": f"https://Shop.Example{target}#top",
            "status": status,
            "user_agent": VISITORS[who][1],
            "page_title": "ignored",
        }
        if user:
            event["user_id"] = user
        if referrer:
            event["referrer"] = referrer
        rows.append(json.dumps(event))
    path = directory / "events.ndjson"
    path.write_text("\n".join(rows) + "\n")
    return path, Config()


def write_csv(directory: Path) -> tuple[Path, Config]:
    """A warehouse export: its own column names, naive local Amsterdam time (UTC+2 in
    October), quoted user agents holding the separator."""
    rows = ["visitor;login;local_time;kind;page;code;agent;came_from"]
    for who, hms, method, target, status, user, referrer in EVENTS:
        local = (at(hms) + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
        agent = '"' + VISITORS[who][1].replace('"', '""') + '"'  # holds ";"
        rows.append(
            f"visitor-{who};{user or ''};{local};{event_type(method)};{target};{status};"
            f"{agent};{referrer or ''}"
        )
    path = directory / "export.csv"
    path.write_text("\r\n".join(rows) + "\r\n")
    cfg = Config(
        input=InputConfig(
            timezone="Europe/Amsterdam",
            csv_separator=";",
            columns=ColumnMapping(
                anonymous_id="visitor",
                user_id="login",
                ts="local_time",
                event_type="kind",
                url="page",
                status="code",
                user_agent="agent",
                referrer="came_from",
            ),
        )
    )
    return path, cfg


def write_parquet(directory: Path) -> tuple[Path, Config]:
    """Parquet with a native UTC timestamp column and an integer status."""
    frame = pl.DataFrame(
        {
            "anonymous_id": [f"pq-{e[0]}" for e in EVENTS],
            "ts": [at(e[1]) for e in EVENTS],
            "event_type": [event_type(e[2]) for e in EVENTS],
            "url": [e[3] for e in EVENTS],
            "status": [e[4] for e in EVENTS],
            "user_id": [e[5] for e in EVENTS],
            "referrer": [e[6] for e in EVENTS],
            "user_agent": [VISITORS[e[0]][1] for e in EVENTS],
        },
        schema_overrides={"ts": UTC_US},
    )
    path = directory / "events.parquet"
    frame.write_parquet(path)
    return path, Config()


WRITERS = {
    "combined": write_combined,
    "ndjson": write_ndjson,
    "csv": write_csv,
    "parquet": write_parquet,
}

# ------------------------------------------------------------------ expected, by hand
# A is "alice" in every session: the login stitches her earlier anonymous steps to her.
# A's first session: /, /products/shoes, /cart, /login, /checkout (the stylesheet is an
# asset, not a step); 10:10 -> 10:41 is 31 min > 30 min, so /checkout/success starts a
# second session, which converts (an order confirmation URL). B: one session of two steps.

EXPECTED_SESSIONS = pl.DataFrame(
    {
        "user_id": ["alice", "alice", None],
        "started_at": [at((10, 0, 0)), at((10, 41, 0)), at((11, 0, 0))],
        "ended_at": [at((10, 10, 0)), at((10, 41, 0)), at((11, 3, 0))],
        "duration_in_s": [600.0, 0.0, 180.0],
        "n_steps": [5, 1, 2],
        "landing_url": ["/", "/checkout/success", "/"],
        "exit_url": ["/checkout", "/checkout/success", "/products/hats"],
        "referrer": [GOOGLE, None, None],
        "channel": ["organic_search", "direct", "direct"],
        "is_bot": [False, False, False],
        "is_converted": [False, True, False],
    },
    schema_overrides={"started_at": UTC_US, "ended_at": UTC_US, "n_steps": pl.UInt32},
)

LOGIN = "/login?next=%2Fcheckout"  # the email parameter is scrubbed
EXPECTED_STEPS = pl.DataFrame(
    [
        (at((10, 0, 0)), 1, at((10, 0, 0)), "/", "page_view", 200, False),
        (at((10, 0, 0)), 2, at((10, 2, 0)), "/products/shoes", "page_view", 200, False),
        (at((10, 0, 0)), 3, at((10, 5, 0)), "/cart", "page_view", 200, False),
        (at((10, 0, 0)), 4, at((10, 6, 0)), LOGIN, "post", 302, False),
        (at((10, 0, 0)), 5, at((10, 10, 0)), "/checkout", "page_view", 200, False),
        (at((10, 41, 0)), 1, at((10, 41, 0)), "/checkout/success", "page_view", 200, True),
        (at((11, 0, 0)), 1, at((11, 0, 0)), "/", "page_view", 200, False),
        (at((11, 0, 0)), 2, at((11, 3, 0)), "/products/hats", "page_view", 200, False),
    ],
    schema={
        "started_at": UTC_US,
        "step": pl.UInt32,
        "ts": UTC_US,
        "url": pl.String,
        "event_type": pl.String,
        "status": pl.Int16,
        "is_conversion": pl.Boolean,
    },
    orient="row",
)

# Columns that do not depend on how the format identifies visitors.
SESSION_COLUMNS = [*EXPECTED_SESSIONS.columns, "device", "os", "browser", "n_persons"]


def sessions_and_steps(tmp_path: Path, fmt: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    directory = tmp_path / fmt
    directory.mkdir()
    path, cfg = WRITERS[fmt](directory)
    summary = cli.run_pipeline([path], directory / "journeymap.duckdb", cfg, now=NOW)
    (counts,) = summary.files
    assert counts.format == fmt
    assert (counts.n_read, counts.n_accepted, counts.n_quarantined) == (9, 9, 0)
    con = store.connect(directory / "journeymap.duckdb", read_only=True)
    try:
        sessions = store.query(
            con,
            "select *, count(distinct person_id) over () as n_persons "
            "from marts.sessions order by started_at",
        )
        steps = store.query(
            con,
            "select s.started_at, st.step, st.ts, st.url, st.event_type, st.status, "
            "st.is_conversion "
            "from marts.session_steps st join marts.sessions s using (session_id) "
            "order by s.started_at, st.step",
        )
    finally:
        con.close()
    return sessions.select(SESSION_COLUMNS), steps


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    tmp_path = tmp_path_factory.mktemp("formats")
    return {fmt: sessions_and_steps(tmp_path, fmt) for fmt in WRITERS}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_sessions_match_the_hand_computed_ones(results, fmt):
    """Each format gives the three sessions worked out by hand, for two persons."""
    sessions, _ = results[fmt]
    assert_frame_equal(sessions.select(EXPECTED_SESSIONS.columns), EXPECTED_SESSIONS)
    assert sessions["n_persons"].to_list() == [2, 2, 2]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_session_steps_match_the_hand_computed_ones(results, fmt):
    """Each format gives the eight steps worked out by hand (the stylesheet is not a step)."""
    _, steps = results[fmt]
    assert_frame_equal(steps, EXPECTED_STEPS)


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet"])
def test_every_format_gives_the_sessions_of_the_access_log(results, fmt):
    """Sessions and steps are identical across formats, device and browser included."""
    assert_frame_equal(results[fmt][0], results["combined"][0])
    assert_frame_equal(results[fmt][1], results["combined"][1])
