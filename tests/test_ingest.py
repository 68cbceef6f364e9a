"""Hostile input: every row of every file is accepted or quarantined with a reason, never
dropped and never fatal.

One rule per test, the rule as its docstring. Inputs are a few hand-written lines in
`tmp_path`; expected values are worked out from those lines by hand. Every file goes through
`load()`, which reads it twice and checks the row accounting both times:

- `ingest.read_file`: read == accepted + quarantined;
- `cli.run_pipeline` into a fresh DuckDB: read == accepted + duplicates + quarantined.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from unittest import mock

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from support import gzip_members, without_limit

from pipeline import cli, ingest, store
from pipeline.config import ColumnMapping, Config, InputConfig
from pipeline.schemas import EVENTS, FIELD_ISSUES, QUARANTINE

# Ingestion time of every test run: timestamps up to one day later are accepted.
NOW = datetime(2024, 10, 12, 12, 0, tzinfo=UTC)
IP = "198.51.100.23"
UA = "Mozilla/5.0 (X11; Linux x86_64)"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def clf(
    ip: str = IP,
    user: str = "-",
    ts: str = "10/Oct/2024:13:55:36 +0000",
    request: str = "GET /a HTTP/1.1",
    status: str = "200",
    size: str = "512",
    referrer: str = "-",
    ua: str = UA,
) -> str:
    """One line of an Apache/Nginx combined log."""
    return f'{ip} - {user} [{ts}] "{request}" {status} {size} "{referrer}" "{ua}"'


def event(**fields) -> str:
    """One NDJSON event; a field given as None is left out."""
    base = {
        "anonymous_id": "a1",
        "ts": "2024-10-10T10:00:00Z",
        "event_type": "page_view",
        "url": "/a",
    }
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not None})


def masked(line: str) -> str:
    """An access-log line as raw.quarantine keeps it: the client address masked."""
    return line.replace(IP, "<ip>")


def lines(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@dataclass
class Loaded:
    events: pl.DataFrame
    quarantine: pl.DataFrame
    field_issues: pl.DataFrame
    n_read: int
    file: store.FileCounts
    db: Path


def load(
    path: Path, fmt: str | None = None, cfg: Config | None = None, ingested_at: datetime = NOW
) -> Loaded:
    """Read one file with `read_file` and with `run_pipeline`; check the accounting of both."""
    cfg = cfg or Config()
    read_fmt = fmt or ingest.detect_format(path)
    batches = list(ingest.read_file(path, read_fmt, cfg, ingested_at))
    events = pl.concat(
        [pl.DataFrame(schema=EVENTS.columns), *(b.events.drop("visitor_key") for b in batches)]
    ).sort("source_line")
    quarantine = pl.concat(
        [pl.DataFrame(schema=QUARANTINE.columns), *(b.quarantine for b in batches)]
    ).sort("source_line")
    field_issues = pl.concat(
        [pl.DataFrame(schema=FIELD_ISSUES.columns), *(b.field_issues for b in batches)]
    )
    n_read = sum(b.n_read for b in batches)
    assert n_read == events.height + quarantine.height, "read != accepted + quarantined"

    db = path.parent / "db" / f"{path.name}.duckdb"
    summary = cli.run_pipeline([path], db, without_limit(cfg), fmt=fmt, now=ingested_at)
    (counts,) = summary.files
    assert counts.n_read == counts.n_accepted + counts.n_duplicates + counts.n_quarantined
    assert (counts.n_read, counts.n_quarantined) == (n_read, quarantine.height)
    assert counts.n_accepted + counts.n_duplicates == events.height
    return Loaded(events, quarantine, field_issues, n_read, counts, db)


def assert_accounted(summary: cli.RunSummary) -> None:
    """Every file of a run: read == accepted + duplicates + quarantined."""
    for f in summary.files:
        assert f.n_read == f.n_accepted + f.n_duplicates + f.n_quarantined, f.source


def assert_quarantined(loaded: Loaded, expected: list[tuple[int, str]]) -> None:
    """The quarantine holds exactly these (source_line, reason) rows."""
    assert_frame_equal(
        loaded.quarantine.select("source_line", "reason"),
        pl.DataFrame(expected, schema={"source_line": pl.Int64, "reason": pl.String}, orient="row"),
    )


def assert_accepted(loaded: Loaded, expected: dict[str, list]) -> None:
    """The accepted events, by source line, have exactly these column values."""
    schema = {name: loaded.events.schema[name] for name in expected}
    assert_frame_equal(loaded.events.select(list(expected)), pl.DataFrame(expected, schema=schema))


def query(db: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    con = store.connect(db, read_only=True)
    try:
        return store.query(con, sql, params)
    finally:
        con.close()


def amsterdam() -> Config:
    return Config(input=InputConfig(timezone="Europe/Amsterdam"))


def gzip_cut_after(data: bytes) -> bytes:
    """A gzip stream that decompresses to exactly `data`, then stops: no end block, no trailer."""
    comp = zlib.compressobj(wbits=31)
    return comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)


# A gzip member header followed by a deflate block of the reserved type 3: corrupt from byte 10.
CORRUPT_MEMBER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 16


# ------------------------------------------------------------------------ broken lines


def test_truncated_access_log_line_is_malformed(tmp_path):
    """A line cut off mid-request is quarantined as malformed_line, raw kept as written."""
    cut = clf(request="GET /b HTTP/1.1")[:60]
    path = write(tmp_path, "access.log", lines(clf(), cut, clf(request="GET /c HTTP/1.1")))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 3], "url": ["/a", "/c"]})
    assert_quarantined(loaded, [(2, "malformed_line")])
    assert loaded.quarantine["raw"].to_list() == [masked(cut)]


def test_garbage_lines_are_malformed(tmp_path):
    """Lines that are not access-log lines at all are quarantined as malformed_line."""
    garbage = [
        "hello world",
        '{"json": "in an access log"}',
        "GET /a HTTP/1.1",
        clf(request="-"),  # nginx logs a bad request as "-"
        clf(status="abc"),
        "\x00\x01\x02\x7f",
    ]
    path = write(tmp_path, "access.log", lines(*garbage, clf()))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [7]})
    assert_quarantined(loaded, [(n, "malformed_line") for n in range(1, 7)])


def test_request_target_that_is_not_a_path_is_bad_target(tmp_path):
    """A proxy request (absolute URL) or CONNECT host:port is not a page: bad_target."""
    path = write(
        tmp_path,
        "access.log",
        lines(
            clf(request="GET http://evil.example/ HTTP/1.1"),
            clf(request="CONNECT evil.example:443 HTTP/1.1"),
            clf(request="GET /ok HTTP/1.1"),
        ),
    )
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [3], "url": ["/ok"]})
    assert_quarantined(loaded, [(1, "bad_target"), (2, "bad_target")])


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        (
            "combined",
            clf(),
            f'{IP} - - [10/Oct/2024:13:55:37 +0000] "GET /caf\xc3 HTTP/1.1" 200 1 "-" "\xff\xfeUA"',
        ),
        ("ndjson", event(), '{"anonymous_id": "\xff\xfe", "url": "/caf\xc3"}'),
    ],
)
def test_invalid_utf8_is_quarantined_with_escaped_bytes(tmp_path, fmt, good, bad):
    """A line that is not UTF-8 is quarantined as invalid_utf8; its bytes show as \\xNN
    escapes and are never replaced by U+FFFD."""
    bad_bytes = bad.encode("latin-1")
    good_bytes = good.encode()
    path = write(tmp_path, f"input.{fmt}", good_bytes + b"\n" + bad_bytes + b"\n" + good_bytes)
    loaded = load(path, fmt)
    assert_accepted(loaded, {"source_line": [1, 3]})
    assert_quarantined(loaded, [(2, "invalid_utf8")])
    (raw,) = loaded.quarantine["raw"].to_list()
    assert raw == masked(bad_bytes.decode("utf-8", "backslashreplace"))
    assert "\\xff\\xfe" in raw and "\\xc3" in raw
    assert "\ufffd" not in raw


# Pieces of a line: ASCII, valid multi-byte characters, and sequences that are not UTF-8.
LINE_PIECES = [b"GET /a?q=1 ", b"\r", "é".encode(), "€".encode(), "😀".encode()]
NOT_UTF8 = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(
        st.lists(st.sampled_from(LINE_PIECES + NOT_UTF8), max_size=6).map(b"".join), max_size=12
    ),
    final_newline=st.booleans(),
)
def test_lines_that_are_not_utf8_are_exactly_those_quarantined_as_invalid_utf8(
    lines, final_newline
):
    """The lines quarantined as invalid_utf8 are those that do not decode, however the bad
    bytes fall across the decoder's windows, and every other line is kept or quarantined
    for another reason."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assume(data)

    def decodes(line: bytes) -> bool:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    expected = [i + 1 for i, line in enumerate(data.split(b"\n")) if not decodes(line)]
    with pytest.MonkeyPatch.context() as patch:
        # A window of a few bytes: a short block crosses many windows.
        patch.setattr(ingest, "UTF8_WINDOW_BYTES", 8)
        chunk = ingest._split_lines(data, 0, 1000, None)
    rejected = chunk.quarantine.filter(pl.col("reason") == "invalid_utf8")
    assert rejected["source_line"].to_list() == expected
    assert chunk.n_read == data.count(b"\n") + (not data.endswith(b"\n"))
    assert chunk.lines.height + chunk.quarantine.height == chunk.n_read


def test_blank_lines_are_empty_line(tmp_path):
    """Blank and whitespace-only lines are quarantined as empty_line, not skipped."""
    path = write(tmp_path, "access.log", "\n" + clf() + "\n   \n\t\r\n" + clf(request="GET /b"))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [2, 5], "url": ["/a", "/b"]})
    assert_quarantined(loaded, [(1, "empty_line"), (3, "empty_line"), (4, "empty_line")])


def test_last_line_without_newline_is_read(tmp_path):
    """A file whose last line has no newline still yields that line."""
    path = write(tmp_path, "access.log", clf() + "\n" + clf(request="GET /last HTTP/1.1"))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2], "url": ["/a", "/last"]})


# -------------------------------------------------------------------------- timestamps


def test_impossible_access_log_dates_are_bad_timestamps(tmp_path):
    """31 February, 29 February of a non-leap year and hour 25 are bad_timestamp."""
    path = write(
        tmp_path,
        "access.log",
        lines(
            clf(ts="31/Feb/2024:10:00:00 +0000"),
            clf(ts="29/Feb/2023:10:00:00 +0000"),
            clf(ts="10/Oct/2024:25:00:00 +0000"),
            clf(ts="29/Feb/2024:10:00:00 +0000"),
        ),
    )
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [4], "ts": [utc(2024, 2, 29, 10)]})
    assert_quarantined(loaded, [(1, "bad_timestamp"), (2, "bad_timestamp"), (3, "bad_timestamp")])


def test_impossible_iso_dates_are_bad_timestamps(tmp_path):
    """2026-02-30, 31 April, month 13 and minute 61 are bad_timestamp, not rolled over."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(ts="2026-02-30T10:00:00Z"),
            event(ts="2024-04-31T10:00:00Z"),
            event(ts="2024-13-01T10:00:00Z"),
            event(ts="2024-10-10T10:61:00Z"),
            event(ts="yesterday"),
            event(ts="2024-10-10T10:00:00Z"),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [6]})
    assert_quarantined(loaded, [(n, "bad_timestamp") for n in range(1, 6)])


def test_timestamps_before_2000_are_out_of_range(tmp_path):
    """Events before 2000-01-01T00:00:00Z are timestamp_out_of_range; that instant itself is not."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(ts="1970-01-01T00:00:00Z"),
            event(ts="1999-12-31T23:59:59Z"),
            event(ts="2000-01-01T01:00:00+01:00"),  # = 2000-01-01T00:00:00Z
            event(ts="2000-01-01T00:00:00Z", url="/b"),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [3, 4], "ts": [utc(2000, 1, 1), utc(2000, 1, 1)]})
    assert_quarantined(loaded, [(1, "timestamp_out_of_range"), (2, "timestamp_out_of_range")])


def test_timestamps_more_than_a_day_after_ingestion_are_out_of_range(tmp_path):
    """Ingested at 2024-10-12T12:00Z: up to 2024-10-13T12:00Z is accepted, later is not."""
    path = write(
        tmp_path,
        "access.log",
        lines(
            clf(ts="13/Oct/2024:14:00:00 +0200"),  # 12:00:00Z, exactly one day later
            clf(ts="13/Oct/2024:14:00:01 +0200"),  # one second too late
            clf(ts="01/Jan/2030:00:00:00 +0000"),
        ),
    )
    loaded = load(path, "combined", ingested_at=NOW)
    assert_accepted(loaded, {"source_line": [1], "ts": [utc(2024, 10, 13, 12)]})
    assert_quarantined(loaded, [(2, "timestamp_out_of_range"), (3, "timestamp_out_of_range")])


def test_aware_ingestion_time_is_compared_as_an_instant(tmp_path):
    """An ingestion time given in another zone bounds timestamps at its UTC instant:
    2024-10-12T20:00+08:00 is 12:00Z, so 2024-10-13T12:00:01Z is too late."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(event(ts="2024-10-13T12:00:00Z"), event(ts="2024-10-13T12:00:01Z")),
    )
    loaded = load(
        path,
        "ndjson",
        ingested_at=datetime(2024, 10, 12, 20, 0, tzinfo=timezone(timedelta(hours=8))),
    )
    assert_accepted(loaded, {"source_line": [1]})
    assert_quarantined(loaded, [(2, "timestamp_out_of_range")])


def test_naive_iso_timestamp_is_read_in_input_timezone(tmp_path):
    """Without an offset, a timestamp is local time in input.timezone (Amsterdam: UTC+2 in
    summer, UTC+1 in winter)."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(ts="2024-07-01T12:00:00"),
            event(ts="2024-01-15T12:00:00"),
            event(ts="2024-01-15 12:30"),
        ),
    )
    loaded = load(path, "ndjson", amsterdam())
    assert_accepted(
        loaded,
        {
            "source_line": [1, 2, 3],
            "ts": [utc(2024, 7, 1, 10), utc(2024, 1, 15, 11), utc(2024, 1, 15, 11, 30)],
        },
    )


def test_naive_time_in_a_dst_gap_is_bad_timestamp(tmp_path):
    """02:30 on 2024-03-31 never happened in Amsterdam (clocks jumped 02:00 -> 03:00)."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(ts="2024-03-31T01:59:59"),
            event(ts="2024-03-31T02:30:00"),
            event(ts="2024-03-31T03:00:00"),
        ),
    )
    loaded = load(path, "ndjson", amsterdam())
    assert_accepted(
        loaded, {"source_line": [1, 3], "ts": [utc(2024, 3, 31, 0, 59, 59), utc(2024, 3, 31, 1)]}
    )
    assert_quarantined(loaded, [(2, "bad_timestamp")])


def test_naive_time_in_a_dst_overlap_takes_the_earlier_instant(tmp_path):
    """02:30 on 2023-10-29 happened twice in Amsterdam; the first (CEST, 00:30Z) is taken."""
    path = write(tmp_path, "events.ndjson", lines(event(ts="2023-10-29T02:30:00")))
    loaded = load(path, "ndjson", amsterdam())
    assert_accepted(loaded, {"ts": [utc(2023, 10, 29, 0, 30)]})


def test_iso_offsets_and_fractions_are_converted_to_utc(tmp_path):
    """Z, +02:00, +0200, -05:30 and -05 offsets win over input.timezone; fractions of a
    second are kept to the microsecond (nanoseconds truncated)."""
    stamps = [
        "2024-10-10T10:00:00Z",
        "2024-10-10T12:00:00+02:00",
        "2024-10-10T12:00:00+0200",
        "2024-10-10T04:30:00-05:30",
        "2024-10-10T05:00:00-05",
        "2024-10-10T10:00:00.5Z",
        "2024-10-10T12:00:00.123456+02:00",
        "2024-10-10T10:00:00.123456789Z",
        "2024-10-10 10:00Z",
    ]
    path = write(
        tmp_path, "events.ndjson", lines(*(event(ts=t, url=f"/{i}") for i, t in enumerate(stamps)))
    )
    loaded = load(path, "ndjson", amsterdam())
    ten = utc(2024, 10, 10, 10)
    expected = [ten] * 5 + [
        ten + timedelta(microseconds=500_000),
        ten + timedelta(microseconds=123_456),
        ten + timedelta(microseconds=123_456),
        ten,
    ]
    assert_accepted(loaded, {"source_line": list(range(1, 10)), "ts": expected})


def test_offset_of_24_hours_or_more_is_bad_timestamp(tmp_path):
    """+24:00, +25:00 and +02:60 are not UTC offsets: bad_timestamp, not a shifted time."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(ts="2024-10-10T10:00:00+24:00"),
            event(ts="2024-10-10T10:00:00+25:00"),
            event(ts="2024-10-10T10:00:00+02:60"),
            event(ts="2024-10-10T10:00:00+14:00"),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [4], "ts": [utc(2024, 10, 9, 20)]})
    assert_quarantined(loaded, [(1, "bad_timestamp"), (2, "bad_timestamp"), (3, "bad_timestamp")])


# ----------------------------------------------------------------------- line lengths


def test_megabyte_line_is_too_long_and_raw_is_capped(tmp_path):
    """A 1 MB line is quarantined as line_too_long; raw keeps its first max_line_bytes."""
    huge = clf(request="GET /" + "x" * 1_000_000 + " HTTP/1.1")
    path = write(tmp_path, "access.log", lines(clf(), huge, clf(request="GET /b HTTP/1.1")))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 3], "url": ["/a", "/b"]})
    assert_quarantined(loaded, [(2, "line_too_long")])
    (raw,) = loaded.quarantine["raw"].to_list()
    assert raw == masked(huge[: InputConfig().max_line_bytes])


def test_line_of_exactly_max_line_bytes_is_accepted_one_more_is_not(tmp_path):
    """max_line_bytes is inclusive: a line of that many bytes passes, one byte more does not."""
    line = clf(ua="abc")
    longer = clf(ua="abcd")
    cfg = Config(input=InputConfig(max_line_bytes=len(line.encode())))
    path = write(tmp_path, "access.log", lines(line, longer))
    loaded = load(path, "combined", cfg)
    assert_accepted(loaded, {"source_line": [1], "user_agent": ["abc"]})
    assert_quarantined(loaded, [(2, "line_too_long")])
    assert loaded.quarantine["raw"].to_list() == [masked(longer[: len(line)])]


def test_crlf_terminator_does_not_count_towards_line_length(tmp_path):
    """The \\r of a CRLF line ending is not content: a line of max_line_bytes passes."""
    line = clf(ua="abc")
    cfg = Config(input=InputConfig(max_line_bytes=len(line.encode())))
    path = write(tmp_path, "access.log", line + "\r\n" + clf(ua="abd") + "\r\n")
    loaded = load(path, "combined", cfg)
    assert_accepted(loaded, {"source_line": [1, 2], "user_agent": ["abc", "abd"]})


# ------------------------------------------------------------------------------- gzip


def test_gzip_is_read_transparently(tmp_path):
    """A gzipped log reads like the plain one."""
    path = write(
        tmp_path, "access.log.gz", gzip.compress(lines(clf(), clf(request="GET /b")).encode())
    )
    loaded = load(path)
    assert loaded.file.format == "combined"
    assert_accepted(loaded, {"source_line": [1, 2], "url": ["/a", "/b"]})


def test_truncated_gzip_keeps_complete_lines_and_quarantines_the_partial_one(tmp_path):
    """Every complete line before the cut is kept; the partial last line is truncated_gzip."""
    text = lines(clf(), clf(request="GET /b HTTP/1.1"), clf(request="GET /c HTTP/1.1"))
    partial = clf(request="GET /d HTTP/1.1")[:50]
    path = write(tmp_path, "access.log.gz", gzip_cut_after((text + partial).encode()))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2, 3], "url": ["/a", "/b", "/c"]})
    assert_quarantined(loaded, [(4, "truncated_gzip")])
    assert loaded.quarantine["raw"].to_list() == [masked(partial)]


def test_gzip_cut_at_a_line_boundary_adds_one_marker_row(tmp_path):
    """A cut exactly after a newline leaves no partial line: one truncated_gzip marker row
    says the file is damaged."""
    text = lines(clf(), clf(request="GET /b HTTP/1.1"))
    path = write(tmp_path, "access.log.gz", gzip_cut_after(text.encode()))
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2]})
    assert_quarantined(loaded, [(3, "truncated_gzip")])
    assert loaded.quarantine["raw"][0].startswith("<truncated gzip")


def test_gzip_missing_its_trailer_keeps_every_line(tmp_path):
    """A download cut in the 8-byte trailer keeps all lines and adds one marker row."""
    whole = gzip.compress(lines(clf(), clf(request="GET /b HTTP/1.1")).encode())
    path = write(tmp_path, "access.log.gz", whole[:-4])
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2], "url": ["/a", "/b"]})
    assert_quarantined(loaded, [(3, "truncated_gzip")])


def test_multi_member_gzip_is_read_to_the_end(tmp_path):
    """Concatenated gzip members (logrotate, `cat a.gz b.gz`) are all read, even when a line
    spans two members."""
    second = clf(request="GET /b HTTP/1.1") + "\n"
    members = [
        gzip.compress((clf() + "\n").encode()),
        gzip.compress(second[:30].encode()),
        gzip.compress((second[30:] + lines(clf(request="GET /c HTTP/1.1"))).encode()),
    ]
    path = write(tmp_path, "access.log.gz", b"".join(members))
    assert len(gzip_members(path.read_bytes())) == 3
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2, 3], "url": ["/a", "/b", "/c"]})
    assert loaded.quarantine.height == 0


def test_corrupt_gzip_is_one_quarantine_row(tmp_path):
    """A gzip stream that cannot be inflated is one corrupt_gzip row, not a crash."""
    path = write(tmp_path, "access.log.gz", CORRUPT_MEMBER)
    loaded = load(path, "combined")
    assert loaded.events.height == 0
    assert_quarantined(loaded, [(1, "corrupt_gzip")])
    assert loaded.quarantine["raw"][0].startswith("<corrupt gzip stream ends here")


def test_corrupt_later_gzip_member_keeps_the_earlier_members(tmp_path):
    """Lines of intact members before a corrupt one are kept; the damage is one marker row."""
    first = gzip.compress(lines(clf(), clf(request="GET /b HTTP/1.1")).encode())
    path = write(tmp_path, "access.log.gz", first + CORRUPT_MEMBER)
    loaded = load(path, "combined")
    assert_accepted(loaded, {"source_line": [1, 2], "url": ["/a", "/b"]})
    assert_quarantined(loaded, [(3, "corrupt_gzip")])


# ------------------------------------------------------------------------ blocks and batches

# Lines of each line format, good and bad, for reading files cut into tiny blocks.
BLOCK_LINES = {
    "combined": [
        clf(),
        clf(request="GET /b HTTP/1.1", ua='say \\"hi\\"'),
        "not a log line",
        "",
        clf(ts="31/Feb/2024:10:00:00 +0000"),
    ],
    "ndjson": [event(), event(url="/b", user_id="u1"), "{broken", "", event(ts="yesterday")],
    "csv": [
        "a1,2024-10-10T10:00:00Z,page_view,/a",
        'a2,2024-10-10T10:05:00Z,page_view,"/b,c"',
        "a3,,page_view,/c",
        "",
        "a4,2024-10-10T10:06:00Z",
    ],
}
CSV_HEADER = "anonymous_id,ts,event_type,url"


def read_all(path: Path, fmt: str) -> tuple[pl.DataFrame, pl.DataFrame, list[int]]:
    """Events and quarantine (by line) of every batch of a file, and each batch's rows read."""
    batches = list(ingest.read_file(path, fmt, Config(), NOW))
    events = pl.concat([b.events for b in batches])
    quarantine = pl.concat([b.quarantine for b in batches]).sort("source_line", "reason")
    return events, quarantine, [b.n_read for b in batches]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(BLOCK_LINES)),
    picks=st.lists(st.integers(0, 4), min_size=1, max_size=30),
    invalid_at=st.none() | st.integers(0, 29),
    compressed=st.booleans(),
    bom=st.booleans(),
    block_bytes=st.integers(1, 200),
    read_bytes=st.integers(1, 50),
    batch_rows=st.integers(1, 8),
)
def test_tiny_blocks_and_batches_read_what_one_block_reads(
    tmp_path_factory, fmt, picks, invalid_at, compressed, bom, block_bytes, read_bytes, batch_rows
):
    """However a file is cut into blocks (lines straddling them, a gzip member inflated a few
    bytes at a time) and however many chunks make a batch, the events (in their order) and the
    quarantine are those of reading it in one block; each batch but the last has at least
    BATCH_ROWS rows."""
    rows = [BLOCK_LINES[fmt][i] for i in picks]
    body = lines(*rows).encode()
    if invalid_at is not None and invalid_at < len(rows):
        # A line that is not UTF-8 is quarantined where it stands.
        body = b"".join(
            line + b"\xff\xfe\n" if i == invalid_at else line + b"\n"
            for i, line in enumerate(body.split(b"\n")[:-1])
        )
    if fmt == "csv":
        body = (CSV_HEADER + "\n").encode() + body
    body = ingest.BOM + body if bom else body
    content = gzip.compress(body) if compressed else body
    path = write(tmp_path_factory.mktemp("blocks"), f"input.{fmt}", content)
    whole_events, whole_quarantine, _ = read_all(path, fmt)
    with (
        mock.patch.object(ingest, "BLOCK_BYTES", block_bytes),
        mock.patch.object(ingest, "GZIP_READ_BYTES", read_bytes),
        mock.patch.object(ingest, "BATCH_ROWS", batch_rows),
    ):
        events, quarantine, n_reads = read_all(path, fmt)
    assert_frame_equal(events, whole_events)
    assert_frame_equal(quarantine, whole_quarantine)
    assert all(n >= batch_rows for n in n_reads[:-1]), n_reads
    assert sum(n_reads) == events.height + quarantine.height


class _Jobs:
    """Jobs that sleep, counting how many run at once and which have started."""

    def __init__(self, fail_at: int | None = None):
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.started: list[int] = []
        self.fail_at = fail_at

    def job(self, i: int, pause: float) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(i)
        time.sleep(pause)
        with self.lock:
            self.running -= 1
        if i == self.fail_at:
            raise ValueError(f"job {i} failed")
        return i


def test_in_order_yields_results_in_job_order_with_bounded_concurrency():
    """Jobs that finish out of order still come back in order, never more than `workers`
    under way at once; a job's error is raised at its turn, after the results before it."""
    tally = _Jobs(fail_at=4)
    # Earlier jobs sleep longer, so later ones finish first.
    jobs = (partial(tally.job, i, 0.05 * (6 - i)) for i in range(6))
    results = []
    with pytest.raises(ValueError, match="job 4 failed"):
        for result in ingest.in_order(jobs, workers=3):
            results.append(result)
    assert results == [0, 1, 2, 3]
    assert tally.peak == 3


@pytest.mark.parametrize("queued", [0, 1, 2])
def test_in_order_queues_jobs_beyond_its_workers_without_running_more(queued):
    """With `queued` jobs waiting, a worker whose job ends early starts the next one before
    the earlier result is taken; still no more than `workers` run at once."""
    tally = _Jobs()
    # Job 0 is slow; the others end soon, so one worker is free while job 0 runs.
    jobs = (partial(tally.job, i, 0.3 if i == 0 else 0.02) for i in range(6))
    results = ingest.in_order(jobs, workers=2, queued=queued)
    assert next(results) == 0
    # While job 0 ran, the free worker ran every job handed over: the second, then the queued.
    assert sorted(tally.started) == list(range(2 + queued))
    assert list(results) == [1, 2, 3, 4, 5]
    assert tally.peak == 2


def test_in_order_closes_its_jobs_when_the_consumer_stops_early():
    """A consumer that stops after one result leaves no job generator open."""
    closed = []

    def jobs():
        try:
            for i in range(100):
                yield lambda i=i: i
        finally:
            closed.append(True)

    results = ingest.in_order(jobs(), workers=2)
    assert next(results) == 0
    results.close()
    assert closed == [True]


# ------------------------------------------------------------------------ empty files


@pytest.mark.parametrize(
    ("name", "fmt", "content"),
    [
        ("access.log", "combined", b""),
        ("access.log.gz", "combined", gzip.compress(b"")),
        ("events.ndjson", "ndjson", b""),
        ("export.csv", "csv", b""),
        ("export.csv", "csv", b"anonymous_id,ts,event_type,url\n"),
        ("export.csv", "csv", b"anonymous_id,ts,event_type,url"),
    ],
    ids=["log", "gzip", "ndjson", "csv", "csv-header-only", "csv-header-no-newline"],
)
def test_empty_files_read_zero_rows(tmp_path, name, fmt, content):
    """An empty file (or a CSV with only its header) reads zero rows and quarantines none."""
    path = write(tmp_path, name, content)
    loaded = load(path, fmt)
    assert (loaded.n_read, loaded.events.height, loaded.quarantine.height) == (0, 0, 0)


def test_zero_row_parquet_reads_zero_rows(tmp_path):
    """A Parquet file with a schema but no rows reads zero rows."""
    path = tmp_path / "events.parquet"
    pl.DataFrame(schema={"anonymous_id": pl.String, "ts": pl.String}).write_parquet(path)
    loaded = load(path, "parquet")
    assert (loaded.n_read, loaded.events.height, loaded.quarantine.height) == (0, 0, 0)


# -------------------------------------------------------------------------------- CSV

CSV_HEADER = "anonymous_id,ts,event_type,url"


def test_csv_with_crlf_line_endings(tmp_path):
    """CRLF endings are not part of the last field nor of the last header name."""
    content = "anonymous_id,ts,event_type,user_agent,url\r\n"
    content += "a1,2024-10-10T10:00:00Z,page_view,UA one,/a\r\n"
    content += "a2,2024-10-10T10:00:01Z,page_view,UA two,/b\r\n"
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert_accepted(
        loaded,
        {"source_line": [2, 3], "anonymous_id": ["a1", "a2"], "url": ["/a", "/b"]},
    )


def test_csv_quoted_fields_keep_separators_and_doubled_quotes(tmp_path):
    """A quoted field may hold the separator and "" for a quote."""
    content = lines(
        "anonymous_id,ts,event_type,url,user_agent",
        'a1,2024-10-10T10:00:00Z,page_view,"/search?q=red,blue","Mozilla/5.0 (X11; Linux), ""quoted"""',
        'a2,2024-10-10T10:00:01Z,page_view,/b,""',
    )
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert_accepted(
        loaded,
        {
            "source_line": [2, 3],
            "url": ["/search?q=red,blue", "/b"],
            "user_agent": ['Mozilla/5.0 (X11; Linux), "quoted"', None],
        },
    )


def test_csv_wrong_field_count_is_quarantined(tmp_path):
    """A row with fewer or more fields than the header is csv_field_count."""
    content = lines(
        CSV_HEADER,
        "a1,2024-10-10T10:00:00Z,page_view",
        "a1,2024-10-10T10:00:00Z,page_view,/a,extra",
        "a1,2024-10-10T10:00:00Z,page_view,/ok",
    )
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert_accepted(loaded, {"source_line": [4], "url": ["/ok"]})
    assert_quarantined(loaded, [(2, "csv_field_count"), (3, "csv_field_count")])


def test_csv_record_spanning_lines_is_unbalanced_quotes(tmp_path):
    """A record is one line: a quoted field with a newline leaves both halves with an odd
    number of quotes, and both are csv_unbalanced_quotes."""
    content = lines(
        "anonymous_id,ts,event_type,url,user_agent",
        'a1,2024-10-10T10:00:00Z,page_view,/a,"multi',
        'line agent"',
        "a2,2024-10-10T10:00:00Z,page_view,/ok,UA",
    )
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert_accepted(loaded, {"source_line": [4]})
    assert_quarantined(loaded, [(2, "csv_unbalanced_quotes"), (3, "csv_unbalanced_quotes")])


def test_csv_text_after_a_closing_quote_is_malformed_not_fatal(tmp_path):
    """A row with text after a closing quote cannot be parsed: it is quarantined as
    malformed_line, and the rows around it are still read."""
    content = lines(
        CSV_HEADER,
        "a1,2024-10-10T10:00:00Z,page_view,/a",
        'a1,2024-10-10T10:00:00Z,page_view,"/b"x',
        '"a1" ,2024-10-10T10:00:00Z,page_view,/c',
        "a1,2024-10-10T10:00:00Z,page_view,/d",
    )
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert_accepted(loaded, {"source_line": [2, 5], "url": ["/a", "/d"]})
    assert_quarantined(loaded, [(3, "malformed_line"), (4, "malformed_line")])


@pytest.mark.parametrize(
    ("mapping", "reason"),
    [
        (ColumnMapping(url="page"), "missing_url"),
        (ColumnMapping(ts="time"), "missing_ts"),
        (ColumnMapping(anonymous_id="visitor"), "missing_anonymous_id"),
        (ColumnMapping(event_type="kind"), "missing_event_type"),
    ],
)
def test_csv_missing_required_mapped_column_quarantines_every_row(tmp_path, mapping, reason):
    """If the column a required field is mapped to is absent, every row is quarantined
    with that field's reason; nothing crashes."""
    content = lines(
        CSV_HEADER, "a1,2024-10-10T10:00:00Z,page_view,/a", "a2,2024-10-10T10:00:00Z,page_view,/b"
    )
    cfg = Config(input=InputConfig(columns=mapping))
    loaded = load(write(tmp_path, "export.csv", content), "csv", cfg)
    assert loaded.events.height == 0
    assert_quarantined(loaded, [(2, reason), (3, reason)])


def test_csv_column_mapping_and_separator(tmp_path):
    """Columns are found by their mapped names, with the configured separator."""
    content = lines(
        "when;who;what;page;agent;code;amount",
        "2024-10-10T10:00:00Z;v1;purchase;/checkout;UA;201;12.50",
    )
    cfg = Config(
        input=InputConfig(
            csv_separator=";",
            columns=ColumnMapping(
                ts="when",
                anonymous_id="who",
                event_type="what",
                url="page",
                user_agent="agent",
                status="code",
                revenue="amount",
            ),
        )
    )
    loaded = load(write(tmp_path, "export.csv", content), "csv", cfg)
    assert_accepted(
        loaded,
        {
            "ts": [utc(2024, 10, 10, 10)],
            "anonymous_id": ["v1"],
            "event_type": ["purchase"],
            "url": ["/checkout"],
            "user_agent": ["UA"],
            "status": [201],
            "revenue": [12.5],
        },
    )


def test_csv_header_with_unbalanced_quote_does_not_crash(tmp_path):
    """A header with a stray quote is read leniently; its rows are still accounted for."""
    content = lines('anonymous_id,ts,event_type,"url', "a1,2024-10-10T10:00:00Z,page_view,/a")
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    assert loaded.n_read == 1
    assert_accepted(loaded, {"source_line": [2], "url": ["/a"]})


def test_csv_unreadable_header_is_not_replaced_by_a_data_row(tmp_path):
    """The first line is the header even when it is not UTF-8: it is quarantined, and the
    data rows are read against it rather than the first data row becoming the header."""
    content = b"\xffanonymous_id,ts,event_type,url\n"
    content += b"a1,2024-10-10T10:00:00Z,page_view,/a\n"
    content += b"a2,2024-10-10T10:00:00Z,page_view,/b\n"
    loaded = load(write(tmp_path, "export.csv", content), "csv")
    # The damaged first column name maps to nothing, so both rows lack an anonymous_id.
    assert_quarantined(
        loaded, [(1, "invalid_utf8"), (2, "missing_anonymous_id"), (3, "missing_anonymous_id")]
    )


# ----------------------------------------------------------------------------- NDJSON


def test_ndjson_object_or_array_in_a_known_field_is_wrong_json_type(tmp_path):
    """A known field holding an object or array is wrong_json_type."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(url={"path": "/a"}),
            event(anonymous_id=["a1"]),
            event(ts={"epoch": 1}),
            event(status=[200]),
            event(),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [5]})
    assert_quarantined(loaded, [(n, "wrong_json_type") for n in range(1, 5)])


def test_ndjson_number_as_url_is_bad_url(tmp_path):
    """ "url": 123 is read as the text "123", which is not a path or http(s) URL: bad_url."""
    path = write(tmp_path, "events.ndjson", lines(event(url=123), event(url="ftp://x/a"), event()))
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [3]})
    assert_quarantined(loaded, [(1, "bad_url"), (2, "bad_url")])


def test_ndjson_wrong_optional_field_types_are_nulled_and_counted(tmp_path):
    """ "status": "abc", "revenue": "x" and a status outside 100-599 are nulled and counted
    in field_issues; the event is kept. Numeric strings are read as numbers."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(status="abc", revenue="x"),
            event(status="404", revenue="9.5", url="/b"),
            event(status=700, url="/c"),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(
        loaded,
        {"source_line": [1, 2, 3], "status": [None, 404, None], "revenue": [None, 9.5, None]},
    )
    assert dict(loaded.field_issues.select("field", "n_rows").iter_rows()) == {
        "status": 2,
        "revenue": 1,
    }
    summary_nulled = query(loaded.db, "select nulled_fields::varchar as n from raw.runs")
    assert json.loads(summary_nulled["n"][0]) == {"status": 2, "revenue": 1}


def test_ndjson_valid_json_that_is_not_an_object_is_not_a_json_object(tmp_path):
    """An array, string, number, boolean or null line is valid JSON but not an event."""
    path = write(
        tmp_path, "events.ndjson", lines("[1, 2]", '"page_view"', "42", "true", "null", event())
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [6]})
    assert_quarantined(loaded, [(n, "not_a_json_object") for n in range(1, 6)])


def test_ndjson_broken_json_is_invalid_json(tmp_path):
    """Cut-off objects, two objects on a line, single quotes and trailing commas are
    invalid_json."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event()[:25],
            event() + event(),
            "{'anonymous_id': 'a1'}",
            '{"anonymous_id": "a1",}',
            event(),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [5]})
    assert_quarantined(loaded, [(n, "invalid_json") for n in range(1, 5)])


def test_ndjson_deeply_nested_line_does_not_crash(tmp_path):
    """A line nested thousands deep is quarantined, not a RecursionError."""
    bomb = '{"anonymous_id": "a1", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    loaded = load(write(tmp_path, "events.ndjson", lines(bomb, event())), "ndjson")
    assert_accepted(loaded, {"source_line": [2]})
    assert loaded.quarantine["source_line"].to_list() == [1]


def test_ndjson_unknown_fields_are_ignored(tmp_path):
    """Fields the contract does not know, nested or not, are ignored."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(event(props={"colour": ["red"], "n": 1}, session="s1", tags=[1, {"a": None}])),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"anonymous_id": ["a1"], "url": ["/a"], "event_type": ["page_view"]})


def test_ndjson_blank_or_absent_anonymous_id_is_missing(tmp_path):
    """An empty, blank, null or absent anonymous_id is missing_anonymous_id."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(anonymous_id=""),
            event(anonymous_id="   "),
            '{"anonymous_id": null, "ts": "2024-10-10T10:00:00Z", "event_type": "x", "url": "/"}',
            '{"ts": "2024-10-10T10:00:00Z", "event_type": "x", "url": "/"}',
            event(anonymous_id="  a9  "),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(loaded, {"source_line": [5], "anonymous_id": ["a9"]})
    assert_quarantined(loaded, [(n, "missing_anonymous_id") for n in range(1, 5)])


def test_ndjson_missing_required_fields(tmp_path):
    """Each required field has its own reason, checked in contract order."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            '{"anonymous_id": "a1", "event_type": "page_view", "url": "/a"}',
            '{"anonymous_id": "a1", "ts": "2024-10-10T10:00:00Z", "url": "/a"}',
            '{"anonymous_id": "a1", "ts": "2024-10-10T10:00:00Z", "event_type": "page_view"}',
            "{}",
        ),
    )
    loaded = load(path, "ndjson")
    assert_quarantined(
        loaded,
        [
            (1, "missing_ts"),
            (2, "missing_event_type"),
            (3, "missing_url"),
            (4, "missing_anonymous_id"),
        ],
    )


# ---------------------------------------------------------------------------- Parquet

PARQUET_MAPPING = ColumnMapping(
    anonymous_id="visitor",
    ts="time_ms",
    url="page",
    event_type="kind",
    status="code",
    revenue="amount",
)


def test_parquet_mapped_columns_with_epoch_ms(tmp_path):
    """Mapped Parquet columns of any scalar type are read; ts_unit = "ms" reads epoch millis."""
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "visitor": ["v1", "v2"],
            "time_ms": [1_728_554_400_000, 1_728_554_400_250],  # 2024-10-10T10:00:00Z, +250 ms
            "page": ["/a", "/b"],
            "kind": ["page_view", "purchase"],
            "code": [200, 201],
            "amount": [None, 19.99],
            "unmapped": [1, 2],
        }
    ).write_parquet(path)
    cfg = Config(input=InputConfig(ts_unit="ms", columns=PARQUET_MAPPING))
    loaded = load(path, "parquet", cfg)
    assert_accepted(
        loaded,
        {
            "source_line": [1, 2],
            "ts": [utc(2024, 10, 10, 10), utc(2024, 10, 10, 10) + timedelta(milliseconds=250)],
            "anonymous_id": ["v1", "v2"],
            "url": ["/a", "/b"],
            "event_type": ["page_view", "purchase"],
            "status": [200, 201],
            "revenue": [None, 19.99],
        },
    )


def test_parquet_numeric_columns_read_as_their_text_would_be(tmp_path):
    """Numeric ts, status and revenue columns are read as numbers, without a round trip
    through text, and give exactly what the same values written as text give: out-of-range
    epochs and non-finite numbers are quarantined or nulled alike."""
    numbers = pl.DataFrame(
        {
            "visitor": ["v1", "v2", "v3", "v4", "v5", "v6"],
            "time_ms": [1_728_554_400_000.5, 1e20, float("nan"), -1.0, 1_728_554_400_001, None],
            "page": ["/a"] * 6,
            "kind": ["page_view"] * 6,
            "code": [200, 99, 600, 404, 599, None],
            "amount": [19.99, float("inf"), float("nan"), -3.5, 0.0, None],
        },
        schema_overrides={"code": pl.Int32},
    )
    texts = numbers.with_columns(pl.col("time_ms", "code", "amount").cast(pl.String))
    numbers.write_parquet(tmp_path / "numbers.parquet")
    texts.write_parquet(tmp_path / "texts.parquet")
    cfg = Config(input=InputConfig(ts_unit="ms", columns=PARQUET_MAPPING))
    as_numbers = load(tmp_path / "numbers.parquet", "parquet", cfg)
    as_texts = load(tmp_path / "texts.parquet", "parquet", cfg)
    assert_frame_equal(as_numbers.events.drop("source"), as_texts.events.drop("source"))
    reasons = as_numbers.quarantine.select("source_line", "reason")
    assert_frame_equal(reasons, as_texts.quarantine.select("source_line", "reason"))
    # Hand-checked: 1e20 ms is beyond any date, NaN is no time, -1 ms is before 1990 (the
    # earliest accepted) and the null ts is missing.
    assert reasons.rows() == [
        (2, "bad_timestamp"),
        (3, "bad_timestamp"),
        (4, "timestamp_out_of_range"),
        (6, "missing_ts"),
    ]
    assert as_numbers.events["status"].to_list() == [200, 599]
    assert as_numbers.events["revenue"].to_list() == [19.99, 0.0]


def test_parquet_native_timestamp_columns(tmp_path):
    """A zone-aware timestamp column is converted to UTC; a naive one is local time in
    input.timezone, and a naive time in a DST gap is bad_timestamp."""
    aware = tmp_path / "aware.parquet"
    naive = tmp_path / "naive.parquet"
    frame = {"anonymous_id": ["v1", "v2"], "event_type": ["page_view"] * 2, "url": ["/a", "/b"]}
    pl.DataFrame(
        {**frame, "ts": [datetime(2024, 10, 10, 12), datetime(2024, 10, 10, 13)]}
    ).with_columns(pl.col("ts").dt.replace_time_zone("Europe/Paris")).write_parquet(aware)
    pl.DataFrame(
        {**frame, "ts": [datetime(2024, 7, 1, 12), datetime(2024, 3, 31, 2, 30)]}
    ).write_parquet(naive)
    loaded = load(aware, "parquet", amsterdam())
    assert_accepted(loaded, {"ts": [utc(2024, 10, 10, 10), utc(2024, 10, 10, 11)]})
    loaded = load(naive, "parquet", amsterdam())
    assert_accepted(loaded, {"source_line": [1], "ts": [utc(2024, 7, 1, 10)]})
    assert_quarantined(loaded, [(2, "bad_timestamp")])


def test_parquet_rows_with_null_visitor_are_quarantined(tmp_path):
    """A row whose mapped visitor column is null is missing_anonymous_id; raw shows the row."""
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "visitor": ["v1", None, "v3"],
            "time_ms": [1_728_554_400_000] * 3,
            "page": ["/a", "/b", "/c"],
            "kind": ["page_view"] * 3,
        }
    ).write_parquet(path)
    cfg = Config(input=InputConfig(ts_unit="ms", columns=PARQUET_MAPPING))
    loaded = load(path, "parquet", cfg)
    assert_accepted(loaded, {"source_line": [1, 3], "anonymous_id": ["v1", "v3"]})
    assert_quarantined(loaded, [(2, "missing_anonymous_id")])
    assert json.loads(loaded.quarantine["raw"][0]) == {
        "visitor": None,
        "time_ms": 1_728_554_400_000,
        "page": "/b",
        "kind": "page_view",
    }


@pytest.mark.parametrize(
    "content",
    [b"PAR1 not really parquet PAR1", b"not parquet at all", b"PAR1"],
    ids=["bad-footer", "no-magic", "magic-only"],
)
def test_unreadable_parquet_is_one_quarantine_row(tmp_path, content):
    """A Parquet file that cannot be opened is one unreadable_file row, not a crash."""
    loaded = load(write(tmp_path, "events.parquet", content), "parquet")
    assert loaded.events.height == 0
    assert loaded.quarantine["reason"].to_list() == ["unreadable_file"]
    assert loaded.quarantine["raw"][0].startswith("<unreadable parquet file")


def test_truncated_parquet_is_one_quarantine_row(tmp_path):
    """A Parquet file cut short (its footer lost) is one unreadable_file row."""
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({"anonymous_id": ["v1"] * 100, "url": ["/a"] * 100}).write_parquet(whole)
    path = write(tmp_path, "events.parquet", whole.read_bytes()[:-20])
    loaded = load(path, "parquet")
    assert loaded.quarantine["reason"].to_list() == ["unreadable_file"]


def page_views(n: int, **columns: list) -> pl.DataFrame:
    """`n` page views of devices v0, v1, ... on /p/0, /p/1, ..., plus `columns`."""
    return pl.DataFrame(
        {
            "anonymous_id": [f"v{i}" for i in range(n)],
            "ts": ["2024-10-10T10:00:00Z"] * n,
            "event_type": ["page_view"] * n,
            "url": [f"/p/{i}" for i in range(n)],
            **columns,
        }
    )


def gather_parquet_batches(monkeypatch, validate_rows: int) -> None:
    """Validate Parquet in record batches of `validate_rows`, all gathered into one batch."""
    monkeypatch.setattr(ingest, "PARQUET_VALIDATE_ROWS", validate_rows)
    monkeypatch.setattr(ingest, "BATCH_ROWS", 1000)


def test_corrupt_later_parquet_row_group_keeps_the_rows_before(tmp_path, monkeypatch):
    """Rows of the record batches read before a damaged row group are kept (validated batch
    by batch and gathered into larger ones); the damage is one unreadable_file row at the
    first row of the broken group."""
    import pyarrow.parquet as pq

    # One record batch per 10-row group.
    gather_parquet_batches(monkeypatch, 10)
    path = tmp_path / "events.parquet"
    page_views(30).write_parquet(path, row_group_size=10, compression="zstd", statistics=False)
    column = pq.ParquetFile(path).metadata.row_group(2).column(3)
    damaged = bytearray(path.read_bytes())
    start = column.data_page_offset
    damaged[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(bytes(damaged))
    loaded = load(path, "parquet")
    assert loaded.events["source_line"].to_list() == list(range(1, 21))
    assert loaded.events["url"].to_list() == [f"/p/{i}" for i in range(20)]
    assert_quarantined(loaded, [(21, "unreadable_file")])


def test_nulled_fields_of_gathered_parquet_batches_are_all_counted(tmp_path, monkeypatch):
    """Validated in 2-row record batches and gathered into one: a wrong status in each of the
    three record batches is nulled, and the run counts all three."""
    gather_parquet_batches(monkeypatch, 2)
    path = tmp_path / "events.parquet"
    page_views(6, status=["abc", "200", "404", "x", "oops", "500"]).write_parquet(path)
    loaded = load(path, "parquet")
    assert_accepted(loaded, {"status": [None, 200, 404, None, None, 500]})
    summary_nulled = query(loaded.db, "select nulled_fields::varchar as n from raw.runs")
    assert json.loads(summary_nulled["n"][0]) == {"status": 3}


def test_parquet_binary_and_nested_columns_do_not_crash(tmp_path):
    """Binary columns (mapped or not) and a list in a mapped column are read or quarantined;
    a list where a known field belongs is wrong_json_type, like in NDJSON."""
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "anonymous_id": [b"v1", b"v2"],
            "ts": ["2024-10-10T10:00:00Z"] * 2,
            "event_type": ["page_view"] * 2,
            "url": ["/a", "/b"],
            "user_agent": [["UA"], None],
            "blob": [b"\x00\xff", None],
        }
    ).write_parquet(path)
    loaded = load(path, "parquet")
    assert_accepted(loaded, {"source_line": [2], "anonymous_id": ["v2"]})
    assert_quarantined(loaded, [(1, "wrong_json_type")])


def test_parquet_binary_id_that_is_not_utf8_is_read_as_hex(tmp_path):
    """A binary visitor id (raw bytes, not text) becomes its hex string, not a crash."""
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "anonymous_id": [b"\x00\xff", b"\x01\x02"],
            "ts": ["2024-10-10T10:00:00Z"] * 2,
            "event_type": ["page_view"] * 2,
            "url": ["/a", "/b"],
        }
    ).write_parquet(path)
    loaded = load(path, "parquet")
    assert_accepted(loaded, {"source_line": [1, 2], "anonymous_id": ["00ff", "0102"]})


# ------------------------------------------------------------------------------- URLs


def urls_of(tmp_path: Path, urls: list[str], **fields) -> Loaded:
    path = write(tmp_path, "events.ndjson", lines(*(event(url=u, **fields) for u in urls)))
    return load(path, "ndjson")


def test_url_fragment_is_dropped_and_host_split_off(tmp_path):
    """The fragment goes; scheme, user info and default ports go; the host is lower-cased
    into `host`; the path keeps its case."""
    loaded = urls_of(
        tmp_path,
        [
            "/a?x=1#section",
            "HTTPS://Shop.Example.COM/Cart?x=1#frag",
            "http://user:secret@Example.com:80/p",
            "https://example.com:8443",
            "http://example.com?x=1",
        ],
    )
    assert_accepted(
        loaded,
        {
            "url": ["/a?x=1", "/Cart?x=1", "/p", "/", "/?x=1"],
            "host": [None, "shop.example.com", "example.com", "example.com:8443", "example.com"],
        },
    )
    assert "secret" not in loaded.events.write_csv()


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("/%41%42c", "/ABc"),
        ("/caf%C3%A9", "/café"),
        ("/caf%c3%a9", "/café"),
        ("/%7euser/%2D", "/~user/-"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a%3Fb", "/a%3Fb"),
        ("/a?q=x%26y", "/a?q=x%26y"),
        ("/100%25", "/100%25"),
        ("/%2541", "/%2541"),
        ("/%ZZ/%4", "/%ZZ/%4"),
        ("/a%20b", "/a%20b"),
    ],
)
def test_percent_decoding_is_limited_to_safe_escapes(tmp_path, raw, normalised):
    """Unreserved ASCII and two-byte UTF-8 escapes are decoded; reserved characters (/ ? &
    %), spaces and invalid escapes stay as written; nothing is decoded twice."""
    loaded = urls_of(tmp_path, [raw])
    assert loaded.events["url"].to_list() == [normalised]


@pytest.mark.parametrize(
    ("raw", "scrubbed"),
    [
        ("/p?email=a%40b.c&x=1", "/p?x=1"),
        ("/p?x=1&token=abc", "/p?x=1"),
        ("/p?x=1&password=hunter2&y=2", "/p?x=1&y=2"),
        ("/p?email=a&token=b&x=1", "/p?x=1"),
        ("/p?x=1&email=a&token=b", "/p?x=1"),
        ("/p?email=a&token=b", "/p"),
        ("/p?a=1&email=x&password=y&secret=z&b=2", "/p?a=1&b=2"),
        ("/p?Password=x&y=2", "/p?y=2"),
        ("/p?token&password&x=1", "/p?x=1"),
        ("/p?%65mail=a&x=1", "/p?x=1"),
        ("/p?emailing=1&myemail=2", "/p?emailing=1&myemail=2"),
        ("/p?utm_source=news&email=a#frag", "/p?utm_source=news"),
    ],
)
def test_personal_query_params_are_scrubbed_from_url(tmp_path, raw, scrubbed):
    """Personal parameters (email, token, password, ...) are removed wherever they stand,
    however many in a row; other parameters and their order are kept."""
    loaded = urls_of(tmp_path, [raw])
    assert loaded.events["url"].to_list() == [scrubbed]


def test_personal_query_params_are_scrubbed_from_referrer(tmp_path):
    """The referrer loses its fragment and personal parameters, and keeps the rest."""
    path = write(
        tmp_path,
        "events.ndjson",
        lines(
            event(referrer="https://shop.example/login?email=a@b.c&token=t&next=%2Fcart#top"),
            event(referrer="https://shop.example/reset?pwd=x&secret=y", url="/b"),
        ),
    )
    loaded = load(path, "ndjson")
    assert_accepted(
        loaded,
        {"referrer": ["https://shop.example/login?next=%2Fcart", "https://shop.example/reset"]},
    )


def test_utm_parameters_are_parsed(tmp_path):
    """utm_source, utm_medium and utm_campaign come from the URL, lower-cased, + as space;
    an empty value is null."""
    loaded = urls_of(
        tmp_path,
        [
            "/l?utm_source=Google&utm_medium=CPC&utm_campaign=Spring+Sale",
            "/l?x=1&utm_source=&utm_medium=email",
            "/l?notutm_source=x",
        ],
    )
    assert_accepted(
        loaded,
        {
            "utm_source": ["google", None, None],
            "utm_medium": ["cpc", "email", None],
            "utm_campaign": ["spring sale", None, None],
        },
    )


# ------------------------------------------------------------------------ access logs


def test_access_log_fields(tmp_path):
    """The authenticated user is user_id; "-" is null for user, referrer and user agent;
    GET and HEAD are page views, other methods their lower-cased name."""
    path = write(
        tmp_path,
        "access.log",
        lines(
            clf(user="alice", referrer="https://www.google.com/", request="GET /a HTTP/1.1"),
            clf(user="-", ua="-", request="HEAD /b HTTP/1.1"),
            clf(request="POST /cart HTTP/2.0", status="303"),
            clf(request="GET /old"),  # HTTP/0.9: no protocol
        ),
    )
    loaded = load(path, "combined")
    assert_accepted(
        loaded,
        {
            "user_id": ["alice", None, None, None],
            "event_type": ["page_view", "page_view", "post", "page_view"],
            "url": ["/a", "/b", "/cart", "/old"],
            "referrer": ["https://www.google.com/", None, None, None],
            "user_agent": [UA, None, UA, UA],
            "status": [200, 200, 303, 200],
            "ts": [utc(2024, 10, 10, 13, 55, 36)] * 4,
        },
    )
    assert loaded.events["anonymous_id"].is_null().all()  # hashed by the store, not here


def test_escaped_quotes_inside_quoted_fields(tmp_path):
    """\\" and \\\\ inside a quoted referrer or user agent are unescaped, not a field end."""
    path = write(
        tmp_path,
        "access.log",
        lines(clf(ua=r"Mozilla/5.0 \"Quoted\" (X11)", referrer=r"https://r.example/a\\b")),
    )
    loaded = load(path, "combined")
    assert_accepted(
        loaded,
        {"referrer": ["https://r.example/a\\b"], "user_agent": ['Mozilla/5.0 "Quoted" (X11)']},
    )


def test_common_log_format_has_no_referrer_or_user_agent(tmp_path):
    """Common log lines are read with user, time, request and status; no referrer or agent."""
    common = f'{IP} - bob [10/Oct/2024:13:55:36 -0700] "GET /a?x=1 HTTP/1.0" 200 2326'
    path = write(tmp_path, "access.log", lines(common, "not a log line"))
    loaded = load(path)
    assert loaded.file.format == "common"
    assert_accepted(
        loaded,
        {
            "ts": [utc(2024, 10, 10, 20, 55, 36)],
            "user_id": ["bob"],
            "url": ["/a?x=1"],
            "referrer": [None],
            "user_agent": [None],
        },
    )
    assert_quarantined(loaded, [(2, "malformed_line")])


# -------------------------------------------------------------------------- detection


def _parquet_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "scratch.parquet"
    pl.DataFrame({"anonymous_id": ["v1"]}).write_parquet(path)
    return path.read_bytes()


COMMON_LINE = f'{IP} - - [10/Oct/2024:13:55:36 +0000] "GET /a HTTP/1.1" 200 512'


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("access.log", clf(), "combined"),
        ("access.log", COMMON_LINE, "common"),
        ("access.log.gz", gzip.compress(clf().encode()), "combined"),
        ("access", clf(), "combined"),
        ("events.ndjson", event(), "ndjson"),
        ("events.jsonl", event(), "ndjson"),
        ("events.json.gz", gzip.compress(event().encode()), "ndjson"),
        ("events.txt", event(), "ndjson"),
        ("export.csv", CSV_HEADER, "csv"),
        ("export.csv.gz", gzip.compress(CSV_HEADER.encode()), "csv"),
        ("export.dat", CSV_HEADER, "csv"),
        ("events.parquet", "parquet", "parquet"),
        ("events.bin", "parquet", "parquet"),
        ("events.parquet", b"garbage", "parquet"),
        ("empty.log", b"", "combined"),
    ],
)
def test_format_is_detected_from_extension_then_content(tmp_path, name, content, fmt):
    """The extension decides when it is known; otherwise the first lines are sniffed
    (through gzip); Parquet is recognised by its magic bytes."""
    if content == "parquet":
        content = _parquet_bytes(tmp_path)
    assert ingest.detect_format(write(tmp_path, name, content)) == fmt


def test_detection_looks_past_garbage_first_lines(tmp_path):
    """A log whose first lines are damaged is still recognised from the lines after them,
    and its damaged lines are quarantined instead of failing the run."""
    content = lines("\x00\x00 rotated garbage", "", clf(), clf(request="GET /b HTTP/1.1"))
    path = write(tmp_path, "access.log", content)
    assert ingest.detect_format(path) == "combined"
    loaded = load(path)
    assert_accepted(loaded, {"source_line": [3, 4]})
    assert_quarantined(loaded, [(1, "malformed_line"), (2, "empty_line")])


def test_one_damaged_line_does_not_decide_the_format(tmp_path):
    """A combined line cut after its size field looks like a common-log line; when it comes
    first, the combined lines after it still decide, so no user agent is lost."""
    cut = clf()[: clf().index(' "-"')]
    path = write(tmp_path, "access.log", lines(cut, clf(), clf(request="GET /b HTTP/1.1")))
    assert ingest.detect_format(path) == "combined"
    loaded = load(path)
    assert_accepted(loaded, {"source_line": [2, 3], "user_agent": [UA, UA]})
    assert_quarantined(loaded, [(1, "malformed_line")])


def test_combined_log_with_trailing_fields_is_detected_as_combined(tmp_path):
    """Nginx's combined format plus request time is still combined: the user agent is kept."""
    path = write(tmp_path, "access.log", lines(clf() + " 0.012 0.010"))
    assert ingest.detect_format(path) == "combined"
    loaded = load(path)
    assert_accepted(loaded, {"url": ["/a"], "user_agent": [UA]})


def test_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    """A UTF-8 byte-order mark (Windows tools write one) does not spoil the first line."""
    bom = b"\xef\xbb\xbf"
    ndjson = write(tmp_path, "events.txt", bom + lines(event(), event(url="/b")).encode())
    assert ingest.detect_format(ndjson) == "ndjson"
    assert_accepted(load(ndjson), {"source_line": [1, 2]})
    log = write(tmp_path, "access.log", bom + lines(clf()).encode())
    assert_accepted(load(log), {"source_line": [1]})


def test_run_detects_the_format_of_each_file(tmp_path):
    """One run over a directory reads each file in its own format."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs, "a.log", lines(clf()))
    write(inputs, "b.ndjson", lines(event(), "[]"))
    write(
        inputs,
        "c.csv.gz",
        gzip.compress(lines(CSV_HEADER, "a1,2024-10-10T10:00:00Z,x,/c").encode()),
    )
    write(inputs, "d.log", lines(COMMON_LINE))
    summary = cli.run_pipeline([inputs], tmp_path / "db.duckdb", without_limit(Config()), now=NOW)
    assert_accounted(summary)
    assert [(Path(f.source).name, f.format, f.n_read, f.n_accepted) for f in summary.files] == [
        ("a.log", "combined", 1, 1),
        ("b.ndjson", "ndjson", 2, 1),
        ("c.csv.gz", "csv", 1, 1),
        ("d.log", "common", 1, 1),
    ]


# --------------------------------------------------------------------------- database


def test_exact_duplicates_are_counted_not_stored_twice(tmp_path):
    """The same event twice in a file is one accepted and one duplicate; reading the file
    again in a later run makes every event a duplicate."""
    path = write(tmp_path, "access.log", lines(clf(), clf(), clf(request="GET /b HTTP/1.1")))
    loaded = load(path, "combined")
    assert (loaded.file.n_accepted, loaded.file.n_duplicates) == (2, 1)
    summary = cli.run_pipeline([path], loaded.db, without_limit(Config()), now=NOW)
    assert_accounted(summary)
    (again,) = summary.files
    assert (again.n_read, again.n_accepted, again.n_duplicates) == (3, 0, 3)
    assert query(loaded.db, "select count(*) as n from raw.events")["n"][0] == 2


def test_a_duplicate_is_found_in_any_earlier_day(tmp_path):
    """Content-hashed duplicates share ts, so a run looks for them only in its own time
    span; an event from an earlier day delivered again is still a duplicate."""
    day_one = write(tmp_path, "d1.ndjson", lines(event(ts="2024-10-01T09:00:00Z"), event()))
    day_two = write(tmp_path, "d2.ndjson", lines(event(ts="2024-10-01T09:00:00Z")))
    db = tmp_path / "db.duckdb"
    cli.run_pipeline([day_one], db, Config(), now=NOW)
    (again,) = cli.run_pipeline([day_two], db, Config(), now=NOW).files
    assert (again.n_accepted, again.n_duplicates) == (0, 1)


def test_a_source_id_sent_again_with_another_timestamp_is_a_duplicate(tmp_path):
    """A source-given event_id is the key whatever its ts: re-sent with a timestamp a day
    later (outside the first delivery's span), it is still a duplicate."""
    first = write(tmp_path, "first.ndjson", lines(event(event_id="m-1")))
    resent = write(
        tmp_path, "resent.ndjson", lines(event(event_id="m-1", ts="2024-10-11T10:00:00Z"))
    )
    db = tmp_path / "db.duckdb"
    cli.run_pipeline([first], db, Config(), now=NOW)
    (again,) = cli.run_pipeline([resent], db, Config(), now=NOW).files
    assert (again.n_accepted, again.n_duplicates) == (0, 1)
    assert query(db, "select count(*) as n from raw.events")["n"][0] == 1


def test_quarantined_rows_are_stored_with_their_run(tmp_path):
    """raw.quarantine holds every rejected row with source, line, reason and run id."""
    path = write(tmp_path, "events.ndjson", lines(event(), "oops", event(url=7)))
    loaded = load(path, "ndjson")
    stored = query(
        loaded.db,
        "select source, source_line, reason, run_id from raw.quarantine order by source_line",
    )
    assert_frame_equal(
        stored,
        pl.DataFrame(
            {
                "source": [str(path)] * 2,
                "source_line": [2, 3],
                "reason": ["invalid_json", "bad_url"],
                "run_id": [1, 1],
            }
        ),
    )


def _cells_containing(db: Path, needle: str) -> list[str]:
    """Every table.column (any type, read as text) holding `needle` somewhere."""
    columns = query(
        db,
        "select table_schema, table_name, column_name from information_schema.columns "
        "join information_schema.tables using (table_catalog, table_schema, table_name) "
        "where table_type = 'BASE TABLE'",
    )
    assert columns.height > 0
    hits = []
    for schema, table, column in columns.iter_rows():
        # Identifiers come from the catalog, not from input; the needle is a bound value.
        sql = (
            f'select count(*) as n from "{schema}"."{table}" '
            f'where strpos(cast("{column}" as varchar), ?) > 0'
        )
        if query(db, sql, [needle])["n"][0]:
            hits.append(f"{schema}.{table}.{column}")
    return hits


def test_raw_ip_never_reaches_the_database(tmp_path):
    """No table, column or quarantined line holds a visitor's IP address, IPv4 or IPv6."""
    ipv6 = "2001:db8::7"
    path = write(
        tmp_path,
        "access.log",
        lines(
            clf(),
            clf(request="GET /b HTTP/1.1"),
            clf(ip=ipv6, request="GET /c HTTP/1.1"),
            clf(ts="31/Feb/2024:10:00:00 +0000"),
            clf(ip=ipv6, ts="31/Feb/2024:10:00:00 +0000"),
            clf()[:70],
        ),
    )
    loaded = load(path, "combined")
    assert loaded.file.n_accepted == 3
    assert loaded.quarantine.height == 3
    assert _cells_containing(loaded.db, IP) == []
    assert _cells_containing(loaded.db, ipv6) == []
    # The rest of a quarantined line stays readable for debugging.
    assert loaded.quarantine["raw"].str.contains("31/Feb/2024", literal=True).sum() == 2


def _anonymous_ids(db: Path) -> dict[str, str]:
    return dict(query(db, "select url, anonymous_id from raw.events").iter_rows())


def test_anonymous_id_is_stable_within_a_database_and_salted_per_database(tmp_path):
    """The same IP and user agent get the same anonymous_id in every run into one database,
    a different one with another agent, and a different one in another database."""
    first = write(
        tmp_path,
        "day1.log",
        lines(clf(request="GET /day1"), clf(request="GET /other-ua", ua="curl/8")),
    )
    second = write(
        tmp_path, "day2.log", lines(clf(request="GET /day2", ts="11/Oct/2024:09:00:00 +0000"))
    )
    db, other_db = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    for inputs, database in ((first, db), (second, db), (first, other_db)):
        assert_accounted(cli.run_pipeline([inputs], database, without_limit(Config()), now=NOW))
    ids, other_ids = _anonymous_ids(db), _anonymous_ids(other_db)
    assert ids["/day1"] == ids["/day2"]
    assert ids["/day1"] != ids["/other-ua"]
    assert other_ids["/day1"] != ids["/day1"]
    assert other_ids["/other-ua"] != ids["/other-ua"]


def test_a_file_of_unknown_format_is_quarantined_not_fatal(tmp_path):
    """A file that looks like no supported format costs one quarantine row, not the run."""
    good = tmp_path / "access.log"
    good.write_text(
        '1.2.3.4 - - [10/Oct/2024:08:00:00 +0000] "GET / HTTP/1.1" 200 10 "-" "Mozilla/5.0"\n'
    )
    odd = tmp_path / "notes.bin"
    odd.write_bytes(b"\x00\x01 binary junk \xff\n more junk\n")
    summary = cli.run_pipeline(
        [tmp_path], tmp_path / "out" / "db.duckdb", without_limit(Config()), now=NOW
    )
    by_source = {Path(f.source).name: f for f in summary.files}
    assert by_source["notes.bin"].n_read == 1
    assert by_source["notes.bin"].n_quarantined == 1
    assert summary.quarantined_by_reason == {"unknown_format": 1}
    assert by_source["access.log"].n_accepted == 1


def test_databases_in_an_input_directory_are_not_inputs(tmp_path):
    """A .duckdb file (and its .wal) next to the logs is skipped, not read as a log."""
    (tmp_path / "access.log").write_text(
        '1.2.3.4 - - [10/Oct/2024:08:00:00 +0000] "GET / HTTP/1.1" 200 10 "-" "Mozilla/5.0"\n'
    )
    (tmp_path / "journeymap.duckdb").write_bytes(b"DUCK\x00\x00")
    (tmp_path / "journeymap.duckdb.wal").write_bytes(b"\x00")
    assert [p.name for p in ingest.discover_inputs([tmp_path])] == ["access.log"]


# ----------------------------------------------------------------- combined fast path

# Characters that delimit or break a combined line, and some that only look like they do.
HOSTILE_CHARS = ['"', " ", "\\", "[", "]", "\t", "\r", "\u00a0", "\u3000", "a", "0", "/", "-", "é"]


# Per piece of a combined line: usual values, then odd ones that may break the line.
COMBINED_PIECES: list[tuple[list[str], list[str]]] = [
    ([IP, "2001:db8::1"], ["a\u00a0b", "a\tb", ""]),
    ([" - "], [" ", "  -  ", " - x "]),
    (["-", "alice"], ["[x]", "a b", ""]),
    ([" ["], [" [[", "["]),
    (["10/Oct/2024:13:55:36 +0000", "1/Oct/2024:3:5:6 -0700"], ["a]b", "", "a b c"]),
    (['] "'], ["]", "]  "]),
    (["GET /a HTTP/1.1", "POST /b", "GET /a?b=1#c HTTP/2"], ["-", "GET /a b c", "GET  /a"]),
    (['" '], ['"', '"" ', ' " ']),
    (["200", "404"], ["\u0662\u0660\u0660", "20", "2000", "2 0"]),
    ([" "], ["\t", "  "]),
    (["512", "-"], ["", "1 2", "\u00a0"]),
    ([' "'], [' ""', " "]),
    (["-", "https://r.example/"], ['a \\"b\\"', "end\\", "end\\\\", "a\\b", "\\"]),
    (['" "'], ['"  "', '""', '" " "']),
    ([UA, "", "\u00fc \u2603"], ['x\\"y', "end\\", "a\\\\b"]),
    (['"'], ['\\"', '""']),
    (["", " 0.123"], ['\t"up"', "junk", ' "a" "b"', "\u00a0x", ' "', "\\"]),
]
HOSTILE_TEXT = st.text(st.sampled_from(HOSTILE_CHARS), max_size=6)


@st.composite
def combined_lines(draw) -> str:
    """Usual combined lines with up to two pieces swapped for odd or hostile text."""
    pieces = [draw(st.sampled_from(usual)) for usual, _ in COMBINED_PIECES]
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(pieces) - 1))
        pieces[i] = draw(st.one_of(st.sampled_from(COMBINED_PIECES[i][1]), HOSTILE_TEXT))
    return "".join(pieces)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(combined_lines(), min_size=1, max_size=12))
def test_combined_fast_path_gives_the_fields_of_the_full_regex(texts):
    """Whichever path a combined line takes, its fields are the ones COMBINED_RE captures."""
    frame = pl.DataFrame(
        {"source_line": range(1, len(texts) + 1), "line": texts},
        schema={"source_line": pl.Int64, "line": pl.String},
    )
    assert_frame_equal(
        ingest.access_fields(frame, "combined"),
        ingest._access_fields_exact(frame, "combined"),
    )


def test_only_unusual_combined_lines_take_the_regex_path():
    """Usual lines are cut at quotes; an escaped quote or an extra quoted field needs the regex."""
    texts = [clf(), clf(ua='say \\"hi\\"'), clf() + ' "forwarded"', clf(referrer="https://r/")]
    frame = pl.DataFrame({"source_line": [1, 2, 3, 4], "line": texts})
    fields = ingest._combined_fields_fast(frame)
    assert fields["source_line"].to_list() == [1, 2, 3, 4]
    assert fields["is_fast"].to_list() == [True, False, False, True]
    assert fields.filter(~pl.col("is_fast"))["ip"].is_null().all()
