"""Unit tests of `pipeline.sessionize`: one rule per test, tiny inline event frames.

Expected values are worked out by hand from the rows each test builds. Session ids follow the
documented rule `<person_id>:<start in epoch ms>`, so `sid()` spells them out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import schemas, sessionize
from pipeline.config import BotConfig, Config, ConversionConfig, SessionConfig, StepConfig

T0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)  # a Tuesday in winter (Amsterdam = UTC+1)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0"
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

# The stored-event columns sessionize reads (schemas.EVENTS without the lineage columns).
EVENT_SCHEMA = {
    name: dtype
    for name, dtype in schemas.EVENTS.columns.items()
    if name not in ("source", "source_line")
}
DEFAULTS = {
    "anonymous_id": "a1",
    "user_id": None,
    "event_type": "page_view",
    "url": "/",
    "host": "shop.example",
    "referrer": None,
    "user_agent": FIREFOX,
    "status": 200,
    "revenue": None,
    "utm_source": None,
    "utm_medium": None,
    "utm_campaign": None,
}


def at(h: float = 0, m: float = 0, s: float = 0, day: int = 0) -> datetime:
    """A moment relative to T0 (2024-03-05 10:00:00 UTC)."""
    return T0 + timedelta(days=day, hours=h, minutes=m, seconds=s)


def events(*rows: dict) -> pl.LazyFrame:
    """Stored events from partial rows: `ts` is required, event_id defaults to e1, e2, ..."""
    full = [{"event_id": f"e{i}", **DEFAULTS, **row} for i, row in enumerate(rows, start=1)]
    return pl.DataFrame(full, schema=EVENT_SCHEMA, orient="row").lazy()


def sid(person_id: str, started_at: datetime) -> str:
    """The documented session id: person, then the session start in epoch milliseconds."""
    return f"{person_id}:{int(started_at.timestamp()) * 1000}"


def cfg_with(**sessions) -> Config:
    return Config(sessions=SessionConfig(**sessions))


def step_frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    """Expected (event_id, session_id, step) rows, in key order."""
    return pl.DataFrame(
        rows,
        schema={"event_id": pl.String, "session_id": pl.String, "step": pl.UInt32},
        orient="row",
    ).sort("session_id", "step")


def assigned(frame: pl.LazyFrame, cfg: Config | None = None) -> pl.DataFrame:
    """session_steps of `frame`, reduced to which session and step each event landed in (in
    key order: persons come in the order of a hash of their id)."""
    _, steps = sessionize.sessionize(frame, cfg or Config())
    return steps.select("event_id", "session_id", "step").sort("session_id", "step")


# ----------------------------------------------------------------------- inactivity timeout


def test_gap_of_exactly_the_timeout_continues_the_session():
    """A gap of exactly 30:00 (the default timeout_s = 1800) continues the session."""
    frame = events({"ts": at()}, {"ts": at(m=30)})
    expected = step_frame([("e1", sid("a:a1", at()), 1), ("e2", sid("a:a1", at()), 2)])
    assert_frame_equal(assigned(frame), expected)


def test_gap_one_second_over_the_timeout_starts_a_new_session():
    """A gap of 30:01 ends the session; the next step starts a new one."""
    frame = events({"ts": at()}, {"ts": at(m=30, s=1)})
    expected = step_frame([("e1", sid("a:a1", at()), 1), ("e2", sid("a:a1", at(m=30, s=1)), 1)])
    assert_frame_equal(assigned(frame), expected)


def test_timeout_is_configurable():
    """With timeout_s = 600 a 10:00 gap continues and a 10:01 gap splits."""
    frame = events({"ts": at()}, {"ts": at(m=10)}, {"ts": at(m=20, s=1)})
    expected = step_frame(
        [
            ("e1", sid("a:a1", at()), 1),
            ("e2", sid("a:a1", at()), 2),
            ("e3", sid("a:a1", at(m=20, s=1)), 1),
        ]
    )
    assert_frame_equal(assigned(frame, cfg_with(timeout_s=600)), expected)


# ------------------------------------------------------------------------------ max duration


def test_max_duration_cuts_a_long_active_visit_after_24_hours_by_default():
    """A visit that never pauses longer than the timeout is still cut every 24 h (max_duration_s).

    Steps every 30:00 from T0 for 24.5 h: the 49th step lands exactly 24 h after the start and
    opens the second session, which holds the steps at +24:00 and +24:30.
    """
    n_steps = 50
    frame = events(*({"ts": at(m=30 * i)} for i in range(n_steps)))
    sessions, _ = sessionize.sessionize(frame, Config())
    expected = pl.DataFrame(
        {
            "session_id": [sid("a:a1", at()), sid("a:a1", at(h=24))],
            "n_steps": pl.Series([48, 2], dtype=pl.UInt32),
            "started_at": [at(), at(h=24)],
            "ended_at": [at(h=23, m=30), at(h=24, m=30)],
        },
        schema_overrides={"started_at": schemas.UTC_US, "ended_at": schemas.UTC_US},
    )
    assert_frame_equal(sessions.select(expected.columns), expected)


def test_max_duration_is_configurable():
    """With max_duration_s = 3600, steps every 20 min form sessions of at most one hour."""
    frame = events(*({"ts": at(m=20 * i)} for i in range(5)))  # 0, 20, 40, 60, 80 min
    expected = step_frame(
        [
            ("e1", sid("a:a1", at()), 1),
            ("e2", sid("a:a1", at()), 2),
            ("e3", sid("a:a1", at()), 3),
            ("e4", sid("a:a1", at(h=1)), 1),
            ("e5", sid("a:a1", at(h=1)), 2),
        ]
    )
    assert_frame_equal(assigned(frame, cfg_with(max_duration_s=3600)), expected)


# --------------------------------------------------------------------------------- midnight


def test_a_session_across_midnight_stays_one_by_default():
    """split_at_midnight is off by default: 23:50 and 00:10 UTC are one session."""
    before = datetime(2024, 3, 5, 23, 50, tzinfo=UTC)
    after = datetime(2024, 3, 6, 0, 10, tzinfo=UTC)
    frame = events({"ts": before}, {"ts": after})
    expected = step_frame([("e1", sid("a:a1", before), 1), ("e2", sid("a:a1", before), 2)])
    assert_frame_equal(assigned(frame), expected)


def test_split_at_midnight_uses_local_midnight_of_the_configured_timezone():
    """With split_at_midnight in Europe/Amsterdam (UTC+1 in March), a session splits at 23:00
    UTC (local midnight) and not at 00:00 UTC.

    a1: 22:50Z and 23:10Z are 23:50 and 00:10 local: two sessions.
    a2: 23:50Z and 00:10Z are 00:50 and 01:10 local, one local day: one session.
    """
    a1_before = datetime(2024, 3, 5, 22, 50, tzinfo=UTC)
    a1_after = datetime(2024, 3, 5, 23, 10, tzinfo=UTC)
    a2_before = datetime(2024, 3, 5, 23, 50, tzinfo=UTC)
    a2_after = datetime(2024, 3, 6, 0, 10, tzinfo=UTC)
    frame = events(
        {"ts": a1_before},
        {"ts": a1_after},
        {"ts": a2_before, "anonymous_id": "a2"},
        {"ts": a2_after, "anonymous_id": "a2"},
    )
    cfg = cfg_with(split_at_midnight=True, timezone="Europe/Amsterdam")
    expected = step_frame(
        [
            ("e1", sid("a:a1", a1_before), 1),
            ("e2", sid("a:a1", a1_after), 1),
            ("e3", sid("a:a2", a2_before), 1),
            ("e4", sid("a:a2", a2_before), 2),
        ]
    )
    assert_frame_equal(assigned(frame, cfg), expected)


# ------------------------------------------------------------------------- campaign change


def _campaign_visit() -> pl.LazyFrame:
    """spring-sale, untagged, summer-sale, untagged: 5 minutes apart, one visit."""
    spring = {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "spring-sale"}
    summer = {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "summer-sale"}
    return events(
        {"ts": at(), **spring},
        {"ts": at(m=5)},
        {"ts": at(m=10), **summer},
        {"ts": at(m=15)},
    )


def test_campaign_change_does_not_split_by_default():
    """split_on_campaign_change is off by default: a new utm_campaign mid-visit continues."""
    expected = step_frame([(f"e{i}", sid("a:a1", at()), i) for i in range(1, 5)])
    assert_frame_equal(assigned(_campaign_visit()), expected)


def test_split_on_campaign_change_starts_a_session_at_a_new_campaign():
    """With split_on_campaign_change, a new utm_campaign mid-visit starts a new session and the
    untagged steps after it continue the session they are in."""
    expected = step_frame(
        [
            ("e1", sid("a:a1", at()), 1),
            ("e2", sid("a:a1", at()), 2),
            ("e3", sid("a:a1", at(m=10)), 1),
            ("e4", sid("a:a1", at(m=10)), 2),
        ]
    )
    assert_frame_equal(
        assigned(_campaign_visit(), cfg_with(split_on_campaign_change=True)), expected
    )


def test_the_same_campaign_again_continues_the_session():
    """With split_on_campaign_change, returning to the campaign already running is no change."""
    spring = {"utm_source": "newsletter", "utm_campaign": "spring-sale"}
    frame = events({"ts": at(), **spring}, {"ts": at(m=5)}, {"ts": at(m=10), **spring})
    expected = step_frame([(f"e{i}", sid("a:a1", at()), i) for i in range(1, 4)])
    assert_frame_equal(assigned(frame, cfg_with(split_on_campaign_change=True)), expected)


def test_a_campaign_arriving_in_an_untagged_visit_starts_a_new_session():
    """With split_on_campaign_change, a visit that began untagged (direct) and then arrives
    through a campaign link starts a new session at the campaign step: it is a new campaign."""
    frame = events(
        {"ts": at()},
        {"ts": at(m=5), "utm_source": "newsletter", "utm_campaign": "spring-sale"},
        {"ts": at(m=10)},
    )
    expected = step_frame(
        [
            ("e1", sid("a:a1", at()), 1),
            ("e2", sid("a:a1", at(m=5)), 1),
            ("e3", sid("a:a1", at(m=5)), 2),
        ]
    )
    assert_frame_equal(assigned(frame, cfg_with(split_on_campaign_change=True)), expected)


def test_campaign_split_does_not_depend_on_an_earlier_visit():
    """Whether a visit splits on a campaign depends on that visit only: an earlier, separate
    visit of the same person (here a day before, with another campaign) changes nothing."""
    today = [
        {"ts": at(day=1), "event_id": "t1"},
        {"ts": at(day=1, m=5), "event_id": "t2", "utm_source": "google", "utm_campaign": "x"},
        {"ts": at(day=1, m=10), "event_id": "t3"},
    ]
    yesterday = {"ts": at(), "event_id": "y1", "utm_source": "google", "utm_campaign": "y"}
    cfg = cfg_with(split_on_campaign_change=True)
    alone = assigned(events(*today), cfg)
    with_history = assigned(events(yesterday, *today), cfg).filter(pl.col("event_id") != "y1")
    assert_frame_equal(with_history, alone)


# ------------------------------------------------------------------------ time and ordering


def test_timezone_offsets_do_not_matter_once_in_utc():
    """12:00+02:00 and 05:20-05:00 are 10:00Z and 10:20Z: 20 minutes apart, one session."""
    cest = timezone(timedelta(hours=2))
    est = timezone(timedelta(hours=-5))
    frame = events(
        {"ts": datetime(2024, 3, 5, 12, 0, tzinfo=cest)},
        {"ts": datetime(2024, 3, 5, 5, 20, tzinfo=est)},
    )
    sessions, _ = sessionize.sessionize(frame, Config())
    expected = pl.DataFrame(
        {"session_id": [sid("a:a1", at())], "n_steps": pl.Series([2], dtype=pl.UInt32)}
    ).with_columns(
        started_at=pl.lit(at(), schemas.UTC_US), ended_at=pl.lit(at(m=20), schemas.UTC_US)
    )
    assert_frame_equal(sessions.select(expected.columns), expected)


def test_out_of_order_input_gives_the_same_result():
    """Sessions and steps do not depend on the order of the input rows."""
    rows = [
        {"ts": at(), "url": "/"},
        {"ts": at(m=2), "url": "/shoes", "anonymous_id": "a2"},
        {"ts": at(m=10), "url": "/shoes/red"},
        {"ts": at(m=50), "url": "/cart"},
        {"ts": at(m=51), "url": "/checkout/success", "user_id": "u1"},
        {"ts": at(m=3), "url": "/help", "anonymous_id": "a2"},
    ]
    in_order = sessionize.sessionize(events(*rows), Config())
    # The same rows (and event ids) shuffled: ids are assigned before shuffling.
    frame = events(*rows).collect()
    shuffled = sessionize.sessionize(frame.reverse().lazy(), Config())
    assert_frame_equal(shuffled[0], in_order[0])
    assert_frame_equal(shuffled[1], in_order[1])


def test_steps_are_numbered_1_to_n_in_time_order():
    """Within a session, step runs 1..n in time order, whatever the input order."""
    frame = events(
        {"ts": at(m=20), "event_id": "c"},
        {"ts": at(), "event_id": "a"},
        {"ts": at(m=30), "event_id": "d"},
        {"ts": at(m=10), "event_id": "b"},
    )
    expected = step_frame([(e, sid("a:a1", at()), i) for i, e in enumerate("abcd", start=1)])
    assert_frame_equal(assigned(frame), expected)


def test_session_id_is_deterministic_and_unique():
    """The session id is `<person_id>:<start epoch ms>`: the same input gives the same ids, and
    no two sessions share one."""
    frame = events(
        {"ts": at()},
        {"ts": at(m=40)},
        {"ts": at(), "anonymous_id": "a2"},
        {"ts": at(m=1), "anonymous_id": "a3", "user_id": "u3"},
    )
    first, _ = sessionize.sessionize(frame, Config())
    second, _ = sessionize.sessionize(frame, Config())
    expected_ids = sorted([sid("a:a1", at()), sid("a:a1", at(m=40)), sid("a:a2", at()),
                           sid("u:u3", at(m=1))])  # fmt: skip
    assert sorted(first["session_id"].to_list()) == expected_ids
    assert first["session_id"].to_list() == second["session_id"].to_list()
    assert first["session_id"].n_unique() == first.height


def test_sessions_and_steps_satisfy_their_contracts():
    """sessions and session_steps validate against schemas.SESSIONS and SESSION_STEPS."""
    frame = events(
        {"ts": at(), "url": "/?utm_source=google&utm_medium=cpc", "utm_source": "google",
         "utm_medium": "cpc"},
        {"ts": at(m=3), "url": "/cart", "user_id": "u1"},
        {"ts": at(m=4), "url": "/checkout/success", "event_type": "purchase", "revenue": 20.0},
        {"ts": at(m=1), "anonymous_id": "bot", "user_agent": GOOGLEBOT},
        {"ts": at(m=2), "anonymous_id": "nobody", "user_agent": None, "status": None},
    )  # fmt: skip
    sessions, steps = sessionize.sessionize(frame, Config())
    schemas.validate(sessions, schemas.SESSIONS)
    schemas.validate(steps, schemas.SESSION_STEPS)
    assert sessions.height == 3


def test_session_summary_columns():
    """A session's summary: first/last step, step count, duration, landing/exit URL, revenue."""
    frame = events(
        {"ts": at(), "url": "/shoes", "referrer": "https://www.google.com/search?q=shoes"},
        {"ts": at(m=4), "url": "/cart", "event_type": "add_to_cart"},
        {"ts": at(m=9, s=30), "url": "/checkout/success", "revenue": 59.5},
    )
    sessions, _ = sessionize.sessionize(frame, Config())
    expected = pl.DataFrame(
        {
            "session_id": [sid("a:a1", at())],
            "person_id": ["a:a1"],
            "anonymous_id": ["a1"],
            "user_id": pl.Series([None], dtype=pl.String),
            "started_at": pl.Series([at()], dtype=schemas.UTC_US),
            "ended_at": pl.Series([at(m=9, s=30)], dtype=schemas.UTC_US),
            "duration_in_s": [570.0],
            "n_steps": pl.Series([3], dtype=pl.UInt32),
            "landing_url": ["/shoes"],
            "exit_url": ["/checkout/success"],
            "referrer": ["https://www.google.com/search?q=shoes"],
            "device": ["desktop"],
            "os": ["Linux"],
            "browser": ["Firefox"],
            "channel": ["organic_search"],
            "revenue": [59.5],
            "is_bot": [False],
            "is_converted": [True],
        }
    )
    assert_frame_equal(sessions.select(expected.columns), expected)


# ------------------------------------------------------------------------- identity stitching


def test_steps_before_login_belong_to_the_logged_in_person_and_session():
    """a1 browses anonymously, then logs in as u1: every step is person u:u1, one session."""
    frame = events(
        {"ts": at(), "url": "/"},
        {"ts": at(m=5), "url": "/shoes"},
        {"ts": at(m=10), "url": "/account", "user_id": "u1"},
        {"ts": at(m=15), "url": "/cart", "user_id": "u1"},
    )
    stitched = sessionize.stitch_identities(frame).collect().sort("event_id")
    assert stitched["person_id"].to_list() == ["u:u1"] * 4
    expected = step_frame([(f"e{i}", sid("u:u1", at()), i) for i in range(1, 5)])
    assert_frame_equal(assigned(frame), expected)
    sessions, _ = sessionize.sessionize(frame, Config())
    assert sessions.select("person_id", "anonymous_id", "user_id").rows() == [("u:u1", "a1", "u1")]


def test_the_same_user_on_a_second_device_is_the_same_person():
    """u1 logs in on phone a1 one day and on laptop b1 the next: both are person u:u1."""
    frame = events(
        {"ts": at(), "anonymous_id": "a1", "user_agent": IPHONE_SAFARI},
        {"ts": at(m=2), "anonymous_id": "a1", "user_id": "u1", "user_agent": IPHONE_SAFARI},
        {"ts": at(day=1), "anonymous_id": "b1", "user_agent": WINDOWS_CHROME},
        {"ts": at(day=1, m=1), "anonymous_id": "b1", "user_id": "u1",
         "user_agent": WINDOWS_CHROME},
    )  # fmt: skip
    sessions, _ = sessionize.sessionize(frame, Config())
    expected = pl.DataFrame(
        {
            "session_id": [sid("u:u1", at()), sid("u:u1", at(day=1))],
            "person_id": ["u:u1", "u:u1"],
            "anonymous_id": ["a1", "b1"],
            "user_id": ["u1", "u1"],
            "device": ["mobile", "desktop"],
        }
    )
    assert_frame_equal(sessions.select(expected.columns), expected)


def test_a_shared_device_is_stitched_to_the_first_user_it_logged_in_with():
    """a1 logs in as u1, later as u2: its anonymous steps belong to u1 (the first login);
    a step logged in as u2 stays u2's."""
    frame = events(
        {"ts": at()},
        {"ts": at(m=5), "user_id": "u1"},
        {"ts": at(m=20), "user_id": "u2"},
        {"ts": at(m=25)},
    )
    stitched = sessionize.stitch_identities(frame).collect().sort("event_id")
    assert stitched["person_id"].to_list() == ["u:u1", "u:u1", "u:u2", "u:u1"]


def test_an_anonymous_id_that_never_logs_in_stays_anonymous():
    """A device that never logs in keeps person_id a:<anonymous_id> and no user_id."""
    frame = events(
        {"ts": at(), "anonymous_id": "a1", "user_id": "u1"},
        {"ts": at(), "anonymous_id": "a2"},
        {"ts": at(m=5), "anonymous_id": "a2"},
    )
    stitched = sessionize.stitch_identities(frame).collect().sort("event_id")
    assert stitched["person_id"].to_list() == ["u:u1", "a:a2", "a:a2"]
    sessions, _ = sessionize.sessionize(frame, Config())
    anonymous = sessions.filter(pl.col("anonymous_id") == "a2")
    assert anonymous.select("person_id", "user_id").rows() == [("a:a2", None)]


# ----------------------------------------------------------------------------------- bots


def _bot_flags(frame: pl.LazyFrame, cfg: BotConfig) -> dict[str, bool]:
    flagged = sessionize.flag_bots(frame, cfg).collect()
    per_id = flagged.group_by("anonymous_id").agg(pl.col("is_bot").unique())
    return {aid: sorted(flags) for aid, flags in per_id.iter_rows()}


def test_bot_user_agents_are_flagged():
    """Googlebot, python-requests and curl are bots by user agent; Firefox is not."""
    frame = events(
        {"ts": at(), "anonymous_id": "google", "user_agent": GOOGLEBOT},
        {"ts": at(), "anonymous_id": "script", "user_agent": "python-requests/2.31.0"},
        {"ts": at(), "anonymous_id": "curl", "user_agent": "curl/8.4.0"},
        {"ts": at(), "anonymous_id": "human", "user_agent": FIREFOX},
        {"ts": at(m=1), "anonymous_id": "human", "user_agent": FIREFOX},
    )
    assert _bot_flags(frame, BotConfig()) == {
        "google": [True],
        "script": [True],
        "curl": [True],
        "human": [False],
    }


def test_bot_sessions_are_kept_and_flagged():
    """Bot sessions stay in `sessions` with is_bot = true (excluded from metrics later)."""
    frame = events(
        {"ts": at(), "anonymous_id": "google", "user_agent": GOOGLEBOT},
        {"ts": at(m=1), "anonymous_id": "human"},
    )
    sessions, _ = sessionize.sessionize(frame, Config())
    assert sessions.select("person_id", "is_bot", "device").rows() == [
        ("a:google", True, "bot"),
        ("a:human", False, "desktop"),
    ]


def test_an_inhuman_step_rate_is_a_bot_even_with_a_browser_user_agent():
    """More than max_steps_per_minute steps within 60 s flags the visitor, all of its steps."""
    frame = events(*({"ts": at(s=5 * i), "url": f"/p/{i}"} for i in range(5)))  # 5 in 20 s
    assert _bot_flags(frame, BotConfig(max_steps_per_minute=4)) == {"a1": [True]}


def test_a_fast_but_human_step_rate_is_not_a_bot():
    """max_steps_per_minute = 4: four quick steps, then a fifth 61 s after the first, is human
    (no five steps fall within one minute)."""
    times = [0, 2, 4, 6, 61]
    frame = events(*({"ts": at(s=t), "url": f"/p/{t}"} for t in times))
    assert _bot_flags(frame, BotConfig(max_steps_per_minute=4)) == {"a1": [False]}


def test_a_human_clicking_every_two_seconds_is_not_a_bot_by_default():
    """Default max_steps_per_minute = 60: ten steps two seconds apart are human."""
    frame = events(*({"ts": at(s=2 * i), "url": f"/p/{i}"} for i in range(10)))
    assert _bot_flags(frame, BotConfig()) == {"a1": [False]}


def test_assets_do_not_count_towards_the_step_rate():
    """A page that loads many assets in one second is one step, not an inhuman rate."""
    assets = ["/app.js", "/site.css", "/logo.png", "/hero.webp", "/font.woff2"]
    frame = events(
        {"ts": at(), "url": "/"},
        *({"ts": at(s=0.1 * (i + 1)), "url": url} for i, url in enumerate(assets)),
    )
    cfg = Config(bots=BotConfig(max_steps_per_minute=2))
    sessions, steps = sessionize.sessionize(frame, cfg)
    assert sessions["is_bot"].to_list() == [False]
    assert steps["url"].to_list() == ["/"]


# ----------------------------------------------------------------------- assets and health


def test_assets_and_health_checks_are_not_steps():
    """Static assets (also with query strings and upper-case extensions) and health checks
    are dropped; pages whose path merely mentions js/css stay."""
    urls = [
        "/",
        "/static/app.js",
        "/static/site.css?v=3",
        "/img/Logo.PNG",
        "/fonts/inter.woff2",
        "/healthz",
        "/healthz?probe=k8s",
        "/health/",
        "/blog/css-tips",
        "/products/jsonic?colour=red",
    ]
    frame = events(*({"ts": at(s=i), "url": url} for i, url in enumerate(urls)))
    kept = sessionize.journey_steps(frame, StepConfig()).collect()
    assert kept["url"].to_list() == ["/", "/blog/css-tips", "/products/jsonic?colour=red"]


def test_assets_and_health_checks_do_not_keep_a_session_alive():
    """Requests that are not steps do not bridge a gap: the pages at 10:00 and 10:55 are
    55 minutes apart even with an asset at 10:20 and a health check at 10:40."""
    frame = events(
        {"ts": at(), "url": "/"},
        {"ts": at(m=20), "url": "/app.js"},
        {"ts": at(m=40), "url": "/healthz"},
        {"ts": at(m=55), "url": "/cart"},
    )
    expected = step_frame([("e1", sid("a:a1", at()), 1), ("e4", sid("a:a1", at(m=55)), 1)])
    assert_frame_equal(assigned(frame), expected)


# ------------------------------------------------------------------------------ conversion


def _converts(frame: pl.LazyFrame, cfg: ConversionConfig) -> list[bool]:
    return frame.select(sessionize.is_conversion(cfg)).collect().to_series().to_list()


def test_conversion_by_event_type():
    """A `purchase` event converts whatever its URL; a page view of an ordinary page does not."""
    frame = events(
        {"ts": at(), "event_type": "purchase", "url": "/api/orders"},
        {"ts": at(), "event_type": "page_view", "url": "/api/orders"},
        {"ts": at(), "event_type": "order_completed", "url": "/"},
    )
    assert _converts(frame, ConversionConfig()) == [True, False, True]


@pytest.mark.parametrize(
    ("url", "converts"),
    [
        ("/checkout/success", True),
        ("/checkout/success?order=123", True),
        ("/order-confirmation", True),
        ("/nl/afrekenen/bevestiging", True),
        ("/checkout/payment", False),
        ("/checkout", False),
        ("/", False),
        ("/shoes?next=/checkout/success", False),
    ],
)
def test_conversion_by_default_url_pattern(url, converts):
    """The default URL pattern matches order-confirmation paths (query ignored) only."""
    frame = events({"ts": at(), "url": url})
    assert _converts(frame, ConversionConfig()) == [converts]


def test_conversion_url_pattern_is_configurable():
    """A custom url_pattern replaces the default; event types still convert."""
    cfg = ConversionConfig(event_types=("purchase",), url_pattern=r"^/done$")
    frame = events(
        {"ts": at(), "url": "/done"},
        {"ts": at(), "url": "/checkout/success"},
        {"ts": at(), "url": "/x", "event_type": "purchase"},
    )
    assert _converts(frame, cfg) == [True, False, True]


def test_a_session_with_a_conversion_step_is_converted():
    """is_converted is true for a session holding a conversion step, false otherwise."""
    frame = events(
        {"ts": at(), "url": "/cart"},
        {"ts": at(m=2), "url": "/checkout/success"},
        {"ts": at(), "anonymous_id": "a2", "url": "/checkout/payment"},
    )
    sessions, steps = sessionize.sessionize(frame, Config())
    assert sessions.select("person_id", "is_converted").rows() == [
        ("a:a1", True),
        ("a:a2", False),
    ]
    assert steps.select("event_id", "is_conversion").sort("event_id").rows() == [
        ("e1", False),
        ("e2", True),
        ("e3", False),
    ]


# -------------------------------------------------------------------------------- channel


@pytest.mark.parametrize(
    ("utm_medium", "utm_source", "referrer", "channel"),
    [
        ("cpc", "google", None, "paid_search"),
        ("email", "newsletter", None, "email"),
        (None, None, "https://www.google.com/", "organic_search"),
        (None, None, "https://www.google.nl/search?q=schoenen", "organic_search"),
        (None, None, "https://m.facebook.com/", "organic_social"),
        (None, None, None, "direct"),
        (None, None, "https://shop.example/cart", "direct"),
        (None, None, "https://blog.example.org/best-shoes", "referral"),
    ],
)
def test_channel_classification(utm_medium, utm_source, referrer, channel):
    """UTM medium decides first (cpc → paid search, email → email); else the landing referrer:
    a search engine, a social site, none or the shop itself (direct), any other site."""
    session = pl.DataFrame(
        {
            "utm_medium": [utm_medium],
            "utm_source": [utm_source],
            "referrer": [referrer],
            "landing_host": ["shop.example"],
        },
        schema={c: pl.String for c in ("utm_medium", "utm_source", "referrer", "landing_host")},
    )
    assert session.select(sessionize.classify_channel()).item() == channel


# ----------------------------------------------------------------------------- user agents


def test_user_agents_are_classified_into_device_os_and_browser():
    """device, os and browser for common agents; a missing user agent is 'unknown'."""
    agents = pl.Series(
        [IPHONE_SAFARI, ANDROID_CHROME, IPAD_SAFARI, WINDOWS_CHROME, GOOGLEBOT, None, GOOGLEBOT]
    )
    expected = pl.DataFrame(
        [
            (IPHONE_SAFARI, "mobile", "iOS", "Mobile Safari"),
            (ANDROID_CHROME, "mobile", "Android", "Chrome Mobile"),
            (IPAD_SAFARI, "tablet", "iOS", "Mobile Safari"),
            (WINDOWS_CHROME, "desktop", "Windows", "Chrome"),
            (GOOGLEBOT, "bot", "Other", "Googlebot"),
            (None, "unknown", "unknown", "unknown"),
        ],
        schema={c: pl.String for c in ("user_agent", "device", "os", "browser")},
        orient="row",
    )
    classified = sessionize.classify_user_agents(agents)
    assert classified.height == 6  # one row per distinct agent, null included
    assert_frame_equal(classified, expected, check_row_order=False)


def test_device_groups_follow_chains_of_shared_logins():
    """d1 and d2 share user u5, d2 and d3 share u2: one group, labelled with the smallest
    user id (u2); d4 logged in only as u9: its own group. Devices without logins are absent."""
    pairs = pl.DataFrame(
        {
            "anonymous_id": ["d1", "d2", "d2", "d3", "d4", "d1"],
            "user_id": ["u5", "u5", "u2", "u2", "u9", "u5"],
        }
    )
    groups = sessionize.device_groups(pairs).sort("anonymous_id")
    assert groups.rows() == [("d1", "u2"), ("d2", "u2"), ("d3", "u2"), ("d4", "u9")]


@pytest.mark.parametrize("colliding", [False, True], ids=["hashes", "colliding-hashes"])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 7])
def test_person_partitions_keep_persons_whole_and_sessions_unchanged(
    n_parts, colliding, monkeypatch
):
    """d1 and d2 share u5, d2 and d3 share u2 (one person's devices, chained); d4 logs in as
    u9 only later; d5 and d6 never log in. Whatever the number of partitions, each device
    group lies in one partition, no event is lost or repeated, and sessionising partition by
    partition gives exactly the sessions and steps of one pass. Also when every device id
    shares one hash (devices then meet their group by id)."""
    if colliding:
        monkeypatch.setattr(sessionize, "id_hash", _colliding_hash)
        monkeypatch.setattr(schemas, "key_hash", lambda columns: pl.lit(7, pl.UInt64))
    frame = events(
        {"ts": at(), "anonymous_id": "d1"},
        {"ts": at(m=1), "anonymous_id": "d1", "user_id": "u5"},
        {"ts": at(m=2), "anonymous_id": "d2", "user_id": "u5"},
        {"ts": at(m=3), "anonymous_id": "d2"},
        {"ts": at(m=50), "anonymous_id": "d2", "user_id": "u2"},
        {"ts": at(h=2), "anonymous_id": "d3"},
        {"ts": at(h=2, m=5), "anonymous_id": "d3", "user_id": "u2"},
        {"ts": at(), "anonymous_id": "d4"},
        {"ts": at(m=10), "anonymous_id": "d4", "user_id": "u9"},
        {"ts": at(), "anonymous_id": "d5"},
        {"ts": at(m=5), "anonymous_id": "d6"},
        {"ts": at(h=1), "anonymous_id": "d6"},
    ).collect()
    partitions = sessionize.person_partitions(frame, n_parts)
    assert 1 <= len(partitions) <= n_parts
    assert_frame_equal(pl.concat(partitions), frame, check_row_order=False)
    where = {
        device: i
        for i, part in enumerate(partitions)
        for device in part["anonymous_id"].unique().to_list()
    }
    assert where["d1"] == where["d2"] == where["d3"]
    # Each device in exactly one partition.
    assert sum(part["anonymous_id"].n_unique() for part in partitions) == 6

    whole_sessions, whole_steps = sessionize.sessionize(frame.lazy(), Config())
    pieces = [sessionize.sessionize(part.lazy(), Config()) for part in partitions]
    assert_frame_equal(pl.concat([s for s, _ in pieces]), whole_sessions, check_row_order=False)
    assert_frame_equal(pl.concat([s for _, s in pieces]), whole_steps, check_row_order=False)
    # Hand-checked: the chained devices hold two persons, u5 (d1, d2 until u2 logs in) and
    # u2 (d2's u2 event, then d3 70 minutes later: two sessions); neither is split.
    by_person = whole_sessions.group_by("person_id").agg(pl.len()).sort("person_id").rows()
    assert by_person == [("a:d5", 1), ("a:d6", 2), ("u:u2", 2), ("u:u5", 1), ("u:u9", 1)]


def test_conversion_and_asset_urls_are_judged_right_on_many_repeated_urls():
    """Both are judged once per distinct URL and looked up per step: on thousands of steps
    over a few URLs (with and without a query) they agree with a regex on every step."""
    cfg = Config()
    urls = ["/checkout/confirmation", "/checkout/confirmation?o=1", "/cart", "/logo.png?v=2",
            "/health", "/thank-you", "/p/1.html", "/de/checkout/success"]  # fmt: skip
    frame = pl.DataFrame(
        {
            "url": [urls[(i * 7) % len(urls)] for i in range(4000)],
            "event_type": ["purchase" if i % 97 == 0 else "page_view" for i in range(4000)],
        }
    )
    path = pl.col("url").str.replace(r"\?.*$", "")
    per_step = pl.col("event_type").is_in(list(cfg.conversion.event_types)) | path.str.contains(
        cfg.conversion.url_pattern
    )
    judged = frame.with_columns(
        looked_up=sessionize.is_conversion(cfg.conversion), per_step=per_step
    )
    assert judged["looked_up"].to_list() == judged["per_step"].to_list()
    assert judged["looked_up"].sum() > 1000
    kept = sessionize.journey_steps(frame.lazy(), cfg.steps).collect()
    assert set(kept["url"]) == set(urls) - {"/logo.png?v=2", "/health"}
    assert kept.height == 4000 - frame["url"].is_in(["/logo.png?v=2", "/health"]).sum()


def _colliding_hash(column: str) -> pl.Expr:
    """Every id of one length shares a hash: "a:a1" and "a:a2" collide, as do "a1" and "a2"."""
    return pl.col(column).str.len_bytes().cast(pl.UInt64)


def test_persons_sharing_a_hash_are_still_sessionised_apart(monkeypatch):
    """Persons are sorted by a hash of their id; two persons whose ids share it interleave in
    time, which is detected, and their steps are sorted by the ids themselves."""
    frame = events(
        {"ts": at(), "anonymous_id": "a1"},
        {"ts": at(m=1), "anonymous_id": "a2"},
        {"ts": at(m=2), "anonymous_id": "a1"},
        {"ts": at(m=3), "anonymous_id": "a2"},
    )
    expected = step_frame(
        [
            ("e1", sid("a:a1", at()), 1),
            ("e3", sid("a:a1", at()), 2),
            ("e2", sid("a:a2", at(m=1)), 1),
            ("e4", sid("a:a2", at(m=1)), 2),
        ]
    )
    assert_frame_equal(assigned(frame), expected)
    monkeypatch.setattr(sessionize, "id_hash", _colliding_hash)
    assert_frame_equal(assigned(frame), expected)


def test_devices_sharing_a_hash_are_not_a_bot_together(monkeypatch):
    """Device steps are counted per hash first: a1 and a2 sharing one make five steps within a
    minute, but checked by their own ids neither is faster than four a minute."""
    frame = events(
        *({"ts": at(s=10 * i), "anonymous_id": "a1", "url": f"/p/{i}"} for i in range(3)),
        *({"ts": at(s=10 * i + 5), "anonymous_id": "a2", "url": f"/q/{i}"} for i in range(2)),
        {"ts": at(m=5), "anonymous_id": "b1"},
        *({"ts": at(m=10, s=i), "anonymous_id": "b2", "url": f"/r/{i}"} for i in range(5)),
    )
    cfg = BotConfig(max_steps_per_minute=4)
    expected = {"a1": [False], "a2": [False], "b1": [False], "b2": [True]}
    assert _bot_flags(frame, cfg) == expected
    monkeypatch.setattr(sessionize, "id_hash", _colliding_hash)
    assert _bot_flags(frame, cfg) == expected
