"""The `journeymap` command line: wires the stages together, owns progress and exit codes.

Exit codes: 0 the run completed (quarantined rows are not failures); 2 unusable usage
(missing file, unknown format, bad config); 3 the database cannot be opened or written;
4 an internal error (a bug: please report it with the log).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline import __version__, funnels, graph, ingest, journeys, sessionize, store, touchpoints
from pipeline import config as config_mod
from pipeline.config import Config, load_config
from pipeline.errors import InputRejectedError, JourneymapError, SqlError, UsageError

EXIT_INTERNAL = 4
FORMAT_CHOICES = ("auto", *ingest.ALL_FORMATS)


@dataclass
class RunSummary:
    """What a run did, for the closing summary and for tests."""

    run_id: int
    files: list[store.FileCounts] = field(default_factory=list)
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    nulled_fields: dict[str, int] = field(default_factory=dict)
    n_persons: int = 0
    n_sessions: int = 0
    n_bot_sessions: int = 0
    n_converted_sessions: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    mode: str | None = None
    refresh_reason: str = ""
    n_late_events: int = 0
    n_persons_refreshed: int = 0

    @property
    def n_read(self) -> int:
        return sum(f.n_read for f in self.files)

    @property
    def n_accepted(self) -> int:
        return sum(f.n_accepted for f in self.files)

    @property
    def n_duplicates(self) -> int:
        return sum(f.n_duplicates for f in self.files)

    @property
    def n_quarantined(self) -> int:
        return sum(f.n_quarantined for f in self.files)


class _NoProgress:
    def update(self, *args, **kwargs) -> None:
        pass

    def event(self, name: str, **fields) -> None:
        pass


def run_pipeline(
    inputs: list[str | Path],
    db: str | Path,
    cfg: Config,
    fmt: str | None = None,
    progress=None,
    now: datetime | None = None,
    *,
    full_refresh: bool = False,
) -> RunSummary:
    """Load `inputs` into `db` and refresh the marts for what changed; publish atomically.

    The run works on a private copy of the database (see `store`) and publishes it with one
    rename, so readers never see half a run and a killed run leaves the previous state.
    Within the work file it commits batch by batch and partition by partition: DuckDB would
    otherwise hold the whole run's uncommitted rows in memory. A run that fails publishes
    only its `raw.runs` record (status `failed`); one that quarantines
    more than `input.max_quarantined_share` publishes its record and its quarantined rows
    (status `rejected`).
    `progress` receives `update(stage, done_bytes, total_bytes, rows)` and
    `event(name, **fields)` calls.
    """
    progress = progress or _NoProgress()
    fmt = fmt or cfg.input.format
    if fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMAT_CHOICES)}")
    paths = ingest.discover_inputs(inputs)
    started_at = now or datetime.now(UTC)
    ingested_at = started_at.astimezone(UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    workspace = store.open_workspace(db)
    try:
        copy_s = time.perf_counter() - t0
        con = store.connect_work(workspace)
        failure = None
        try:
            store.ensure_schema(con)
            summary = RunSummary(store.next_run_id(con))
            summary.stage_seconds["copy"] = copy_s
            progress.event("run_started", run_id=summary.run_id, db=str(db), inputs=len(paths))
            try:
                _load(con, paths, cfg, fmt, summary, progress, ingested_at)
                _refresh_marts(con, cfg, summary, progress, full_refresh)
                _record(con, summary, "ok", started_at, paths)
            except InputRejectedError as err:
                # The rejected rows stay for inspection; none of the run's events load.
                store.drop_run_events(con, summary.run_id)
                summary.status = "rejected"
                _record(con, summary, summary.status, started_at, paths, error=err)
                failure = err
            except BaseException as err:
                summary.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                failure = err
        finally:
            store.close(con)
        if summary.status in ("failed", "interrupted"):
            # The work file holds part of the run (it commits batch by batch and partition
            # by partition, so memory stays bounded): start again from the published state
            # and publish only the record of the failure.
            store.reset_workspace(workspace)
            con = store.connect_work(workspace)
            try:
                store.ensure_schema(con)
                _record(con, summary, summary.status, started_at, paths, error=failure)
            finally:
                store.close(con)
        t0 = time.perf_counter()
        progress.update("publish", 1, 1, summary.n_read)
        store.publish(workspace)
        summary.stage_seconds["publish"] = time.perf_counter() - t0
        if failure is not None:
            raise failure
        return summary
    finally:
        store.release_workspace(workspace)


def _record(con, summary: RunSummary, status: str, started_at, paths, error=None) -> None:
    store.record_run(
        con,
        run_id=summary.run_id,
        started_at=started_at,
        status=status,
        version=__version__,
        inputs=[str(p) for p in paths],
        files=summary.files,
        quarantined_by_reason=summary.quarantined_by_reason,
        nulled_fields=summary.nulled_fields,
        n_persons=summary.n_persons if status == "ok" else None,
        n_sessions=summary.n_sessions if status == "ok" else None,
        n_bot_sessions=summary.n_bot_sessions if status == "ok" else None,
        stage_seconds=summary.stage_seconds,
        error=None if error is None else f"{type(error).__name__}: {error}"[:2000],
        mode=summary.mode,
        n_late_events=summary.n_late_events,
        n_persons_refreshed=summary.n_persons_refreshed,
    )


def _load(con, paths, cfg, fmt, summary, progress, ingested_at) -> None:
    """Ingest every file batch by batch into raw.events / raw.quarantine of the work file."""
    total_bytes = sum(p.stat().st_size for p in paths)
    done_bytes = 0
    rows = 0
    reasons: Counter[str] = Counter()
    nulled: Counter[str] = Counter()
    read_s = load_s = 0.0
    progress.update("ingest", 0, total_bytes, 0)
    for path in paths:
        file_fmt = fmt if fmt != "auto" else ingest.detect_format(path)
        stats = {
            "format": file_fmt,
            "n_bytes": path.stat().st_size,
            "n_read": 0,
            "n_accepted": 0,
            "n_duplicates": 0,
            "n_quarantined": 0,
        }
        # The next batch is read and validated in a thread while DuckDB stores this one; the
        # ingest stage counts only the time spent waiting for it.
        with contextlib.closing(
            ingest.read_ahead(ingest.read_file(path, file_fmt, cfg, ingested_at))
        ) as reader:
            while True:
                t_read = time.perf_counter()
                batch = next(reader, None)
                t_load = time.perf_counter()
                read_s += t_load - t_read
                if batch is None:
                    break
                n_accepted, n_duplicates = store.stage_batch(
                    con, batch.events, batch.quarantine, summary.run_id, ingested_at
                )
                load_s += time.perf_counter() - t_load
                stats["n_read"] += batch.n_read
                stats["n_accepted"] += n_accepted
                stats["n_duplicates"] += n_duplicates
                stats["n_quarantined"] += batch.quarantine.height
                reasons.update(dict(batch.quarantine["reason"].value_counts().iter_rows()))
                for fld, n_rows in batch.field_issues.select("field", "n_rows").iter_rows():
                    nulled[fld] += n_rows
                rows += batch.n_read
                progress.update("ingest", done_bytes, total_bytes, rows)
                progress.event("batch_loaded", source=str(path), rows=batch.n_read)
        done_bytes += stats["n_bytes"]
        progress.update("ingest", done_bytes, total_bytes, rows)
        counts = store.FileCounts(source=str(path), **stats)
        summary.files.append(counts)
        progress.event("file_loaded", **{k: v for k, v in vars(counts).items()})
    summary.stage_seconds["ingest"] = read_s
    summary.stage_seconds["load"] = load_s
    summary.quarantined_by_reason = dict(reasons.most_common())
    summary.nulled_fields = dict(nulled)
    for f in summary.files:
        if f.n_read != f.n_accepted + f.n_duplicates + f.n_quarantined:
            raise RuntimeError(
                f"row accounting broken for {f.source}: read {f.n_read} != accepted {f.n_accepted}"
                f" + duplicates {f.n_duplicates} + quarantined {f.n_quarantined}"
            )
    limit = cfg.input.max_quarantined_share
    if summary.n_read and summary.n_quarantined / summary.n_read > limit:
        top = ", ".join(f"{r} {n:,}" for r, n in list(summary.quarantined_by_reason.items())[:3])
        raise InputRejectedError(
            f"{summary.n_quarantined / summary.n_read:.1%} of {summary.n_read:,} rows read were "
            f"quarantined ({top}), above input.max_quarantined_share = {limit:g}: nothing was "
            "loaded; fix the input or its config (see `journeymap status`), or raise the limit"
        )


def _refresh_marts(con, cfg: Config, summary: RunSummary, progress, full_refresh: bool) -> None:
    """Re-sessionise the persons this run's events touch (or everyone) and refresh the marts."""
    fingerprint = config_mod.marts_fingerprint(cfg)
    stored = store.setting(con, "marts_fingerprint")
    if full_refresh:
        summary.mode, summary.refresh_reason = "full", "--full-refresh"
    elif stored is None:
        summary.mode, summary.refresh_reason = "full", "first run"
    elif stored != fingerprint:
        summary.mode = "full"
        summary.refresh_reason = "session, bot, step, conversion or touchpoint settings changed"
    else:
        summary.mode, summary.refresh_reason = "incremental", ""
    progress.event("refresh_planned", mode=summary.mode, reason=summary.refresh_reason)
    store.set_setting(con, "marts_fingerprint", fingerprint)
    summary.n_late_events = store.count_late_events(con, summary.run_id, cfg.sessions.late_days)
    if summary.n_late_events:
        progress.event(
            "late_events", n_events=summary.n_late_events, late_days=cfg.sessions.late_days
        )
    incremental = summary.mode == "incremental"

    t0 = time.perf_counter()
    progress.update("sessionise", 1, 1, summary.n_read)
    if incremental:
        summary.n_persons_refreshed = store.scope_refresh(con, summary.run_id)
    if not incremental or summary.n_persons_refreshed:
        n_persons, pieces = _sessionise_in_partitions(con, cfg, summary, progress, incremental)
        if not incremental:
            summary.n_persons_refreshed = n_persons
        summary.stage_seconds["sessionise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress.update("journeys", 0, 1, summary.n_read)
        if incremental:
            # The marts cover every stored journey, not only the refreshed ones.
            pieces = _journey_pieces(con, cfg, summary, progress)
        store.replace_journey_marts(con, journey_marts(pieces))
        summary.stage_seconds["journeys"] = time.perf_counter() - t0
    # Nothing new (a day loaded again): the marts already hold the answer.

    t0 = time.perf_counter()
    progress.update("store", 1, 1, summary.n_read)
    store.create_views(con)
    counts = store.mart_counts(con, exclude_bots=cfg.bots.exclude_from_journeys)
    summary.n_sessions = counts["n_sessions"]
    summary.n_bot_sessions = counts["n_bot_sessions"]
    summary.n_persons = counts["n_persons"]
    summary.n_converted_sessions = counts["n_converted_sessions"]
    summary.stage_seconds["store"] = time.perf_counter() - t0


def _sessionise_in_partitions(con, cfg: Config, summary: RunSummary, progress, incremental):
    """Replace the sessions in scope, sessionising at most about `sessions.partition_events`
    events at a time; returns the number of persons sessionised and the journey mart pieces
    of the new sessions (a full refresh needs no other: they are all the journeys).

    Partitions hold whole device groups, and so whole persons (`sessionize.device_groups`):
    stitching, bot flags and sessions come out as in one pass, with a fraction of the memory.
    """
    n_events = store.count_events_in_scope(con, refresh_only=incremental)
    n_parts = max(1, -(-n_events // cfg.sessions.partition_events))
    persons = store.refresh_persons(con).implode() if incremental else None
    store.delete_sessions(con, refresh_only=incremental)
    n_persons, pieces = 0, []
    with (
        _partition_reader(con, n_parts, incremental) as read_partition,
        _one_write_ahead(con) as write,
    ):
        for part in range(n_parts):
            progress.update("sessionise", part, n_parts, summary.n_read)
            progress.event("partition_started", stage="sessionise", part=part + 1, n_parts=n_parts)
            sessions, steps = sessionize.sessionize(read_partition(part), cfg)
            if incremental:
                # Devices in scope may also belong to persons that need no refresh.
                sessions = sessions.filter(pl.col("person_id").is_in(persons))
                steps = steps.join(sessions.select("session_id"), on="session_id", how="semi")
            n_persons += sessions["person_id"].n_unique()
            sessions, steps, journey_steps = journeys.map_journeys(sessions, steps, cfg)
            write(store.insert_sessions, sessions, steps, journey_steps)
            if not incremental:
                counted = journeys.journey_sessions(sessions, cfg)
                pieces = journeys.add_piece(pieces, journeys.mart_pieces(journey_steps, counted))
    return n_persons, (None if incremental else journeys.merge_weighted(pieces))


@contextlib.contextmanager
def _one_write_ahead(con):
    """A function that stores a partition on a second connection, in a thread, while the
    next partition is computed; it first waits for the write before, so at most one is
    pending (one partition's frames of extra memory). All writes are done, and any of their
    errors raised, when the block ends.

    DuckDB's inserts release the interpreter and Polars' work leaves a core idle part of the
    time: the two overlap instead of taking turns.
    """
    cursor = con.cursor()
    pending: Future | None = None

    def write(store_fn: Callable, *frames: pl.DataFrame) -> None:
        nonlocal pending
        if pending is not None:
            pending.result()
        pending = pool.submit(store_fn, cursor, *frames)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="journeymap-store") as pool:
            yield write
            if pending is not None:
                pending.result()
    finally:
        cursor.close()


# From this many partitions on, the events in scope are dealt into files in one scan: each
# partition read from the database scans every stored event (at 10M events, 5 scans cost
# less than the copy).
SPILL_PARTITIONS = 8


@contextlib.contextmanager
def _partition_reader(con, n_parts: int, incremental: bool):
    """A function from a partition's number to its events: whole device groups, and so whole
    persons, in each (see `sessionize.device_groups`)."""
    if n_parts == 1:
        yield lambda part: store.read_events(con, refresh_only=incremental)
        return
    groups = sessionize.device_groups(store.device_users(con, refresh_only=incremental))
    if n_parts < SPILL_PARTITIONS:
        store.plan_partitions(con, groups, n_parts, refresh_only=incremental)
        yield lambda part: store.read_events(con, refresh_only=incremental, part=part)
        return
    folder = store.spill_folder(con)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        store.write_partitions(con, folder, groups, n_parts, refresh_only=incremental)
        yield lambda part: store.read_partition(folder, part)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _journey_pieces(con, cfg: Config, summary: RunSummary, progress) -> journeys.MartPieces:
    """The mart pieces of every stored journey, read at most about `sessions.partition_events`
    journey steps at a time: a session's contribution to every mart is its own, so partitions
    of whole sessions (by a hash of the session id) add up to the whole."""
    n_steps = store.count_journey_steps(con)
    n_parts = max(1, -(-n_steps // cfg.sessions.partition_events))
    pieces = []
    for part in range(n_parts):
        progress.update("journeys", part, n_parts, summary.n_read)
        progress.event("partition_started", stage="journeys", part=part + 1, n_parts=n_parts)
        steps, sessions = store.read_journeys(
            con, exclude_bots=cfg.bots.exclude_from_journeys, part=part, n_parts=n_parts
        )
        pieces = journeys.add_piece(pieces, journeys.mart_pieces(steps, sessions))
    return journeys.merge_weighted(pieces)


def journey_marts(pieces: journeys.MartPieces) -> dict[str, pl.DataFrame]:
    """Transitions, graph metrics, paths and blockers from the pieces of every journey."""
    marts = journeys.marts_from_pieces(pieces)
    metrics = graph.touchpoint_metrics(graph.build_transition_graph(marts["transitions"]))
    metrics = (
        metrics.rename({"exit_rate": "exit_rate_per_visit"})
        .join(marts.pop("stages"), on="touchpoint", how="left")
        .join(marts.pop("exit_rates"), on="touchpoint", how="left")
    )
    return {**marts, "touchpoints": metrics}


# ---------------------------------------------------------------------------------- CLI


class _RichProgress:
    """Progress on stderr: bytes read, rows so far, and the current stage."""

    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("[bold]{task.description:<11}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[rows]:>12,} rows"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task("ingest", total=1, rows=0)

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def update(self, stage: str, done: int, total: int, rows: int) -> None:
        self._progress.update(
            self._task, description=stage, completed=done, total=max(total, 1), rows=rows
        )


class _JsonLog:
    """One JSON object per line on stderr, for log collectors (`--log-format json`)."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stderr
        self._stage: str | None = None

    def update(self, stage: str, done: int, total: int, rows: int) -> None:
        if stage != self._stage:
            self._stage = stage
            self.event("stage_started", stage=stage, rows_read=rows)

    def event(self, name: str, level: str = "info", **fields) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level}
        record.update(event=name, **fields)
        self._stream.write(json.dumps(record, default=str) + "\n")
        self._stream.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="journeymap")
def cli() -> None:
    """journeymap: customer journeys from raw web logs.

    Ingest access logs, NDJSON events, CSV and Parquet exports; sessionise them; store
    sessions in one DuckDB file for reports and ad-hoc SQL.
    """


@cli.command()
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A log file or a directory of them (plain or .gz). Repeat for several. "
    "Optional with --full-refresh.",
)
@click.option(
    "--db",
    required=True,
    type=click.Path(path_type=Path),
    help="DuckDB database file to create or update.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="journeymap.toml with input mapping, session, bot and conversion rules.",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    metavar="[" + "|".join(FORMAT_CHOICES) + "]",
    help="Input format for every file; default: input.format from the config (auto-detect).",
)
@click.option("--quiet", is_flag=True, help="No progress bar and no summary; errors only.")
@click.option(
    "--full-refresh",
    is_flag=True,
    help="Rebuild every session and mart from all stored events, not just what changed.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line on stderr (stages, files, summary, errors).",
)
def run(
    inputs: tuple[Path, ...],
    db: Path,
    config_path: Path | None,
    fmt: str | None,
    quiet: bool,
    full_refresh: bool,
    log_format: str,
) -> None:
    """Load INPUT files into --db and refresh the marts for what changed (see `status`)."""
    if not inputs and not full_refresh:
        raise UsageError(
            "missing option --input: give a log file or a directory of them, or --full-refresh "
            "to rebuild the marts from the stored events (see `journeymap run --help`)"
        )
    if log_format == "json":
        _run_with_json_log(list(inputs), db, config_path, fmt, full_refresh)
        return
    cfg = load_config(config_path)
    _check_format(fmt)
    err_console = Console(stderr=True)
    started = time.perf_counter()
    if quiet or not err_console.is_terminal:
        summary = run_pipeline(list(inputs), db, cfg, fmt, full_refresh=full_refresh)
    else:
        with _RichProgress(err_console) as progress:
            summary = run_pipeline(list(inputs), db, cfg, fmt, progress, full_refresh=full_refresh)
    if not quiet:
        _print_summary(summary, db, time.perf_counter() - started, cfg)


def _check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown --format {fmt!r}: use one of {', '.join(FORMAT_CHOICES)}")


def _run_with_json_log(inputs, db, config_path, fmt, full_refresh) -> None:
    """`run` for log collectors: every outcome, errors included, is a JSON line on stderr;
    the exit code is the same as in text mode."""
    log = _JsonLog()
    started = time.perf_counter()
    try:
        cfg = load_config(config_path)
        _check_format(fmt)
        summary = run_pipeline(inputs, db, cfg, fmt, log, full_refresh=full_refresh)
    except JourneymapError as err:
        log.event("run_failed", level="error", exit_code=err.exit_code, message=str(err))
        raise click.exceptions.Exit(err.exit_code) from err
    except Exception as err:  # noqa: BLE001 - reported as a log line, like main() does
        log.event(
            "run_failed", level="error", exit_code=EXIT_INTERNAL, message=_internal_error(err)
        )
        raise click.exceptions.Exit(EXIT_INTERNAL) from err
    log.event(
        "run_finished",
        run_id=summary.run_id,
        db=str(db),
        mode=summary.mode,
        refresh_reason=summary.refresh_reason,
        n_read=summary.n_read,
        n_accepted=summary.n_accepted,
        n_duplicates=summary.n_duplicates,
        n_quarantined=summary.n_quarantined,
        quarantined_by_reason=summary.quarantined_by_reason,
        n_late_events=summary.n_late_events,
        n_persons_refreshed=summary.n_persons_refreshed,
        n_sessions=summary.n_sessions,
        n_bot_sessions=summary.n_bot_sessions,
        n_converted_sessions=summary.n_converted_sessions,
        stage_seconds={k: round(v, 3) for k, v in summary.stage_seconds.items()},
        seconds=round(time.perf_counter() - started, 3),
    )


def _print_summary(s: RunSummary, db: Path, seconds: float, cfg: Config) -> None:
    console = Console(highlight=False)
    console.print(f"journeymap run {s.run_id} into {db}")
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    if s.mode == "full":
        table.add_row("refresh", f"full ({s.refresh_reason})")
    else:
        table.add_row("refresh", f"incremental: {s.n_persons_refreshed:,} persons recomputed")
    table.add_row("rows read", f"{s.n_read:,}")
    table.add_row("accepted", f"{s.n_accepted:,}")
    table.add_row("duplicates", f"{s.n_duplicates:,}")
    table.add_row("quarantined", f"{s.n_quarantined:,}")
    for reason, n in s.quarantined_by_reason.items():
        table.add_row(f"  {reason}", f"{n:,}")
    for fld, n in s.nulled_fields.items():
        table.add_row(f"nulled {fld} (wrong type)", f"{n:,}")
    table.add_row("persons", f"{s.n_persons:,}")
    table.add_row("sessions (human)", f"{s.n_sessions - s.n_bot_sessions:,}")
    table.add_row("  converted", f"{s.n_converted_sessions:,}")
    table.add_row("bot sessions", f"{s.n_bot_sessions:,}")
    table.add_row("files", f"{len(s.files):,}")
    table.add_row("seconds", f"{seconds:.1f}")
    console.print(table)
    if s.n_late_events:
        console.print(
            f"{s.n_late_events:,} events were more than sessions.late_days = "
            f"{cfg.sessions.late_days} days older than the newest stored event: they are in "
            "their sessions now, and figures of past days have changed."
        )
    if s.n_quarantined:
        console.print(
            "Rejected rows are kept as read (IPs masked) in raw.quarantine; "
            "counts per file and reason in the view marts.quarantine_by_reason."
        )


@cli.command()
@click.option(
    "--events",
    "n_events",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Number of events to simulate.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write the sample into.",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Random seed: same seed, same bytes."
)
@click.option(
    "--scheme",
    type=click.Choice(["en", "nl"]),
    default="en",
    show_default=True,
    help="URL scheme of the simulated shop.",
)
@click.option(
    "--problem",
    "problems",
    multiple=True,
    type=click.Choice(["payment_5xx", "cart_loop", "search_dead_end", "none"]),
    help="Planted conversion blocker; repeat for several (default: all three; 'none' for none).",
)
@click.option(
    "--conversion",
    type=click.Choice(["url", "event"]),
    default="url",
    show_default=True,
    help="Conversion marked by an order-confirmation URL or by a purchase event.",
)
def sample(
    n_events: int, out_dir: Path, seed: int, scheme: str, problems: tuple[str, ...], conversion: str
) -> None:
    """Write a deterministic e-commerce clickstream in every input format."""
    from pipeline import sample as sample_mod

    chosen = sample_mod.ALL_PROBLEMS if not problems else tuple(p for p in problems if p != "none")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create --out directory {out_dir}: {err.strerror}") from err
    manifest = sample_mod.write_sample(
        out_dir, n_events, seed=seed, url_scheme=scheme, problems=chosen, conversion=conversion
    )
    console = Console(highlight=False)
    size = sum(p.stat().st_size for p in manifest.files)
    console.print(f"wrote {len(manifest.files)} files ({size / 1e6:.2f} MB) to {out_dir}:")
    for p in manifest.files:
        console.print(f"  {p.name}")
    console.print(
        f"{manifest.n_events:,} events, {manifest.n_duplicates:,} duplicate and "
        f"{manifest.n_malformed:,} malformed rows; planted: "
        + (", ".join(p.kind for p in manifest.problems) or "none")
    )
    console.print(
        f"next: journeymap run --input {out_dir} --config {out_dir / 'journeymap.toml'} --db data/out/journeymap.duckdb"
    )


@contextlib.contextmanager
def _reading(db: Path, required: str):
    """A read-only connection to a database that has `required` (a table or view)."""
    con = store.connect(db, read_only=True)
    try:
        if not store.has_table(con, required):
            raise UsageError(
                f"{db} has no {required} yet: run `journeymap run --db {db} --input ...` first"
            )
        yield con
    finally:
        con.close()


def _read_mart(db: Path, sql: str, mart: str, params: list | None = None) -> pl.DataFrame:
    with _reading(db, mart) as con:
        return store.query(con, sql, params)


def _emit(frame: pl.DataFrame, fmt: str, title: str, columns: dict[str, str]) -> None:
    """Print a result as a readable table, CSV or JSON (for scripts)."""
    if fmt == "csv":
        click.echo(frame.write_csv(), nl=False)
        return
    if fmt == "json":
        click.echo(frame.write_json())
        return
    console = _wide_console()
    table = Table(title=title, title_justify="left")
    for name, header in columns.items():
        numeric = frame.schema[name].is_numeric()
        table.add_column(header, justify="right" if numeric else "left", overflow="fold")
    for row in frame.select(list(columns)).iter_rows():
        table.add_row(*[_cell(v) for v in row])
    console.print(table)


def _wide_console() -> Console:
    """A terminal keeps its own width; piped output (logs, mail) gets room for evidence text."""
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal else 160)


def _cell(value) -> Text:
    # Text, not str: rich reads "[...]" in a plain string as markup, and data (URLs, paths,
    # segment values) may contain brackets.
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:,.1f}")
    if isinstance(value, int):
        return Text(f"{value:,}")
    return Text(str(value))


_OUTPUT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output as a table for people, or CSV/JSON for scripts.",
)
_DB = click.option(
    "--db",
    required=True,
    type=click.Path(path_type=Path),
    help="The DuckDB database a `journeymap run` filled.",
)


@cli.command()
@_DB
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many blockers to show.",
)
@_OUTPUT
def blockers(db: Path, top: int, fmt: str) -> None:
    """Rank conversion blockers by the conversions they cost, with their evidence."""
    frame = _read_mart(
        db,
        "select rank, touchpoint, segment, kind, lost_conversions, evidence "
        "from marts.blockers order by rank limit ?",
        "marts.blockers",
        [top],
    )
    if frame.is_empty() and fmt == "table":
        click.echo("No blockers: no touchpoint or segment loses conversions beyond chance.")
        return
    _emit(
        frame,
        fmt,
        f"Top {top} conversion blockers (lost conversions: a cautious estimate)",
        {
            "rank": "#",
            "touchpoint": "touchpoint",
            "segment": "segment",
            "kind": "kind",
            "lost_conversions": "lost conv.",
            "evidence": "evidence",
        },
    )


@cli.command()
@_DB
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="Paths per outcome."
)
@click.option(
    "--outcome",
    type=click.Choice(["converted", "abandoned", "both"]),
    default="both",
    show_default=True,
    help="Converting paths, abandoning paths, or both.",
)
@click.option(
    "--folded", is_flag=True, help="Fold loops: each touchpoint counted at its first visit."
)
@_OUTPUT
def paths(db: Path, top: int, outcome: str, folded: bool, fmt: str) -> None:
    """The most frequent converting and abandoning paths through the touchpoints."""
    outcomes = ["converted", "abandoned"] if outcome == "both" else [outcome]
    frame = _read_mart(
        db,
        "select outcome, rank, path, n_sessions, share * 100 as pct, median_seconds_to_convert "
        "from marts.paths where variant = ? and rank <= ? and list_contains(?, outcome) "
        "order by outcome desc, rank",
        "marts.paths",
        ["folded" if folded else "exact", top, outcomes],
    )
    _emit(
        frame,
        fmt,
        f"Top {top} paths per outcome" + (" (loops folded)" if folded else ""),
        {
            "outcome": "outcome",
            "rank": "#",
            "path": "path",
            "n_sessions": "sessions",
            "pct": "% of outcome",
            "median_seconds_to_convert": "median s to convert",
        },
    )


@cli.group(name="touchpoints")
def touchpoints_group() -> None:
    """Inspect how steps map to touchpoints."""


@touchpoints_group.command(name="suggest")
@_DB
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="journeymap.toml whose [[touchpoints]] rules count as already in place.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="How many URL templates to list.",
)
@_OUTPUT
def touchpoints_suggest(db: Path, config_path: Path | None, top: int, fmt: str) -> None:
    """Propose [[touchpoints]] rules from the URL variety in --db (templates by traffic share)."""
    cfg = load_config(config_path)
    steps = _read_mart(
        db,
        "select st.url, st.event_type, st.status from marts.session_steps as st "
        "join marts.sessions as se using (session_id) where not se.is_bot",
        "marts.session_steps",
    )
    suggestions = touchpoints.suggest_rules(
        steps.lazy(), top, rules=touchpoints.effective_rules(cfg)
    )
    if fmt != "table":
        _emit(suggestions, fmt, "", {c: c for c in suggestions.columns})
        return
    _emit(
        suggestions.with_columns(pct=pl.col("share") * 100),
        fmt,
        f"Top {top} URL templates by steps (matched_by: the rule that already names them)",
        {
            "template": "template",
            "n_steps": "steps",
            "pct": "% of steps",
            "n_distinct_urls": "distinct URLs",
            "matched_by": "matched by",
            "suggested_name": "suggested name",
        },
    )
    unmatched = suggestions.filter(pl.col("matched_by").is_null())
    if unmatched.height:
        click.echo("\n# Rules for the templates no rule names yet; paste into journeymap.toml:\n")
        click.echo("\n\n".join(unmatched["suggested_toml"].to_list()))


@cli.command(name="graph")
@_DB
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="File to write: .graphml (Gephi, yEd, Cytoscape) or .json (networkx node-link).",
)
def graph_export(db: Path, out: Path) -> None:
    """Export the touchpoint transition graph with counts, probabilities and intervals."""
    if out.suffix.lower() not in (".graphml", ".json"):
        raise UsageError(f"--out {out} must end in .graphml or .json")
    transitions = _read_mart(db, "select * from marts.transitions", "marts.transitions")
    digraph = graph.build_transition_graph(transitions)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".graphml":
            graph.export_graphml(digraph, out)
        else:
            graph.export_json(digraph, out)
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror}") from err
    click.echo(f"wrote {out}: {digraph.number_of_nodes()} nodes, {digraph.number_of_edges()} edges")


@cli.command(name="status")
@_DB
@click.option(
    "--runs",
    "n_runs",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many of the latest runs to list.",
)
@_OUTPUT
def status_command(db: Path, n_runs: int, fmt: str) -> None:
    """What --db holds and how its latest runs went (status, counts, seconds, errors)."""
    writer = store.running_writer(db)
    with _reading(db, "raw.runs") as con:
        overview = store.database_overview(con)
        runs = store.run_history(con, n_runs)
    overview["run_in_progress"] = writer
    if fmt == "json":
        click.echo(json.dumps({**overview, "runs": runs.to_dicts()}, default=str))
        return
    if fmt == "csv":
        click.echo(runs.write_csv(), nl=False)
        return
    console = _wide_console()
    console.print(f"[bold]{db}[/bold]", highlight=False)
    facts = Table(show_header=False, box=None)
    facts.add_column("what")
    facts.add_column("value")
    facts.add_row("run in progress", writer or "no")
    facts.add_row("events stored", f"{overview['n_events']:,}")
    facts.add_row("events from", f"{overview['first_event_at']} to {overview['last_event_at']}")
    facts.add_row("sessions", f"{overview['n_sessions']:,} ({overview['n_bot_sessions']:,} bots)")
    facts.add_row("quarantined rows", f"{overview['n_quarantined']:,}")
    console.print(facts)
    _emit(
        runs.with_columns(
            pl.col("started_at").dt.strftime("%Y-%m-%d %H:%M:%S"),
            pl.col("error").str.slice(0, 120),
        ),
        "table",
        "Latest runs (newest first)",
        {
            "run_id": "run",
            "started_at": "started (UTC)",
            "seconds": "seconds",
            "status": "status",
            "mode": "refresh",
            "n_read": "read",
            "n_accepted": "accepted",
            "n_duplicates": "dupl.",
            "n_quarantined": "quar.",
            "n_late_events": "late",
            "n_persons_refreshed": "persons recomputed",
            "error": "error",
        },
    )


@cli.command(name="report")
@_DB
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="HTML file to write (self-contained, works offline; its directory is created).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="journeymap.toml whose [report] table sets the Sankey steps, anchor and funnel.",
)
@click.option(
    "--png",
    "png_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write each chart as a PNG into this directory (needs kaleido and a Chromium).",
)
def report_command(db: Path, out: Path, config_path: Path | None, png_dir: Path | None) -> None:
    """Write a self-contained HTML report: KPIs, data quality, Sankeys, funnel, blockers, paths."""
    from pipeline import report as report_mod

    cfg = load_config(config_path)
    with _reading(db, "marts.journey_steps") as con:
        frames = {name: store.query(con, sql) for name, sql in funnels.REPORT_INPUTS.items()}
    try:
        path = report_mod.render_report(frames, cfg, out, source=str(db))
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror}") from err
    click.echo(f"wrote {path}")
    if png_dir:
        for png in report_mod.export_png(report_mod.build_figures(frames, cfg), png_dir):
            click.echo(f"wrote {png}")


# ---------------------------------------------------------------------------------- sql

SQL_PROMPT = "journeymap> "
SQL_CONTINUATION = "       ...> "
SQL_HELP = """\
End each statement with `;`; it may span lines. Ctrl-C clears it, Ctrl-D leaves.
  .tables         every table, view and macro (schema.name and kind)
  .schema NAME    the columns and types of a table or view, e.g. .schema marts.sessions
  .help           this text
  .quit, .exit    leave
The database is opened read-only: select, describe, summarize, explain, temp tables and
copy (select ...) to 'file.csv' work; insert, create and drop do not."""


class SqlSession:
    """One read-only connection to `db` and how results are printed: a table of the first
    `max_rows` rows, or every row as CSV or JSON, handed to `write` as text."""

    def __init__(self, con, db: Path, fmt: str, max_rows: int, write: Callable[[str], None]):
        self.con = con
        self.db = db
        self.fmt = fmt
        self.max_rows = max_rows
        self.write = write

    def run(self, text: str) -> bool:
        """Run a dot-command or SQL statements; False once the command was `.quit`."""
        if text.lstrip().startswith("."):
            return self.command(text.strip())
        self.execute(text)
        return True

    def execute(self, script: str) -> None:
        """Run the statements of `script` in order and print each result; the first error
        stops it with a one-line `UsageError` saying what to do."""
        statements: list[str] = []
        n_done = 0
        cap = self.max_rows if self.fmt == "table" else None
        try:
            statements = store.sql_statements(self.con, script)
            for sql in statements:
                result = store.run_sql(self.con, sql, cap)
                if result.frame is not None:
                    self.show(result.frame, result.n_rows)
                elif self.fmt == "table":
                    changed = f" ({_n_rows(result.n_rows)})" if result.n_rows else ""
                    self.write(f"ok{changed}\n")
                n_done += 1
        except SqlError as err:
            where = f"statement {n_done + 1}: " if len(statements) > 1 else ""
            raise UsageError(where + self._with_hint(err)) from err

    def command(self, line: str) -> bool:
        """A dot-command: `.tables`, `.schema NAME`, `.help`, `.quit`; False for `.quit`."""
        name, _, arg = line.rstrip(";").partition(" ")
        arg = arg.strip().strip('"')
        if name in (".quit", ".exit"):
            return False
        if name == ".help":
            self.write(SQL_HELP + "\n")
        elif name == ".tables":
            objects = store.list_objects(self.con)
            self.show(objects, objects.height)
        elif name == ".schema":
            if not arg:
                raise UsageError("`.schema` needs a name, e.g. `.schema marts.sessions`")
            columns = store.describe_object(self.con, arg)
            if columns.is_empty():
                raise UsageError(f"no table or view named {arg}: `.tables` lists them")
            names = columns["name"].unique(maintain_order=True).to_list()
            if len(names) == 1:
                self.show(columns.drop("name"), columns.height, title=names[0])
            else:
                self.show(columns, columns.height)
        else:
            raise UsageError(f"unknown command {name}: `.help` lists the commands")
        return True

    def show(self, frame: pl.DataFrame, n_rows: int, title: str | None = None) -> None:
        """Print `frame`, the first rows of a result of `n_rows` rows."""
        if self.fmt == "csv":
            self.write(_flat(frame, nested_as_json=True).write_csv())
            return
        if self.fmt == "json":
            self.write(_flat(frame, nested_as_json=False).write_json() + "\n")
            return
        if not n_rows:
            self.write(f"(no rows; columns: {', '.join(frame.columns)})\n")
            return
        console = _wide_console()
        with console.capture() as capture:
            console.print(_sql_table(frame, title, console.width))
        self.write(capture.get())
        if n_rows > frame.height:
            self.write(
                f"… {n_rows - frame.height:,} more rows ({_n_rows(n_rows)} in all): raise "
                "--max-rows, or use --format csv for every row\n"
            )

    def _with_hint(self, err: SqlError) -> str:
        if err.kind == "read_only":
            return (
                f"{err} (`journeymap run` is its only writer); keep a result with "
                "`--format csv > FILE`, `copy (select ...) to 'FILE'` or a temp table"
            )
        if err.kind == "catalog" and err.missing:
            close = _close_names(err.missing, store.list_objects(self.con)["name"].to_list())
            guess = f"; did you mean {' or '.join(close)}?" if close else ""
            return f"{err}{guess} (see `journeymap sql --db {self.db}`, then `.tables`)"
        if err.kind == "binder":
            return f"{err}; `.schema TABLE` lists a table's columns"
        return str(err)


def _n_rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n:,} rows"


def _close_names(missing: str, names: list[str]) -> list[str]:
    """Up to three `names` that look like `missing`, whether it has its schema or not."""
    by_key: dict[str, list[str]] = {}
    for name in names:
        for key in (name.lower(), name.rsplit(".", 1)[-1].lower()):
            by_key.setdefault(key, []).append(name)
    # A bare name that exists in some schema is the usual slip: suggest just that.
    exact = missing.lower() in by_key
    close = (
        [missing.lower()]
        if exact
        else difflib.get_close_matches(missing.lower(), list(by_key), n=3, cutoff=0.75)
    )
    return list(dict.fromkeys(name for key in close for name in by_key[key]))[:3]


def _sql_table(frame: pl.DataFrame, title: str | None, width: int) -> Table:
    """Values as text, never as rich markup (URLs and user agents come from the web); NULL
    stays distinct from an empty string. A result too wide for `width` is shown one row
    after the other, a line per column (like psql's expanded display), instead of every
    cell folded into a column of fragments."""
    rows = [
        [Text("NULL", style="dim") if v is None else Text(str(v)) for v in row]
        for row in frame.iter_rows()
    ]
    natural = sum(
        3 + max([len(name)] + [min(len(row[i]), 40) for row in rows])
        for i, name in enumerate(frame.columns)
    )
    table = Table(title=Text(title) if title else None, title_justify="left")
    if natural <= width:
        for name, dtype in frame.schema.items():
            justify = "right" if dtype.is_numeric() else "left"
            table.add_column(Text(name), justify=justify, overflow="fold")
        for row in rows:
            table.add_row(*row)
        return table
    table.add_column("column")
    table.add_column("value", overflow="fold")
    for number, row in enumerate(rows, 1):
        table.add_row(Text(f"row {number}", style="bold"), "")
        for name, value in zip(frame.columns, row, strict=True):
            table.add_row(Text(name), value)
        table.add_section()
    return table


def _flat(frame: pl.DataFrame, nested_as_json: bool) -> pl.DataFrame:
    """Columns CSV or JSON cannot hold as they are: bytes become hex; for CSV, lists and
    structs become their JSON text."""
    columns = []
    for name, dtype in frame.schema.items():
        column = frame[name]
        if dtype == pl.Binary:
            column = column.bin.encode("hex")
        elif nested_as_json and dtype.is_nested():
            text = [None if v is None else json.dumps(v, default=str) for v in column.to_list()]
            column = pl.Series(name, text, dtype=pl.String)
        columns.append(column)
    return pl.DataFrame(columns)


def sql_prompt(
    session: SqlSession,
    read_line: Callable[[str], str],
    write_error: Callable[[str], None],
    *,
    interactive: bool,
) -> None:
    """Read SQL and dot-commands line by line and run them, until `.quit` or the input ends.

    A statement may span lines; it runs once a line ends with `;` (a script's last statement
    may lack it). `read_line(prompt)` behaves like `input()`: EOFError when the input ends,
    KeyboardInterrupt on Ctrl-C, which drops the statement being typed. At the prompt
    (`interactive`) an error prints one line and the prompt carries on; in a script the first
    error stops it with a `UsageError` naming its line.
    """
    buffer: list[str] = []
    line_number = first_line = 0

    def attempt(text: str) -> bool:
        try:
            return session.run(text)
        except JourneymapError as err:
            if not interactive:
                raise UsageError(f"line {first_line}: {err}") from err
            write_error(f"error: {err}")
        except KeyboardInterrupt:
            if not interactive:
                raise
            write_error("interrupted")
        return True

    while True:
        try:
            line = read_line(SQL_CONTINUATION if buffer else SQL_PROMPT)
        except EOFError:
            if interactive:
                session.write("\n")
            break
        except KeyboardInterrupt:
            buffer.clear()
            session.write("\n")
            continue
        line_number += 1
        if not buffer:
            if not line.strip():
                continue
            first_line = line_number
            if line.lstrip().startswith("."):
                if not attempt(line):
                    return
                continue
        buffer.append(line)
        if line.rstrip().endswith(";"):
            script = "\n".join(buffer)
            buffer.clear()
            attempt(script)
    if buffer and not interactive:
        attempt("\n".join(buffer))


def _line_reader(text: str) -> Callable[[str], str]:
    """`input()` over a script: its lines one by one, then EOFError."""
    lines = iter(text.splitlines())

    def read_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return read_line


@cli.command(name="sql")
@_DB
@click.argument("query", required=False)
@_OUTPUT
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Rows a table shows; the rest are counted (CSV and JSON print every row).",
)
def sql_command(db: Path, query: str | None, fmt: str, max_rows: int) -> None:
    """Query --db with SQL, read-only: QUERY, statements on stdin (`-`), or a prompt.

    Without QUERY: a `journeymap>` prompt on a terminal (`.help` lists its commands), else the
    statements piped into stdin, one after another.
    """
    con = store.connect(db, read_only=True)
    try:
        session = SqlSession(con, db, fmt, max_rows, write=lambda text: click.echo(text, nl=False))
        if query is not None and query != "-":
            if not query.strip():
                raise UsageError("QUERY is empty: give a statement, e.g. 'select 42'")
            session.run(query)
        elif query is None and sys.stdin.isatty():
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401 - line editing and history for input()
            session.write(
                f"journeymap sql on {db} (read-only). End statements with `;`; `.help` lists "
                "the commands, `.quit` or Ctrl-D leaves.\n"
            )
            sql_prompt(session, input, _echo_error, interactive=True)
        else:
            script = sys.stdin.read()
            if not script.strip():
                raise UsageError(
                    "no SQL on stdin: give a QUERY, pipe statements in, or run "
                    f"`journeymap sql --db {db}` in a terminal for a prompt"
                )
            sql_prompt(session, _line_reader(script), _echo_error, interactive=False)
    finally:
        con.close()


def _echo_error(text: str) -> None:
    click.echo(text, err=True)


def _internal_error(exc: BaseException) -> str:
    """A bug in one line: the exception's type and the first line of its message."""
    first_line = next(iter(str(exc).splitlines()), "")
    return f"internal error: {type(exc).__name__}: {first_line}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, never a traceback for a user's mistake."""
    try:
        # Without standalone mode click returns the code of a `click.exceptions.Exit`.
        code = cli.main(args=argv, prog_name="journeymap", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("journeymap: aborted", err=True)
        return 130
    except click.UsageError as exc:
        # `journeymap` alone (click >= 8.2): the usage is the message, not an error to wrap.
        if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
            click.echo(exc.format_message(), err=True)
            return 2
        command = exc.ctx.command_path if exc.ctx else "journeymap"
        click.echo(f"journeymap: error: {exc.format_message()} (see `{command} --help`)", err=True)
        return 2
    except JourneymapError as exc:
        click.echo(f"journeymap: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("journeymap: interrupted; the database is unchanged", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: a bug, reported in one line
        click.echo(
            f"journeymap: {_internal_error(exc)} (the database is unchanged; please report this)",
            err=True,
        )
        return EXIT_INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
