"""Tests for `pipeline.sample`: the simulated shop's files are deterministic, counted and real.

The checks read the written files as an outside reader would (regular expressions, `json`,
`csv`, Polars for Parquet), so they test what lands on disk, not the simulation's internals.
"""

from __future__ import annotations

import csv
import functools
import gzip
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from support import gzip_members

from pipeline.config import ConversionConfig, load_config
from pipeline.sample import (
    ALL_FORMATS,
    ALL_PROBLEMS,
    CONFIG_NAME,
    EXPORT_COLUMNS,
    FILE_NAMES,
    write_sample,
)

START = datetime(2026, 10, 5, tzinfo=UTC)
ACCESS_LINE = re.compile(
    r'^(?P<ip>\S+) - (?P<user>\S+) \[(?P<time>[^\]]+)\] "GET (?P<target>/\S*) HTTP/[12]\.[01]" '
    r'(?P<status>\d{3}) (?:\d+|-)(?: "(?P<referrer>[^"]*)" "(?P<ua>[^"]*)")?$'
)
ASSET = re.compile(r"\.(js|css|ico|webp)$")
BOT = re.compile(r"bot|python-requests|HeadlessChrome", re.IGNORECASE)
HANDHELD = re.compile(r"iPhone|iPad|Android")
SESSION_GAP = timedelta(minutes=30)


# ---------------------------------------------------------------------------------------------
# Readers: each splits a file into well-formed records and the rest, as an ingest would.


def _lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"", f"{path.name} must end with a newline"
    lines = lines[:-1]
    return lines[1:] if path.suffix == ".csv" else lines  # the CSV header is no record


def _parse_access(raw: bytes, *, with_agent: bool) -> dict | None:
    try:
        match = ACCESS_LINE.match(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if match is None or (match["ua"] is not None) != with_agent:
        return None
    try:
        ts = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None
    return {**match.groupdict(), "ts": ts, "path": match["target"].split("?")[0]}


def _parse_ndjson(raw: bytes) -> dict | None:
    try:
        event = json.loads(raw.decode("utf-8"))
        ts = datetime.fromisoformat(event["ts"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    required = ("anonymous_id", "ts", "event_type", "url")
    if not isinstance(event, dict) or not all(isinstance(event.get(k), str) for k in required):
        return None
    return {**event, "ts_parsed": ts}


def _parse_csv(raw: bytes) -> dict | None:
    try:
        fields = next(csv.reader([raw.decode("utf-8")]))
    except UnicodeDecodeError:
        return None
    if len(fields) != len(EXPORT_COLUMNS) or not fields[2].isdigit() or not fields[0]:
        return None
    return dict(zip(EXPORT_COLUMNS.values(), fields, strict=True))


def _valid_export_rows(frame: pl.DataFrame) -> pl.DataFrame:
    low = int(START.timestamp() * 1000)
    high = int((START + timedelta(days=16)).timestamp() * 1000)
    return frame.filter(pl.col("visitor").is_not_null() & pl.col("when").is_between(low, high))


@functools.cache
def _parsed(sample: Path, fmt: str) -> tuple[list[bytes], list[dict]]:
    """All lines of one format's file and the well-formed records among them (read once)."""
    lines = _lines(sample / FILE_NAMES[fmt])
    parse = {
        "combined": lambda raw: _parse_access(raw, with_agent=True),
        "common": lambda raw: _parse_access(raw, with_agent=False),
        "ndjson": _parse_ndjson,
        "csv": _parse_csv,
    }[fmt]
    return lines, [r for r in map(parse, lines) if r is not None]


def _visits(records: list[dict], key, ts) -> list[list[dict]]:
    """Group records into sessions: same visitor key, gaps of at most 30 minutes."""
    by_visitor = defaultdict(list)
    for record in records:
        by_visitor[key(record)].append(record)
    sessions = []
    for visitor_records in by_visitor.values():
        visitor_records.sort(key=ts)
        current = [visitor_records[0]]
        for previous, record in zip(visitor_records, visitor_records[1:], strict=False):
            if ts(record) - ts(previous) > SESSION_GAP:
                sessions.append(current)
                current = []
            current.append(record)
        sessions.append(current)
    return sessions


@functools.cache
def _human_page_visits(sample: Path) -> list[list[dict]]:
    """Human sessions of the combined log, page views only (no assets, probes or robots)."""
    _, records = _parsed(sample, "combined")
    pages = [
        r
        for r in records
        if not ASSET.search(r["path"]) and r["path"] != "/healthz" and not BOT.search(r["ua"])
    ]
    return _visits(pages, key=lambda r: (r["ip"], r["ua"]), ts=lambda r: r["ts"])


# ---------------------------------------------------------------------------------------------
# Fixtures: each sample is written once per test module.


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, 20_000)


@pytest.fixture(scope="module")
def clean_sample(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("clean")
    return out, write_sample(out, 20_000, problems=(), formats=("combined",))


# ---------------------------------------------------------------------------------------------
# Determinism, files and counts.


def test_same_arguments_give_identical_bytes(tmp_path):
    """Two runs with the same seed write byte-identical files, including the gzip."""
    first = write_sample(tmp_path / "a", 4_000, seed=11)
    second = write_sample(tmp_path / "b", 4_000, seed=11)
    assert [p.name for p in first.files] == [p.name for p in second.files]
    for a, b in zip(first.files, second.files, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert first == second.__class__(
        first.files, second.n_events, second.n_malformed, second.n_duplicates, second.problems
    )


def test_another_seed_gives_other_data(tmp_path):
    """A different seed changes every data file."""
    first = write_sample(tmp_path / "a", 4_000, seed=11)
    second = write_sample(tmp_path / "b", 4_000, seed=12)
    for a, b in zip(first.files, second.files, strict=True):
        if a.name != CONFIG_NAME:
            assert a.read_bytes() != b.read_bytes(), a.name


def test_only_requested_formats_are_written(tmp_path):
    """Exactly the requested formats' files and the config are written, nothing else."""
    manifest = write_sample(tmp_path, 3_000, formats=("parquet", "ndjson"))
    expected = {FILE_NAMES["ndjson"], FILE_NAMES["parquet"], CONFIG_NAME}
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert {p.name for p in manifest.files} == expected


def test_every_format_is_written_by_default(sample):
    """The default writes one non-empty file per format plus the config."""
    out, manifest = sample
    assert {p.name for p in manifest.files} == {*FILE_NAMES.values(), CONFIG_NAME}
    for fmt in ALL_FORMATS:
        assert (out / FILE_NAMES[fmt]).stat().st_size > 1000, fmt


def test_access_log_is_two_gzip_members_read_to_the_end(sample):
    """The gzip holds two members; both decompress and the second is not empty."""
    out, _ = sample
    members = gzip_members((out / FILE_NAMES["combined"]).read_bytes())
    assert len(members) == 2
    assert all(m.endswith(b"\n") and m.count(b"\n") > 1000 for m in members)
    assert b"".join(members) == gzip.decompress((out / FILE_NAMES["combined"]).read_bytes())


def test_manifest_counts_match_the_files(sample):
    """Per file, lines = events + malformed + duplicates; the totals equal the manifest's."""
    out, manifest = sample
    n_events = n_malformed = n_duplicates = 0
    for fmt in ("combined", "common", "ndjson", "csv"):
        lines, records = _parsed(out, fmt)
        n_malformed += len(lines) - len(records)
        n_duplicates += len(lines) - len(set(lines))
        n_events += len(set(lines)) - (len(lines) - len(records))
    export = pl.read_parquet(out / FILE_NAMES["parquet"])
    valid = _valid_export_rows(export)
    n_malformed += export.height - valid.height
    n_duplicates += export.height - export.n_unique()
    n_events += valid.n_unique()
    assert manifest.n_events == n_events == 20_000
    assert manifest.n_malformed == n_malformed > 0
    assert manifest.n_duplicates == n_duplicates > 0


def test_duplicates_and_malformed_have_realistic_shares(sample):
    """About 1 % of lines are repeated verbatim and about 0.3 % are malformed."""
    _, manifest = sample
    assert 0.007 < manifest.n_duplicates / manifest.n_events < 0.013
    assert 0.002 < manifest.n_malformed / manifest.n_events < 0.006


def test_each_kind_of_malformed_line_is_present(sample):
    """Impossible dates, invalid UTF-8, non-path targets, wrong field counts and types appear."""
    out, _ = sample
    combined = _lines(out / FILE_NAMES["combined"])
    assert any(b"[31/Feb/2026" in line for line in combined)
    assert any(b'"GET ' in line and b'"GET /' not in line for line in combined)
    ndjson = _lines(out / FILE_NAMES["ndjson"])
    assert any(b'"url":123' in line for line in ndjson)
    assert any(b'"ts":"2026-02-30' in line for line in ndjson)
    csv_lines = _lines(out / FILE_NAMES["csv"])
    assert any(len(next(csv.reader([line.decode("utf-8", "replace")]))) != 9 for line in csv_lines)
    for fmt in ("combined", "common", "ndjson", "csv"):
        assert any(b"\xff\xfe" in line for line in _lines(out / FILE_NAMES[fmt])), fmt
    export = pl.read_parquet(out / FILE_NAMES["parquet"])
    assert export["visitor"].null_count() > 0
    assert (export["when"] < 0).any()


def test_twenty_thousand_events_stay_small(sample):
    """20 000 events take less than 1.5 MB on disk, so a demo sample can be committed."""
    _, manifest = sample
    assert sum(p.stat().st_size for p in manifest.files) < 1_500_000


def test_written_config_maps_the_export_columns(sample):
    """journeymap.toml loads and maps the vendor export's columns and millisecond epochs."""
    out, _ = sample
    cfg = load_config(out / CONFIG_NAME)
    assert cfg.input.ts_unit == "ms"
    for canonical, vendor in EXPORT_COLUMNS.items():
        assert getattr(cfg.input.columns, canonical) == vendor
    assert set(pl.read_parquet(out / FILE_NAMES["parquet"]).columns) == set(EXPORT_COLUMNS.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url_scheme": "fr"},
        {"problems": ("slow_search",)},
        {"problems": "cart_loop"},
        {"formats": ("xml",)},
        {"formats": ()},
        {"conversion": "click"},
        {"n_events": 0},
        {"days": 0},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs):
    """Unknown schemes, problems, formats or conversions and empty sizes are refused."""
    arguments = {"n_events": 1_000, **kwargs}
    with pytest.raises(ValueError):
        write_sample(tmp_path, arguments.pop("n_events"), **arguments)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Realism of the traffic.


def test_lines_interleave_in_time_with_a_few_out_of_order(sample):
    """Visitors interleave; 0.5-6 % of lines (duplicates aside) are earlier than the one before."""
    out, _ = sample
    lines, _ = _parsed(out, "combined")
    first_copies = list(dict.fromkeys(lines))  # a repeated line is a duplicate, not disorder
    records = [r for raw in first_copies if (r := _parse_access(raw, with_agent=True))]
    earlier = sum(b["ts"] < a["ts"] for a, b in zip(records, records[1:], strict=False))
    assert 0.005 < earlier / len(records) < 0.06
    visitors_in_first_hundred = {(r["ip"], r["ua"]) for r in records[:100]}
    assert len(visitors_in_first_hundred) > 3


def test_sessions_look_like_shopping(sample):
    """Human sessions: median 3-8 page views, 1.5-5 % converted, some paused > 30 min."""
    out, _ = sample
    visits = _human_page_visits(out)
    lengths = sorted(len(v) for v in visits)
    assert 3 <= lengths[len(lengths) // 2] <= 8
    converted = sum(any(r["path"] == "/checkout/success" for r in v) for v in visits)
    assert 0.015 < converted / len(visits) < 0.05
    _, records = _parsed(out, "combined")
    by_visitor = defaultdict(list)
    for r in records:
        if not BOT.search(r["ua"]):
            by_visitor[(r["ip"], r["ua"])].append(r["ts"])
    paused = sum(
        any(SESSION_GAP < b - a < timedelta(hours=3) for a, b in zip(t, t[1:], strict=False))
        for t in map(sorted, by_visitor.values())
    )
    assert paused > 0


def test_assets_health_checks_and_robots_are_in_the_access_log(sample):
    """Page views bring assets; probes, crawlers and a > 100 pages/minute scraper show up."""
    out, _ = sample
    _, records = _parsed(out, "combined")
    paths = [r["path"] for r in records]
    assert {"/static/app.js", "/static/site.css", "/favicon.ico"} <= set(paths)
    assert any(p.startswith("/img/p") for p in paths)
    assert sum(r["ua"] == "kube-probe/1.29" and r["path"] == "/healthz" for r in records) > 10
    agents = " ".join({r["ua"] for r in records})
    for crawler in ("Googlebot", "bingbot", "AhrefsBot", "python-requests"):
        assert crawler in agents
    per_minute = defaultdict(int)
    for r in records:
        if not BOT.search(r["ua"]):
            per_minute[(r["ip"], r["ua"], r["ts"].replace(second=0))] += 1
    assert max(per_minute.values()) > 100


def test_channels_campaigns_and_personal_data_in_landing_urls(sample):
    """Search and social referrers, UTM tags, and e-mail addresses and tokens in queries."""
    out, _ = sample
    _, records = _parsed(out, "combined")
    referrers = {r["referrer"] for r in records}
    for source in (
        "google.",
        "bing.com",
        "duckduckgo.com",
        "facebook.com",
        "instagram.com",
        "partner.example",
    ):
        assert any(source in ref for ref in referrers), source
    targets = [r["target"] for r in records]
    assert any("utm_medium=email&utm_campaign=black-friday" in t for t in targets)
    assert any("utm_source=google&utm_medium=cpc" in t for t in targets)
    assert any(re.search(r"[?&]email=[a-z.]+%40example\.com", t) for t in targets)
    assert any(re.search(r"[?&]token=[0-9a-f]+", t) for t in targets)


def test_user_agents_are_a_realistic_mix(sample):
    """Desktop and handheld browsers of every major family appear with full UA strings."""
    out, _ = sample
    _, records = _parsed(out, "combined")
    agents = {r["ua"] for r in records}
    for marker in ("Windows NT 10.0", "Macintosh", "Firefox/", "Edg/", "iPhone", "Android", "iPad"):
        assert any(marker in ua for ua in agents), marker
    assert all(
        ua.startswith("Mozilla/5.0 (")
        for ua in agents
        if not BOT.search(ua) and ua != "kube-probe/1.29"
    )


def test_users_log_in_mid_journey_and_across_devices(sample):
    """The user shows only after /login; some user logs in on a handheld and on a desktop."""
    out, _ = sample
    visits = _human_page_visits(out)
    logged_in = [v for v in visits if any(r["user"] != "-" for r in v)]
    assert logged_in
    for visit in logged_in:
        first = next(i for i, r in enumerate(visit) if r["user"] != "-")
        assert any(r["path"] == "/login" for r in visit[:first]) or first == 0
    devices = defaultdict(set)
    for fmt, user_key in (("combined", "user"), ("ndjson", "user_id"), ("csv", "uid")):
        _, records = _parsed(out, fmt)
        for r in records:
            ua = r.get("ua") or r.get("user_agent")
            if r[user_key] not in (None, "", "-"):
                devices[r[user_key]].add(bool(HANDHELD.search(ua)))
    assert any(len(kinds) == 2 for kinds in devices.values())


def test_event_stream_has_varied_timestamps_urls_and_extra_fields(sample):
    """NDJSON: Z/+02:00/-05:00 offsets, fractions, full URLs and fragments, unknown fields."""
    out, _ = sample
    _, events = _parsed(out, "ndjson")
    stamps = [e["ts"] for e in events]
    assert any(s.endswith("Z") for s in stamps)
    assert any(s.endswith("+02:00") for s in stamps)
    assert any(s.endswith("-05:00") for s in stamps)
    assert any(re.search(r"\.\d{3}", s) for s in stamps)
    assert any(re.search(r":\d\d(Z|[+-]\d\d:\d\d)$", s) for s in stamps)
    assert any(e["url"].startswith("https://Shop.Example.com/") for e in events)
    assert any("#" in e["url"] for e in events)
    assert any(e["url"].startswith("/") for e in events)
    assert all("context" in e and "schema_version" in e for e in events)
    types = {e["event_type"] for e in events}
    assert {"page_view", "search", "add_to_cart", "login", "begin_checkout"} <= types


def test_server_offset_follows_daylight_saving_time(tmp_path):
    """Access-log times are +0200 before 2026-10-25 01:00 UTC and +0100 from then on."""
    write_sample(
        tmp_path, 5_000, formats=("combined",), start=datetime(2026, 10, 22, tzinfo=UTC), days=6
    )
    _, records = _parsed(tmp_path, "combined")
    change = datetime(2026, 10, 25, 1, tzinfo=UTC)
    offsets = {r["ts"].utcoffset() for r in records}
    assert offsets == {timedelta(hours=2), timedelta(hours=1)}
    for r in records:
        assert (r["ts"] < change) == (r["ts"].utcoffset() == timedelta(hours=2))


# ---------------------------------------------------------------------------------------------
# Planted problems.


def test_payment_500_hits_only_iphone_safari_who_then_mostly_leave(sample):
    """/checkout/payment answers 500 exactly to iPhone Safari; most of them leave right after."""
    out, manifest = sample
    _, records = _parsed(out, "combined")
    payments = [r for r in records if r["path"] == "/checkout/payment"]
    iphone_safari = re.compile(r"iPhone.*Version/.*Safari")
    assert any(r["status"] == "500" for r in payments)
    assert any(r["status"] == "200" for r in payments)
    for r in payments:
        assert (r["status"] == "500") == bool(iphone_safari.search(r["ua"])), r["ua"]
    failed = [
        v
        for v in _human_page_visits(out)
        if any(r["path"] == "/checkout/payment" and r["status"] == "500" for r in v)
    ]
    left = sum(v[-1]["path"] == "/checkout/payment" for v in failed)
    assert left / len(failed) > 0.7
    problem = next(p for p in manifest.problems if p.kind == "payment_5xx")
    assert problem.touchpoint_url == "/checkout/payment"
    assert problem.segment == {"device": "mobile", "browser": "Mobile Safari"}


def _loops(visit: list[dict]) -> int:
    paths = [r["path"] for r in visit]
    pairs = {("/cart", "/checkout/shipping"), ("/checkout/shipping", "/cart")}
    return sum(
        (a, b) in pairs and a == c for a, b, c in zip(paths, paths[1:], paths[2:], strict=False)
    )


def test_cart_loop_is_planted_only_when_asked(sample, clean_sample):
    """With cart_loop, many cart sessions bounce cart<->shipping twice or more and abandon."""

    def looping_share(out: Path) -> tuple[float, list]:
        carts = [v for v in _human_page_visits(out) if any(r["path"] == "/cart" for r in v)]
        looping = [v for v in carts if _loops(v) >= 2]
        return len(looping) / len(carts), looping

    share, looping = looping_share(sample[0])
    assert share > 0.1
    abandoned = [v for v in looping if v[-1]["path"] in ("/cart", "/checkout/shipping")]
    assert len(abandoned) / len(looping) > 0.9
    converted = [v for v in looping if any(r["path"] == "/checkout/success" for r in v)]
    assert len(converted) / len(looping) < 0.05
    clean_share, _ = looping_share(clean_sample[0])
    assert clean_share < share / 4


def test_search_dead_end_is_planted_only_when_asked(sample, clean_sample):
    """Searches without results land on /search/no-results and mostly end the session there."""
    dead_ends = [
        v
        for v in _human_page_visits(sample[0])
        if any(r["path"] == "/search/no-results" for r in v)
    ]
    assert len(dead_ends) > 10
    ended_there = sum(v[-1]["path"] == "/search/no-results" for v in dead_ends)
    assert ended_there / len(dead_ends) > 0.65
    assert not any(
        r["path"] == "/search/no-results" or r["status"] == "500"
        for v in _human_page_visits(clean_sample[0])
        for r in v
    )
    assert clean_sample[1].problems == ()
    assert [p.kind for p in sample[1].problems] == list(ALL_PROBLEMS)


def test_dutch_scheme_uses_dutch_paths(tmp_path):
    """With url_scheme="nl" every page path is Dutch and the problems sit on Dutch URLs."""
    manifest = write_sample(tmp_path, 8_000, url_scheme="nl", formats=("combined",))
    visits = _human_page_visits(tmp_path)
    paths = {r["path"] for v in visits for r in v}
    assert all(p.startswith("/nl/") for p in paths), sorted(p for p in paths if "/nl/" not in p)
    for expected in (
        "/nl/winkelwagen",
        "/nl/afrekenen/bezorging",
        "/nl/afrekenen/betalen",
        "/nl/afrekenen/bevestiging",
        "/nl/zoeken",
        "/nl/zoeken/geen-resultaten",
    ):
        assert expected in paths, expected
    assert {p.touchpoint_url for p in manifest.problems} == {
        "/nl/afrekenen/betalen",
        "/nl/winkelwagen",
        "/nl/zoeken/geen-resultaten",
    }


def test_event_conversion_is_a_purchase_on_an_ordinary_url(tmp_path):
    """conversion="event": purchases carry revenue on URLs the default url_pattern misses."""
    write_sample(tmp_path, 8_000, conversion="event", formats=("ndjson", "csv", "common"))
    pattern = re.compile(ConversionConfig().url_pattern)
    _, events = _parsed(tmp_path, "ndjson")
    _, rows = _parsed(tmp_path, "csv")
    purchases = [e["url"] for e in events if e["event_type"] == "purchase"]
    purchases += [r["page"] for r in rows if r["action"] == "purchase"]
    assert purchases
    urls = [e["url"] for e in events] + [r["page"] for r in rows]
    urls += [r["path"] for r in _parsed(tmp_path, "common")[1]]
    for url in urls:
        path = "/" + url.split("://", 1)[1].split("/", 1)[1] if "://" in url else url
        assert not pattern.search(path), path


def test_url_conversion_also_emits_purchase_events_on_the_confirmation(sample):
    """conversion="url": purchase events, with revenue, sit on the order-confirmation URL."""
    out, _ = sample
    pattern = re.compile(ConversionConfig().url_pattern)
    purchases = [
        (e["url"], e["revenue"]) for e in _parsed(out, "ndjson")[1] if e["event_type"] == "purchase"
    ]
    purchases += [
        (r["page"], float(r["amount"])) for r in _parsed(out, "csv")[1] if r["action"] == "purchase"
    ]
    export = _valid_export_rows(pl.read_parquet(out / FILE_NAMES["parquet"]))
    purchases += export.filter(pl.col("action") == "purchase").select("page", "amount").rows()
    assert purchases
    for url, revenue in purchases:
        path = re.sub(r"^https://[^/]+", "", url, flags=re.IGNORECASE)
        assert pattern.search(path.split("#")[0]), url
        assert revenue > 0
