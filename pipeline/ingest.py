"""Ingest: raw files in, canonical events and quarantined rows out.

Every input row ends in exactly one of two places: an accepted event or a quarantine row
with a reason. Exact duplicates are recognised later by the store (they share an
`event_id`), so for every file `n_read == n_accepted + n_duplicates + n_quarantined`.

The hot path is Polars string expressions over whole blocks of lines, two blocks at a time
(`in_order`: Polars releases the GIL). Python touches individual lines only on cold paths:
lines that are not valid UTF-8 and JSON lines the vectorised decoder rejects, which are
isolated by bisection.

>>> batches = list(read_file(Path("data/sample/events.ndjson"), "ndjson", Config()))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
from isal import isal_zlib

from pipeline.config import Config, InputConfig
from pipeline.errors import UsageError
from pipeline.schemas import EVENTS, FIELD_ISSUES, QUARANTINE, UTC_US, conform

T = TypeVar("T")

# Text is cut into chunks of whole lines of at least BLOCK_BYTES, parsed PARSE_WORKERS at a
# time and handed on in batches of about BATCH_ROWS rows. Measured on a 10M-line gzip log,
# reader alone: 16 MiB 29 s and 1.5 GB peak; 32 MiB 34 s and 1.8 GB; 8 MiB 40 s (per-chunk
# work shows); one ~170 MB chunk at a time, as before: 41 s and 2.1 GB.
BLOCK_BYTES = 16 * 1024 * 1024
# Compressed bytes read at a time; each inflates to at most BLOCK_BYTES per step.
GZIP_READ_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
PARSE_WORKERS = 2
# One chunk waits beside the two being parsed, so a parser that ends first goes on at once:
# the 10M-line log read in 14.4 s instead of 15.7 s, with a peak of 1.34 GB instead of 1.24.
PARSE_QUEUED = 1
JSON_BATCH_ROWS = 8192
# 500k: loading 10M events from Parquet took as long as in 1M-row batches (28 s), with the
# reader's batches and DuckDB's work on one half the size.
BATCH_ROWS = 500_000
PARQUET_VALIDATE_ROWS = 250_000
EARLIEST_TS = datetime(2000, 1, 1)
SNIFF_LINES = 1000
BOM = b"\xef\xbb\xbf"

# Apache/Nginx combined = common + "referrer" "user-agent". Quoted fields may hold escaped
# quotes (\"), which nginx writes for attacker-controlled values.
_Q = r'"((?:[^"\\]|\\.)*)"'
COMMON_RE = (
    r"^(\S+) (\S+) (\S+) \[([^\]]+)\] "
    r'"(\S+) (\S+)(?: (\S+))?" (\d{3}) (\S+)'
)
COMBINED_RE = COMMON_RE + rf" {_Q} {_Q}"
CLF_TS_FORMAT = "%d/%b/%Y:%H:%M:%S %z"
# A client address opens every access-log line (IPv4 or IPv6); forwarded-for fields may
# repeat IPv4 addresses later in the line.
_LEADING_ADDRESS_RE = r"^(\s*)(?:\d{1,3}(?:\.\d{1,3}){3}|\[?[0-9A-Fa-f]*:[0-9A-Fa-f:.]*\]?)(\s|$)"
_IPV4_RE = r"\b\d{1,3}(?:\.\d{1,3}){3}\b"

UNKNOWN_FORMAT = "unknown"
# Files in an input directory that are never logs: configs, notes, and databases (people keep
# the journeymap database next to the logs it was built from).
NOT_INPUT_SUFFIXES = (".toml", ".md", ".duckdb", ".wal", ".lock")
LINE_FORMATS = ("combined", "common", "ndjson", "csv")
ALL_FORMATS = (*LINE_FORMATS, "parquet")

_EXTENSIONS = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class Batch:
    """One slice of one input file, after validation.

    `events` follows `schemas.EVENTS` plus a transient `visitor_key` (access logs: IP and
    user agent, hashed with the database's salt by the store and never written).
    """

    source: str
    fmt: str
    n_read: int
    events: pl.DataFrame
    quarantine: pl.DataFrame
    field_issues: pl.DataFrame
    n_bytes: int = 0


# ---------------------------------------------------------------------------- discovery


def discover_inputs(paths: list[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into the files to read."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.suffix not in NOT_INPUT_SUFFIXES
            )
            if not files:
                raise UsageError(f"input directory {path} holds no files: point --input at logs")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"input {path} does not exist: check the --input path")
    for path in found:
        if not os.access(path, os.R_OK):
            raise UsageError(f"input {path} is not readable: fix its permissions")
    return found


def detect_format(path: Path) -> str:
    """Guess a file's format from its extension, then from its first lines.

    Most of the lines that look like NDJSON or an access log decide (the first on a tie), so
    one damaged line at the top (a log rotated mid-write) neither makes the file unreadable
    nor, being a combined line cut short, makes it a common log without user agents.
    """
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    head = _head_bytes(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    if suffix in _EXTENSIONS and _EXTENSIONS[suffix] != "parquet":
        return _EXTENSIONS[suffix]
    texts = [ln.strip().decode("utf-8", "replace") for ln in head.split(b"\n") if ln.strip()][
        :SNIFF_LINES
    ]
    text = texts[0] if texts else ""
    line = pl.col("text")
    kinds = (
        pl.DataFrame({"text": texts}, schema={"text": pl.String})
        .select(
            kind=pl.when(line.str.starts_with("{"))
            .then(pl.lit("ndjson"))
            # Trailing fields (request time, upstream) are tolerated, as by the parser.
            .when(line.str.contains(COMBINED_RE + r"(?:\s.*)?$"))
            .then(pl.lit("combined"))
            .when(line.str.contains(COMMON_RE))
            .then(pl.lit("common"))
        )
        .drop_nulls()
        .group_by("kind", maintain_order=True)
        .len()
        .sort("len", descending=True, maintain_order=True)
    )
    if kinds.height:
        return kinds["kind"][0]
    if suffix == ".parquet":
        return "parquet"
    if "," in text or ";" in text or "\t" in text:
        return "csv"
    # An empty file has no format to detect; any line reader reads its zero lines.
    return "combined" if not text else UNKNOWN_FORMAT


def _head_bytes(path: Path, n: int = 65536) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(n)
    if head.startswith(GZIP_MAGIC):
        try:
            head = _gzip_inflater().decompress(head, n)
        except isal_zlib.error:
            return b""
    return head.removeprefix(BOM)


# ------------------------------------------------------------------------------ reading


def read_file(
    path: Path, fmt: str, cfg: Config, ingested_at: datetime | None = None
) -> Iterator[Batch]:
    """Read one file into validated batches. Never raises on bad content.

    `ingested_at` bounds timestamps from above; a naive value is taken to be UTC.
    """
    ingested_at = ingested_at or datetime.now(UTC)
    source = str(path)
    if fmt == "parquet":
        yield from _read_parquet(path, cfg, ingested_at)
        return
    if fmt == UNKNOWN_FORMAT:
        # Nothing in the file looks like a supported format: say so in quarantine (one row for
        # the file, its first line as evidence) and go on with the other inputs.
        first = _head_bytes(path, 4096).split(b"\n", 1)[0].decode("utf-8", "backslashreplace")
        quarantine = pl.DataFrame(
            {"source_line": [1], "raw": [first[:500]], "reason": ["unknown_format"]}
        )
        yield Batch(source, fmt, 1, _empty_events(), _q(quarantine, source), _no_issues(), 0)
        return
    if fmt not in LINE_FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(ALL_FORMATS)}")
    jobs = _parse_jobs(path, fmt, cfg, ingested_at)
    with contextlib.closing(in_order(jobs, PARSE_WORKERS, queued=PARSE_QUEUED)) as parsed:
        yield from _gathered(parsed)


def _parse_jobs(
    path: Path, fmt: str, cfg: Config, ingested_at: datetime
) -> Iterator[Callable[[], Batch]]:
    """One job per chunk of lines, in file order: each parses its chunk into a Batch.

    Cutting lines and finding a CSV file's header happen here, in order; the parsing, which
    owes nothing to other chunks, is left to the jobs.
    """
    source = str(path)
    header: str | None = None
    for chunk in _line_chunks(path, cfg.input.max_line_bytes):
        lines, bad, n_read = chunk.lines, chunk.quarantine, chunk.n_read
        if fmt == "csv" and header is None:
            # The header is the first line that is not blank, readable or not, so a data
            # row is never taken for it. An unreadable header stays quarantined (and
            # counted); rows are then read against its escaped text.
            first = (
                pl.concat(
                    [
                        lines.select("source_line", text="line"),
                        bad.filter(
                            pl.col("reason").is_in(["invalid_utf8", "line_too_long"])
                        ).select("source_line", text="raw"),
                    ]
                )
                .sort("source_line")
                .head(1)
            )
            if first.height:
                header_line, header = first.row(0)
                if len(lines) and lines["source_line"][0] == header_line:
                    # The header is not a data row: it is not counted.
                    lines = lines.slice(1)
                    n_read -= 1
            if header is None:
                # No header yet (only blank lines or a damage marker): nothing to parse.
                empty = Batch(
                    source,
                    fmt,
                    chunk.n_read,
                    _empty_events(),
                    _q(bad, source),
                    _no_issues(),
                    chunk.n_bytes,
                )
                yield lambda empty=empty: empty
                continue
        yield partial(
            _parsed_chunk, source, fmt, lines, bad, n_read, chunk.n_bytes, header, cfg, ingested_at
        )


def _parsed_chunk(
    source: str,
    fmt: str,
    lines: pl.DataFrame,
    bad: pl.DataFrame,
    n_read: int,
    n_bytes: int,
    header: str | None,
    cfg: Config,
    ingested_at: datetime,
) -> Batch:
    """Parse one chunk of lines of a line format (`header`: a CSV file's header line)."""
    if fmt == "csv":
        assert header is not None
        events, quarantine, issues = parse_csv_lines(lines, header, cfg, ingested_at)
    elif fmt == "ndjson":
        events, quarantine, issues = parse_ndjson_lines(lines, cfg, ingested_at)
    else:
        events, quarantine, issues = parse_access_lines(lines, cfg, ingested_at, fmt)
    quarantine = pl.concat([bad, quarantine])
    if fmt in ("combined", "common"):
        # The store keeps a visitor's IP only hashed; a rejected line must not leak it.
        quarantine = quarantine.with_columns(
            raw=pl.col("raw")
            .str.replace(_LEADING_ADDRESS_RE, "${1}<ip>${2}")
            .str.replace_all(_IPV4_RE, "<ip>")
        )
    return Batch(
        source,
        fmt,
        n_read,
        _with_source(events, source),
        _q(quarantine, source),
        issues.with_columns(source=pl.lit(source)).select(FIELD_ISSUES.columns.keys()),
        n_bytes,
    )


def in_order(jobs: Iterator[Callable[[], T]], workers: int, queued: int = 0) -> Iterator[T]:
    """Run `jobs` up to `workers` at a time in threads; yield their results in job order.

    Polars releases the GIL while it computes, so jobs (chunks of lines to parse, partitions
    to sessionise) run side by side. At most `workers` jobs run and `queued` more wait to
    start, so memory holds that many jobs' work. A job's exception is raised when its turn
    comes; when the consumer stops early, the jobs under way finish and `jobs` is closed.

    Results come in order, so a thread whose job ends before an earlier one's would idle
    until that earlier job ends and the next is made; a queued job starts at once instead.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="journeymap-job")
    under_way: deque[Future[T]] = deque()
    try:
        for job in jobs:
            under_way.append(pool.submit(job))
            if len(under_way) >= workers + queued:
                yield under_way.popleft().result()
        while under_way:
            yield under_way.popleft().result()
    finally:
        for future in under_way:
            future.cancel()
        pool.shutdown(wait=True)
        if isinstance(jobs, Generator):
            jobs.close()


@dataclass(frozen=True)
class _Chunk:
    lines: pl.DataFrame  # source_line, line
    quarantine: pl.DataFrame  # source_line, raw, reason
    n_read: int
    n_bytes: int


def _line_chunks(path: Path, max_line_bytes: int) -> Iterator[_Chunk]:
    """Split a (possibly gzipped, possibly truncated) file into chunks of whole lines, each of
    at least BLOCK_BYTES but the last."""
    line_no = 0
    pending = b""
    gathered: list[bytes] = []
    n_gathered = 0
    has_newline = False
    at_start = True
    blocks = read_ahead(_decompressed_blocks(path))
    while True:
        # The last chunk is all that is left: at the end of the file, or where a damaged gzip
        # stops (`truncated_reason`).
        last, truncated_reason = False, None
        try:
            block = next(blocks)
        except StopIteration:
            block, last = b"", True
        except _Truncated as cut:
            block, last, truncated_reason = cut.tail, True, cut.reason
        gathered.append(block)
        n_gathered += len(block)
        has_newline = has_newline or b"\n" in block
        # Never less than a byte-order mark: one split across blocks is still recognised. A
        # line longer than a block is gathered whole before it is joined, not joined again
        # with every block (a one-line JSON export of a gigabyte).
        if not last and (n_gathered < max(BLOCK_BYTES, len(BOM)) or not has_newline):
            continue
        data = b"".join([pending, *gathered])
        gathered, n_gathered, has_newline = [], 0, False
        if at_start and data:
            # A UTF-8 byte-order mark (Windows tools write one) is not part of the first line.
            data, at_start = data.removeprefix(BOM), False
        if not last:
            cut_at = data.rfind(b"\n") + 1
            # A view, not a copy: a block is megabytes.
            pending, data = data[cut_at:], memoryview(data)[:cut_at]
        # The last line may have no newline: still a line (most tools write one, some don't).
        # Where a damaged stream cuts it short, it is quarantined; a cut that falls on a line
        # boundary leaves no partial line: a marker row says so, so a damaged file is never
        # silently shorter.
        cut_mid_line = truncated_reason is not None and data and not data.endswith(b"\n")
        if data:
            chunk = _split_lines(
                data, line_no, max_line_bytes, truncated_reason if cut_mid_line else None
            )
            line_no += chunk.n_read
            yield chunk
        if truncated_reason is not None and not cut_mid_line:
            yield _marker_chunk(line_no + 1, truncated_reason)
        if last:
            return


def _marker_chunk(line_no: int, reason: str) -> _Chunk:
    code, _, detail = reason.partition(": ")
    quarantine = pl.DataFrame(
        {
            "source_line": [line_no],
            "raw": [
                f"<{code.replace('_', ' ')} stream ends here{': ' + detail if detail else ''}>"
            ],
            "reason": [code],
        }
    )
    return _Chunk(
        pl.DataFrame(schema={"source_line": pl.Int64, "line": pl.String}), quarantine, 1, 0
    )


class _Truncated(Exception):
    def __init__(self, tail: bytes, reason: str):
        super().__init__(reason)
        self.tail, self.reason = tail, reason


_END = object()


def read_ahead(items: Generator[T, None, None]) -> Generator[T, None, None]:
    """Yield what `items` yields (and raise what it raises), producing the next item in a
    thread while the consumer works on this one.

    Inflating the next block, or parsing the next batch, overlaps with the work done on this
    one: zlib, file reads, Polars and DuckDB all release the GIL. One item ahead, no more:
    memory holds one extra block or batch. When the consumer stops early, the item under way
    is finished and `items` closed.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journeymap-read-ahead")
    try:
        pending = pool.submit(next, items, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, items, _END)
            yield item
    finally:
        pool.shutdown(wait=True)
        items.close()


def _decompressed_blocks(path: Path) -> Iterator[bytes]:
    """Yield raw bytes, at most BLOCK_BYTES at a time; gzip members are followed to the end of
    the file.

    A gzip cut short raises `_Truncated` carrying what could still be decompressed, so every
    complete line before the cut is kept and only the partial one is quarantined.
    """
    with open(path, "rb") as fh:
        magic = fh.read(2)
        fh.seek(0)
        if magic != GZIP_MAGIC:
            while block := fh.read(BLOCK_BYTES):
                yield block
            return
        decomp = _gzip_inflater()
        compressed = b""
        while True:
            if not compressed:
                compressed = fh.read(GZIP_READ_BYTES)
            if not compressed:
                out = decomp.flush()
                if not decomp.eof:
                    raise _Truncated(out, "truncated_gzip")
                if out:
                    yield out
                return
            try:
                # Bounded output: a highly compressed stretch never inflates in one piece.
                out = decomp.decompress(compressed, BLOCK_BYTES)
            except isal_zlib.error as err:
                # Members inflated before the damaged one are intact: keep their lines.
                raise _Truncated(b"", f"corrupt_gzip: {err}") from err
            compressed = decomp.unconsumed_tail
            if decomp.eof and decomp.unused_data:
                # Multi-member gzip: each member ends the stream; start over on the rest.
                compressed = decomp.unused_data
                decomp = _gzip_inflater()
            if out:
                yield out


def _gzip_inflater():
    """A fresh inflater for one gzip member (or zlib stream: the header is detected).

    ISA-L inflates the same streams as zlib (same API, same errors) in about 40 % of zlib's
    time: inflating was an eighth of reading a gzipped log.
    """
    return isal_zlib.decompressobj(wbits=47)


def _split_lines(
    data: bytes | memoryview, first_line: int, max_line_bytes: int, last_line_reason: str | None
) -> _Chunk:
    """Turn a block of whole lines into a frame of lines, quarantining the unreadable ones."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    ends_with_newline = len(buf) > 0 and buf[-1] == 10
    ends = newlines if ends_with_newline else np.append(newlines, len(buf))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    n = len(ends)
    line_nos = np.arange(first_line + 1, first_line + n + 1, dtype=np.int64)
    # The \r of a CRLF ending is not content: it does not count towards max_line_bytes.
    ends_with_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    lengths = ends - starts - ends_with_cr
    bad_rows: list[tuple[int, str, str]] = []

    # Not UTF-8: find each bad line with C-speed decoding, blank it, quarantine it escaped.
    invalid = _invalid_utf8_lines(data, buf, starts, ends)
    if invalid.size:
        blanked = buf.copy()
        for i in invalid:
            s, e = int(starts[i]), int(ends[i])
            raw = bytes(data[s:e]).rstrip(b"\r").decode("utf-8", "backslashreplace")
            bad_rows.append((int(line_nos[i]), raw[:max_line_bytes], "invalid_utf8"))
            blanked[s:e] = 32
        buf = blanked

    offsets = np.concatenate([starts, [len(buf)]]).astype(np.int64)
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf))
    lines = pl.DataFrame({"source_line": line_nos, "line": pl.from_arrow(arr), "n_bytes": lengths})
    line = pl.col("line").str.strip_suffix("\n")
    # Most logs have no CRLF endings: a second pass over every line only where one does.
    lines = lines.with_columns(line.str.strip_suffix("\r") if ends_with_cr.any() else line)
    if invalid.size:
        keep = np.ones(n, dtype=bool)
        keep[invalid] = False
        lines = lines.filter(pl.Series(keep))

    reason = (
        pl.when(pl.col("n_bytes") > max_line_bytes)
        .then(pl.lit("line_too_long"))
        .when(pl.col("line").str.strip_chars() == "")
        .then(pl.lit("empty_line"))
    )
    if last_line_reason is not None:
        reason = reason.when(pl.col("source_line") == first_line + n).then(
            pl.lit(last_line_reason.split(":")[0])
        )
    lines = lines.with_columns(reason=reason.otherwise(None))
    rejected = lines.filter(pl.col("reason").is_not_null()).select(
        "source_line", raw=pl.col("line").str.slice(0, max_line_bytes), reason="reason"
    )
    if bad_rows:
        rejected = pl.concat(
            [rejected, pl.DataFrame(bad_rows, schema=rejected.schema, orient="row")]
        ).sort("source_line")
    return _Chunk(
        lines.filter(pl.col("reason").is_null()).select("source_line", "line"),
        rejected,
        n,
        len(buf),
    )


UTF8_WINDOW_BYTES = 1 << 20


def _invalid_utf8_lines(
    data: bytes | memoryview, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Indices of the lines holding bytes that are not UTF-8 (usually none).

    Decodes in windows of about 1 MiB ending at a line break: a decode error copies the
    whole input it was given into the exception, so one big decode would cost O(size) per
    bad line.
    """
    if not len(buf) or buf.max() < 0x80:
        return np.empty(0, dtype=np.int64)
    bad: list[int] = []
    view = memoryview(data)
    pos = 0
    size = len(data)
    while pos < size:
        # Window end: the first line end at or after pos + window (or the end of the data).
        i_end = int(np.searchsorted(ends, min(pos + UTF8_WINDOW_BYTES, size), side="left"))
        stop = int(ends[i_end]) + 1 if i_end < len(ends) else size
        try:
            str(view[pos:stop], "utf-8")
            pos = stop
        except UnicodeDecodeError as err:
            i = int(np.searchsorted(ends, pos + err.start, side="left"))
            bad.append(i)
            pos = int(ends[i]) + 1 if i < len(ends) else size
    return np.array(bad, dtype=np.int64)


# Polars reports most damage as errors, but a decoder can panic on garbage (a BaseException).
_UNREADABLE = (Exception, pl.exceptions.PanicException)


def _read_parquet(path: Path, cfg: Config, ingested_at: datetime) -> Iterator[Batch]:
    """Read a Parquet file in record batches, so memory stays bounded by the batch size."""
    yield from _gathered(_parquet_batches(path, cfg, ingested_at))


def _parquet_batches(path: Path, cfg: Config, ingested_at: datetime) -> Iterator[Batch]:
    """Validate a Parquet file PARQUET_VALIDATE_ROWS rows at a time; a damaged file or row
    group ends it with one unreadable_file row.

    Polars reads each slice of rows straight into its own columns (only the row groups it
    overlaps). Through pyarrow's record batches every string column was converted again:
    reading the 10M-row bench export took 5.9 s instead of 1.9 s, with a peak of 700 MB
    instead of 300 MB.
    """
    source = str(path)
    try:
        scan = pl.scan_parquet(path)
        n_rows = scan.select(pl.len()).collect().item()
    except _UNREADABLE as err:
        yield _unreadable(path, err)
        return
    mapping = _mapping(cfg.input)
    for offset in range(0, n_rows, PARQUET_VALIDATE_ROWS):
        try:
            frame = scan.slice(offset, PARQUET_VALIDATE_ROWS).collect()
        except _UNREADABLE as err:
            # A corrupt row group ends the file, visibly; the rows before it are kept.
            yield _unreadable(path, err, offset + 1)
            return
        yield _parquet_batch(frame, offset + 1, mapping, cfg, ingested_at, source)


def _gathered(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Consecutive batches of one file, merged until each holds at least BATCH_ROWS rows read.

    Validated small, handed on large: validating holds several columns per input column at
    once (Parquet in 1M-row record batches: 2.2 GB peak where 250k-row ones take 0.9 GB),
    while each load checks the stored events for duplicates once, so fewer, larger loads cost
    less.
    """
    parts: list[Batch] = []
    n_read = 0
    for batch in batches:
        parts.append(batch)
        n_read += batch.n_read
        if n_read >= BATCH_ROWS:
            yield _merged(parts)
            parts, n_read = [], 0
    if parts:
        yield _merged(parts)


def _merged(parts: list[Batch]) -> Batch:
    """One batch of consecutive batches of one file."""
    if len(parts) == 1:
        return parts[0]
    return Batch(
        parts[0].source,
        parts[0].fmt,
        sum(p.n_read for p in parts),
        pl.concat([p.events for p in parts]),
        pl.concat([p.quarantine for p in parts]),
        pl.concat([p.field_issues for p in parts]),
        sum(p.n_bytes for p in parts),
    )


def _parquet_batch(
    frame: pl.DataFrame,
    first_row: int,
    mapping: dict[str, str],
    cfg: Config,
    ingested_at: datetime,
    source: str,
) -> Batch:
    n = frame.height
    columns = {}
    native_ts = None
    wrong_type: list[pl.Series] = []
    for canonical, source_col in mapping.items():
        if source_col in frame.columns:
            col = frame[source_col]
            if canonical == "ts" and isinstance(col.dtype, pl.Datetime):
                native_ts = col
            if canonical in _NUMERIC_FIELDS and col.dtype.is_numeric():
                # Read as numbers (see `_number`): a round trip through text parses them again.
                columns[canonical] = col
                continue
            text = _as_text(col)
            if text is None:
                # A list or struct where a known field belongs: quarantined, as in NDJSON.
                wrong_type.append(col.is_not_null())
                text = pl.Series(canonical, [None] * n, dtype=pl.String)
            columns[canonical] = text
    table = pl.DataFrame(columns, height=n).with_columns(
        source_line=pl.int_range(first_row, first_row + n, dtype=pl.Int64)
    )
    ts_expr = None
    if native_ts is not None:
        table = table.with_columns(ts_native=native_ts)
        ts_expr = _native_ts(native_ts.dtype, cfg.input.timezone)
    pre_reason = None
    if wrong_type:
        table = table.with_columns(wrong_type=pl.any_horizontal(wrong_type))
        pre_reason = pl.when(pl.col("wrong_type")).then(pl.lit("wrong_json_type"))
    events, quarantine, issues = canonicalize(
        table, cfg, ingested_at, "parquet", ts_expr=ts_expr, pre_reason=pre_reason
    )
    # Only rejected rows need their raw form: a JSON rendering of the original row (bytes as
    # hex: Polars cannot write binary to JSON).
    rows = pl.Series((quarantine["source_line"] - first_row).cast(pl.Int64))
    raw = (
        frame[rows]
        .with_columns(pl.col(pl.Binary).bin.encode("hex"))
        .select(pl.struct(pl.all()).struct.json_encode().alias("raw"))["raw"]
    )
    quarantine = quarantine.with_columns(raw=raw)
    return Batch(
        source,
        "parquet",
        n,
        _with_source(events, source),
        _q(quarantine, source),
        issues.with_columns(source=pl.lit(source)).select(FIELD_ISSUES.columns.keys()),
        0,
    )


_NUMERIC_FIELDS = ("ts", "status", "revenue")


def _as_text(col: pl.Series) -> pl.Series | None:
    """A Parquet column as strings; None when its values have no text form (lists, structs)."""
    if col.dtype == pl.String:
        return col
    if col.dtype.is_nested():
        return None
    try:
        return col.cast(pl.String, strict=False)
    except pl.exceptions.PolarsError:
        if col.dtype == pl.Binary:
            # Bytes that are not UTF-8 (a binary id, say) are read as hex.
            return col.bin.encode("hex")
        return None


def _unreadable(path: Path, err: Exception, row: int = 0) -> Batch:
    quarantine = pl.DataFrame(
        {
            "source_line": [row],
            "raw": [f"<unreadable parquet file: {err}>"[:500]],
            "reason": ["unreadable_file"],
        }
    )
    return Batch(
        str(path), "parquet", 1, _empty_events(), _q(quarantine, str(path)), _no_issues(), 0
    )


def _native_ts(dtype: pl.Datetime, tz: str) -> pl.Expr:
    col = pl.col("ts_native")
    if dtype.time_zone is None:
        col = col.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return col.dt.convert_time_zone("UTC").cast(UTC_US)


# ------------------------------------------------------------------------------ parsing


ACCESS_FIELDS = ("ip", "ident", "user", "clf_ts", "method", "target", "protocol", "status", "bytes")
COMBINED_FIELDS = (*ACCESS_FIELDS, "referrer", "user_agent")
# The pieces of COMBINED_RE between its six quotes, each anchored to the whole piece.
_PREFIX_RE = r"^(\S+) (\S+) (\S+) \[([^\]]+)\] $"
_REQUEST_RE = r"^(\S+) (\S+)(?: (\S+))?$"
_STATUS_RE = r"^ (\d{3}) (\S+) $"
_TRAILING_RE = r"^(?:\s.*)?$"


def access_fields(lines: pl.DataFrame, fmt: str = "combined") -> pl.DataFrame:
    """Split access-log lines into their string fields, all null where a line does not match.

    Combined lines of the usual shape take a fast path that cuts at quotes; every other line
    goes through the full regex, which gives the same fields for the usual shape (see
    `_combined_fields_fast`), so which path a line takes never changes the result.
    """
    if fmt != "combined":
        return _access_fields_exact(lines, fmt)
    fields = _combined_fields_fast(lines)
    rest = fields.filter(~pl.col("is_fast")).select("source_line", "line")
    exact = _access_fields_exact(rest, fmt)
    if exact["ip"].is_null().all():
        # The lines off the fast path match no better whole: their fields stay null, and
        # the lines keep their order. (Sorting every field back into line order cost a
        # twelfth of the parse: the generated logs' malformed lines took this path.)
        return fields.drop("is_fast")
    # Few lines take the exact path: sorting them back in costs less than merge_sorted.
    fast = fields.filter("is_fast").drop("is_fast")
    return pl.concat([fast, exact]).sort("source_line")


def _access_fields_exact(lines: pl.DataFrame, fmt: str) -> pl.DataFrame:
    pattern = COMBINED_RE if fmt == "combined" else COMMON_RE
    names = COMBINED_FIELDS if fmt == "combined" else ACCESS_FIELDS
    # Trailing fields some servers append (request time, upstream) are tolerated.
    return (
        lines.select("source_line", "line")
        .with_columns(pl.col("line").str.extract_groups(pattern + r"(?:\s.*)?$").alias("m"))
        .unnest("m")
        .rename({str(i + 1): name for i, name in enumerate(names)})
    )


def _combined_fields_fast(lines: pl.DataFrame) -> pl.DataFrame:
    """Every line, in order, with `is_fast` and its fields if it has exactly six quotes and no
    backslash and its pieces match (null otherwise).

    A capture-group regex over whole lines is the costliest step of ingest. With exactly six
    quotes, COMBINED_RE can only match with its six literal quotes on them (no other part of
    a match holds a quote), and without a backslash its quoted fields are plain text. The line
    then matches if and only if each piece between quotes matches its piece of the regex, and
    each piece parses one way only, so the fields are those the full regex captures. Matching
    the short unquoted pieces skips the user agent and referrer, the longest part of a line.
    """
    line = pl.col("line")
    pieces = lines.with_columns(q=line.str.split_exact('"', 7)).unnest("q")
    piece = [pl.col(f"field_{i}") for i in range(8)]
    # Each regex once, into a column: fields taken from an expression would rerun it per field.
    pieces = pieces.with_columns(
        prefix=piece[0].str.extract_groups(_PREFIX_RE),
        request=piece[1].str.extract_groups(_REQUEST_RE),
        status=piece[2].str.extract_groups(_STATUS_RE),
    )
    prefix = pl.col("prefix").struct.field
    request = pl.col("request").struct.field
    status = pl.col("status").struct.field
    fields = pieces.select(
        "source_line",
        "line",
        ip=prefix("1"),
        ident=prefix("2"),
        user=prefix("3"),
        clf_ts=prefix("4"),
        method=request("1"),
        target=request("2"),
        protocol=request("3"),
        status=status("1"),
        bytes=status("2"),
        referrer=piece[3],
        user_agent=piece[5],
        is_simple=piece[6].is_not_null()
        & piece[7].is_null()
        & ~line.str.contains("\\", literal=True)
        & (piece[4] == " ")
        & piece[6].str.contains(_TRAILING_RE),
    )
    is_fast = (
        pl.col("is_simple")
        & pl.col("ip").is_not_null()
        & pl.col("method").is_not_null()
        & pl.col("status").is_not_null()
    )
    fields = fields.with_columns(is_fast=is_fast).drop("is_simple")
    names = [c for c in fields.columns if c not in ("source_line", "line", "is_fast")]
    return fields.with_columns(pl.when("is_fast").then(pl.col(c)).alias(c) for c in names)


def parse_access_lines(
    lines: pl.DataFrame, cfg: Config, ingested_at: datetime, fmt: str = "combined"
):
    """Parse Apache/Nginx combined or common log lines (`source_line`, `line`)."""
    parts = access_fields(lines, fmt)
    if fmt != "combined":
        parts = parts.with_columns(
            referrer=pl.lit(None, pl.String), user_agent=pl.lit(None, pl.String)
        )
    # A quoted field holds escapes (\" and \\) only if its line holds a backslash, which
    # lines rarely do: unescaping every referrer and user agent regardless costs about a
    # quarter of the parse after the fields are cut.
    has_escapes = parts["line"].str.contains("\\", literal=True).any()

    def unescaped(field: str) -> pl.Expr:
        col = pl.col(field)
        return col.str.replace_many({r"\"": '"', r"\\": "\\"}) if has_escapes else col

    table = parts.select(
        "source_line",
        raw=pl.col("line"),
        matched=pl.col("ip").is_not_null(),
        target=pl.col("target"),
        visitor_key=pl.concat_str(
            [pl.col("ip"), pl.col("user_agent").fill_null("")], separator="\x1f"
        ),
        user_id=_dash_null(pl.col("user")),
        ts=pl.col("clf_ts"),
        event_type=pl.when(pl.col("method").is_in(["GET", "HEAD"]))
        .then(pl.lit("page_view"))
        .otherwise(pl.col("method").str.to_lowercase()),
        url=pl.col("target"),
        referrer=_dash_null(unescaped("referrer")),
        user_agent=_dash_null(unescaped("user_agent")),
        status=pl.col("status"),
    )
    ts_expr = (
        pl.col("ts")
        .str.strptime(pl.Datetime("us"), CLF_TS_FORMAT, strict=False)
        .dt.convert_time_zone("UTC")
        .cast(UTC_US)
    )
    pre_reason = (
        pl.when(~pl.col("matched"))
        .then(pl.lit("malformed_line"))
        .when(~pl.col("target").str.starts_with("/"))
        .then(pl.lit("bad_target"))
    )
    return canonicalize(table, cfg, ingested_at, fmt, ts_expr=ts_expr, pre_reason=pre_reason)


def parse_ndjson_lines(lines: pl.DataFrame, cfg: Config, ingested_at: datetime):
    """Parse NDJSON events; unknown fields are ignored, wrong types are quarantined."""
    fields = [
        "event_id",
        "anonymous_id",
        "user_id",
        "ts",
        "event_type",
        "url",
        "host",
        "referrer",
        "user_agent",
        "status",
        "revenue",
    ]
    dtype = pl.Struct({f: pl.String for f in fields})
    stripped = lines.with_columns(pl.col("line").str.strip_chars())
    looks_like_object = pl.col("line").str.starts_with("{") & pl.col("line").str.ends_with("}")
    candidates = stripped.filter(looks_like_object)
    # Only a line that starts like a JSON value can be valid JSON that is not an object.
    maybe_json = pl.col("line").str.contains(r'^(\[|"|-|\d|true|false|null)')
    rejected = pl.concat(
        [
            stripped.filter(~looks_like_object & ~maybe_json).select(
                "source_line", raw="line", reason=pl.lit("invalid_json")
            ),
            _classify_json(stripped.filter(~looks_like_object & maybe_json)),
        ]
    )
    decoded_parts: list[pl.DataFrame] = []
    bad_parts: list[pl.DataFrame] = [rejected]
    for offset in range(0, candidates.height, JSON_BATCH_ROWS):
        part = candidates.slice(offset, JSON_BATCH_ROWS)
        ok, bad = _decode_json(part, dtype)
        decoded_parts.append(ok)
        bad_parts.append(bad)
    decoded = (
        pl.concat(decoded_parts)
        if decoded_parts
        else pl.DataFrame(schema={"source_line": pl.Int64, "line": pl.String, "j": dtype})
    )
    table = decoded.select("source_line", raw="line", j="j").unnest("j")
    events, quarantine, issues = canonicalize(table, cfg, ingested_at, "ndjson")
    return events, pl.concat([pl.concat(bad_parts), quarantine]), issues


def _decode_json(part: pl.DataFrame, dtype: pl.Struct) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Decode a batch; on failure split it in halves to isolate the offending lines."""
    try:
        return part.with_columns(j=pl.col("line").str.json_decode(dtype)), _empty_bad()
    except pl.exceptions.PolarsError:
        if part.height == 1:
            return part.with_columns(j=pl.lit(None, dtype)).clear(), _classify_json(part)
    half = part.height // 2
    ok1, bad1 = _decode_json(part.slice(0, half), dtype)
    ok2, bad2 = _decode_json(part.slice(half), dtype)
    return pl.concat([ok1, ok2]), pl.concat([bad1, bad2])


def _classify_json(part: pl.DataFrame) -> pl.DataFrame:
    """Why lines failed to decode (cold path: only lines already rejected)."""
    return pl.DataFrame(
        {
            "source_line": part["source_line"],
            "raw": part["line"],
            "reason": pl.Series([_json_reason(line) for line in part["line"]], dtype=pl.String),
        }
    )


def _json_reason(line: str) -> str:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        # RecursionError: nested too deep for any decoder here; unreadable all the same.
        return "invalid_json"
    return "wrong_json_type" if isinstance(value, dict) else "not_a_json_object"


def parse_csv_lines(lines: pl.DataFrame, header: str, cfg: Config, ingested_at: datetime):
    """Parse CSV records (one per line) against the header; wrong field counts quarantined."""
    sep = cfg.input.csv_separator
    try:
        header_names = pl.read_csv(
            io.StringIO(header + "\n"), separator=sep, has_header=True, n_rows=0
        ).columns
    except pl.exceptions.PolarsError:
        # A stray quote in the header: read its names leniently rather than lose every row.
        names = next(csv.reader([header], delimiter=sep), [])
        header_names = [
            n if n not in names[:i] else f"{n}_duplicated_{i}" for i, n in enumerate(names)
        ]
    n_fields = len(header_names)
    quoted = r'"(?:[^"]|"")*"'
    counted = lines.with_columns(
        n_quotes=pl.col("line").str.count_matches('"', literal=True),
        n_fields=pl.col("line").str.replace_all(quoted, "").str.count_matches(sep, literal=True)
        + 1,
    )
    reason = (
        pl.when(pl.col("n_quotes") % 2 == 1)
        .then(pl.lit("csv_unbalanced_quotes"))
        .when(pl.col("n_fields") != n_fields)
        .then(
            pl.format("csv_field_count: {} fields, header has " + str(n_fields), pl.col("n_fields"))
        )
    )
    counted = counted.with_columns(reason=reason.otherwise(None))
    rejected = counted.filter(pl.col("reason").is_not_null()).select(
        "source_line", raw="line", reason=pl.col("reason").str.replace(r":.*", "")
    )
    good = counted.filter(pl.col("reason").is_null()).select("source_line", "line")
    parsed, good, unparseable = _read_csv_rows(good, header_names, sep)
    mapping = _mapping(cfg.input)
    table = pl.DataFrame(
        {canonical: parsed[col] for canonical, col in mapping.items() if col in parsed.columns}
        or {"_": pl.Series([None] * good.height, dtype=pl.String)}
    ).with_columns(source_line=good["source_line"], raw=good["line"])
    events, quarantine, issues = canonicalize(table, cfg, ingested_at, "csv")
    return events, pl.concat([rejected, unparseable, quarantine]), issues


def _read_csv_rows(
    lines: pl.DataFrame, names: list[str], sep: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Parse lines into string columns; on failure split in halves to isolate the lines Polars
    cannot parse (text after a closing quote), which are malformed_line.

    Returns the parsed columns, the lines they came from, and the rejected lines.
    """
    empty = pl.DataFrame(schema={name: pl.String for name in names})
    if not lines.height:
        return empty, lines, _empty_bad()
    try:
        parsed = pl.read_csv(
            io.StringIO(lines["line"].str.join("\n").item() + "\n"),
            separator=sep,
            infer_schema=False,
            has_header=False,
            new_columns=names,
        )
        if parsed.height == lines.height:
            return parsed, lines, _empty_bad()
    except pl.exceptions.PolarsError:
        pass
    if lines.height == 1:
        bad = lines.select("source_line", raw="line", reason=pl.lit("malformed_line"))
        return empty, lines.clear(), bad
    half = lines.height // 2
    parsed1, ok1, bad1 = _read_csv_rows(lines.slice(0, half), names, sep)
    parsed2, ok2, bad2 = _read_csv_rows(lines.slice(half), names, sep)
    return pl.concat([parsed1, parsed2]), pl.concat([ok1, ok2]), pl.concat([bad1, bad2])


# ------------------------------------------------------------------------- canonicalize


def canonicalize(
    table: pl.DataFrame,
    cfg: Config,
    ingested_at: datetime,
    fmt: str,
    *,
    ts_expr: pl.Expr | None = None,
    pre_reason: pl.When | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Validate and normalise string columns into events; split off the rejected rows.

    `table` holds canonical column names as strings (missing ones are treated as absent),
    plus `source_line` and `raw`.
    """
    present = set(table.columns)
    for col in EVENTS.columns:
        if col not in present and col not in ("source", "source_line"):
            table = table.with_columns(pl.lit(None, pl.String).alias(col))
    if "visitor_key" not in present:
        table = table.with_columns(visitor_key=pl.lit(None, pl.String))
    text = [
        "event_id",
        "anonymous_id",
        "user_id",
        "event_type",
        "url",
        "host",
        "referrer",
        "user_agent",
    ]
    # Numbers are read once into columns of their own: an expression naming another repeats
    # its whole tree, so each use would parse the text again.
    table = table.with_columns(
        *[_blank_null(pl.col(c).cast(pl.String)) for c in text],
        status_num=_number(table, "status"),
        revenue_num=_number(table, "revenue"),
    )
    if ts_expr is None and cfg.input.ts_unit in EPOCH_FACTORS and fmt != "ndjson":
        table = table.with_columns(ts_num=_number(table, "ts"))
        ts_expr = epoch_micros(pl.col("ts_num"), EPOCH_FACTORS[cfg.input.ts_unit])
    elif ts_expr is None:
        ts_expr = parse_timestamp(pl.col("ts").cast(pl.String), cfg.input, fmt)
    status_num, revenue_num = pl.col("status_num"), pl.col("revenue_num")
    table = table.with_columns(
        ts_parsed=ts_expr,
        status_parsed=pl.when(
            (status_num >= 100) & (status_num <= 599) & (status_num == status_num.floor())
        )
        .then(status_num)
        .cast(pl.Int16),
        revenue_parsed=pl.when(revenue_num.is_finite()).then(revenue_num),
        # Schemes are case-insensitive (RFC 3986), as in normalised_urls.
        url_ok=pl.col("url").str.contains(r"^(/|(?i:https?)://)"),
    )
    max_ts = _naive_utc(ingested_at)
    in_range = (pl.col("ts_parsed") >= pl.lit(EARLIEST_TS).dt.replace_time_zone("UTC")) & (
        pl.col("ts_parsed") <= pl.lit(max_ts).dt.replace_time_zone("UTC") + pl.duration(days=1)
    )
    identity = pl.col("anonymous_id").is_null() & pl.col("visitor_key").is_null()
    reason = (
        pre_reason
        if pre_reason is not None
        else pl.when(pl.lit(False)).then(pl.lit(None, pl.String))
    )
    reason = (
        reason.when(identity)
        .then(pl.lit("missing_anonymous_id"))
        .when(pl.col("ts").is_null())
        .then(pl.lit("missing_ts"))
        .when(pl.col("ts_parsed").is_null())
        .then(pl.lit("bad_timestamp"))
        .when(~in_range)
        .then(pl.lit("timestamp_out_of_range"))
        .when(pl.col("event_type").is_null())
        .then(pl.lit("missing_event_type"))
        .when(pl.col("url").is_null())
        .then(pl.lit("missing_url"))
        .when(~pl.col("url_ok"))
        .then(pl.lit("bad_url"))
        .otherwise(None)
    )
    table = table.with_columns(reason=reason)
    raw = pl.col("raw") if "raw" in present else pl.lit(None, pl.String)
    rejected = table.filter(pl.col("reason").is_not_null()).select(
        "source_line", raw.str.slice(0, cfg.input.max_line_bytes).alias("raw"), "reason"
    )
    good = table.filter(pl.col("reason").is_null())
    issues = (
        good.select(
            status=(pl.col("status").is_not_null() & pl.col("status_parsed").is_null()).sum(),
            revenue=(pl.col("revenue").is_not_null() & pl.col("revenue_parsed").is_null()).sum(),
        )
        .unpivot(variable_name="field", value_name="n_rows")
        .filter(pl.col("n_rows") > 0)
    )
    issues = issues.with_columns(
        source=pl.lit(None, pl.String), n_rows=pl.col("n_rows").cast(pl.Int64)
    )
    # URLs and referrers repeat heavily (a catalogue, not a per-event value): normalise each
    # distinct one once and join the result back.
    scrub = cfg.privacy.scrub_query_params
    urls = normalised_urls(good.select(pl.col("url").alias("raw_url")).unique(), scrub)
    urls = urls.with_columns(
        utm_source=query_param(pl.col("clean_url"), "utm_source"),
        utm_medium=query_param(pl.col("clean_url"), "utm_medium"),
        utm_campaign=query_param(pl.col("clean_url"), "utm_campaign"),
    )
    referrers = good.select(pl.col("referrer").alias("raw_referrer")).unique().drop_nulls()
    referrers = referrers.with_columns(
        clean_referrer=scrub_query(pl.col("raw_referrer").str.replace(r"#.*$", ""), scrub)
    )
    events = (
        good.drop("utm_source", "utm_medium", "utm_campaign", strict=False)
        .join(urls, left_on="url", right_on="raw_url", how="left", maintain_order="left")
        .join(
            referrers,
            left_on="referrer",
            right_on="raw_referrer",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            ts=pl.col("ts_parsed"),
            status=pl.col("status_parsed"),
            revenue=pl.col("revenue_parsed"),
            host=pl.coalesce(pl.col("url_host"), pl.col("host").str.to_lowercase()),
            url=pl.col("clean_url"),
            referrer=pl.col("clean_referrer"),
        )
    )
    out = conform(events.lazy(), EVENTS).collect().with_columns(visitor_key=events["visitor_key"])
    return out, rejected, issues


def parse_timestamp(col: pl.Expr, cfg: InputConfig, fmt: str) -> pl.Expr:
    """String timestamps to UTC, by `input.ts_unit`: iso, s, ms, us or a strftime format.

    NDJSON is ISO-8601 by contract, but numeric epochs are accepted there when `ts_unit` says so.
    A naive timestamp is read in `input.timezone`; one that does not exist there (a DST gap)
    or in the calendar (Feb 30) becomes null and is quarantined.
    """
    unit = cfg.ts_unit
    if unit in EPOCH_FACTORS:
        epoch = parse_epoch(col, EPOCH_FACTORS[unit])
        return epoch if fmt != "ndjson" else pl.coalesce(parse_iso(col, cfg.timezone), epoch)
    if unit != "iso":
        parsed = col.str.strptime(pl.Datetime("us"), unit, strict=False)
        if "%z" in unit or "%:z" in unit:
            return parsed.dt.convert_time_zone("UTC").cast(UTC_US)
        return _localise(parsed, cfg.timezone)
    return parse_iso(col, cfg.timezone)


EPOCH_FACTORS = {"s": 1_000_000, "ms": 1_000, "us": 1}


def parse_epoch(col: pl.Expr, factor: int) -> pl.Expr:
    return epoch_micros(col.str.strip_chars().cast(pl.Float64, strict=False), factor)


def epoch_micros(value: pl.Expr, factor: int) -> pl.Expr:
    """Epoch numbers (Float64) in units of `factor` microseconds to UTC; out of range: null."""
    micros = pl.when(value.is_finite() & (value.abs() < 1e17 / factor)).then(
        (value * factor).round()
    )
    return pl.from_epoch(micros.cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC")


_ISO_RE = (
    r"^\s*(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


def parse_iso(col: pl.Expr, tz: str) -> pl.Expr:
    """ISO-8601 with or without an offset (`Z`, `+02:00`, `+0200`, `-05`) to UTC."""
    g = col.str.extract_groups(_ISO_RE)
    f = g.struct.field
    frac = f("7").fill_null("0").str.pad_end(6, "0").str.slice(0, 6)
    canonical = pl.format(
        "{}-{}-{}T{}:{}:{}.{}", f("1"), f("2"), f("3"), f("4"), f("5"), f("6").fill_null("00"), frac
    )
    naive = canonical.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S%.f", strict=False)
    offset = f("8")
    digits = offset.str.replace_all(":", "")
    sign = pl.when(digits.str.starts_with("-")).then(-1).otherwise(1)
    hours = digits.str.slice(1, 2).cast(pl.Int64, strict=False)
    minutes = digits.str.slice(3, 2).cast(pl.Int64, strict=False).fill_null(0)
    # An offset is less than a day (hours 00-23, minutes 00-59); "+25:00" is no time zone.
    offset_s = (
        pl.when(offset.str.to_uppercase() == "Z")
        .then(0)
        .when((hours <= 23) & (minutes <= 59))
        .then(sign * (hours * 3600 + minutes * 60))
    )
    with_offset = (naive - pl.duration(seconds=offset_s)).dt.replace_time_zone("UTC")
    return (
        pl.when(offset.is_not_null()).then(with_offset).otherwise(_localise(naive, tz)).cast(UTC_US)
    )


def _localise(naive: pl.Expr, tz: str) -> pl.Expr:
    return (
        naive.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
        .cast(UTC_US)
    )


# ------------------------------------------------------------------------------- URLs

_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def _percent_table() -> dict[str, str]:
    """Escapes safe to decode: unreserved ASCII and two-byte UTF-8 for U+00A0..U+00FF.

    Reserved characters (`/ ? # & = + %`) and anything else stay encoded, so decoding
    never changes what a URL means and never produces invalid text.
    """
    table: dict[str, str] = {}
    for ch in _UNRESERVED:
        code = f"{ord(ch):02X}"
        for variant in {code, code.lower()}:
            table[f"%{variant}"] = ch
    for cp in range(0xA0, 0x100):
        b1, b2 = chr(cp).encode("utf-8")
        for h1 in {f"{b1:02X}", f"{b1:02x}"}:
            for h2 in {f"{b2:02X}", f"{b2:02x}"}:
                table[f"%{h1}%{h2}"] = chr(cp)
    return table


_PERCENT = _percent_table()


def normalised_urls(urls: pl.DataFrame, scrub: tuple[str, ...]) -> pl.DataFrame:
    """`raw_url` split into `url_host` (lower-cased, null for a bare path) and `clean_url`
    (path + query): the fragment dropped, safe escapes decoded, personal query params scrubbed.

    One `with_columns` per step: an expression naming an earlier one repeats its whole tree
    (without common-subexpression elimination each use evaluates it again), 7x the work here.
    """
    url = pl.col("raw_url")
    parts = urls.with_columns(no_fragment=url.str.replace(r"#.*$", "")).with_columns(
        parts=pl.col("no_fragment").str.extract_groups(r"^(?i:https?)://([^/?#]*)(.*)$")
    )
    host = pl.col("parts").struct.field("1")
    parts = parts.with_columns(
        url_host=host.str.to_lowercase().str.replace(r"^[^@]*@", "").str.replace(r":(80|443)$", ""),
        path=pl.when(host.is_not_null())
        .then(pl.col("parts").struct.field("2"))
        .otherwise(pl.col("no_fragment")),
    )
    path = pl.col("path")
    parts = parts.with_columns(
        url_host=pl.when(pl.col("url_host") != "").then(pl.col("url_host")),
        path=pl.when(path.str.starts_with("/")).then(path).otherwise(pl.lit("/") + path),
    )
    decoded = (
        pl.when(path.str.contains("%", literal=True))
        .then(path.str.replace_many(list(_PERCENT), list(_PERCENT.values())))
        .otherwise(path)
    )
    return parts.with_columns(path=decoded).select(
        pl.exclude("no_fragment", "parts", "path"), clean_url=scrub_query(path, scrub)
    )


def scrub_query(col: pl.Expr, scrub: tuple[str, ...]) -> pl.Expr:
    """Remove query parameters that carry personal data (names matched case-insensitively)."""
    if not scrub:
        return col
    names = "|".join(pl.escape_regex(s) for s in scrub)
    pattern = rf"(?i)([?&])(?:{names})(?:=[^&]*)?(&|$)"
    # A match consumes the `&` after it, which is the `&` the next parameter needs: in a run
    # of personal parameters one pass removes every other one, so a second pass is needed.
    cleaned = col.str.replace_all(pattern, "$1$2").str.replace_all(pattern, "$1$2")
    # Removing a parameter leaves stray separators: "?&b=1", "a=1&&b", "/p?".
    return (
        cleaned.str.replace_all(r"\?&+", "?")
        .str.replace_all(r"&&+", "&")
        .str.replace(r"[?&]+$", "")
    )


def query_param(col: pl.Expr, name: str) -> pl.Expr:
    value = col.str.extract(rf"[?&]{pl.escape_regex(name)}=([^&]*)", 1)
    return pl.when(value != "").then(
        value.str.replace_all("+", " ", literal=True).str.to_lowercase()
    )


# ------------------------------------------------------------------------------ helpers


def _mapping(cfg: InputConfig) -> dict[str, str]:
    import dataclasses

    return {f.name: getattr(cfg.columns, f.name) for f in dataclasses.fields(cfg.columns)}


def _naive_utc(moment: datetime) -> datetime:
    """A naive datetime in UTC (a naive input is taken to be UTC already)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _blank_null(col: pl.Expr) -> pl.Expr:
    name = col.meta.output_name()
    return col.str.strip_chars().replace("", None).alias(name)


def _number(table: pl.DataFrame, name: str) -> pl.Expr:
    """A column as Float64: numbers as they are, text parsed (null where it is no number)."""
    col = pl.col(name)
    if table.schema[name].is_numeric():
        return col.cast(pl.Float64)
    return col.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _dash_null(col: pl.Expr) -> pl.Expr:
    return pl.when((col != "-") & (col != "")).then(col)


def _with_source(events: pl.DataFrame, source: str) -> pl.DataFrame:
    return events.with_columns(source=pl.lit(source))


def _q(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    return frame.select(
        source=pl.lit(source),
        source_line=pl.col("source_line").cast(pl.Int64),
        raw=pl.col("raw").cast(pl.String),
        reason=pl.col("reason").cast(pl.String),
    ).select(QUARANTINE.columns.keys())


def _empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema={**EVENTS.columns, "visitor_key": pl.String})


def _empty_bad() -> pl.DataFrame:
    return pl.DataFrame(schema={"source_line": pl.Int64, "raw": pl.String, "reason": pl.String})


def _no_issues() -> pl.DataFrame:
    return pl.DataFrame(schema=FIELD_ISSUES.columns)
