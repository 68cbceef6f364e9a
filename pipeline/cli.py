"""The `journeymap` command line: wires the stages together, owns progress and exit codes.

Exit codes: 0 the run completed (quarantined rows are not failures); 2 unusable usage
(missing file, unknown format, bad config); 3 the database cannot be opened or written;
4 an internal error (a bug: please report it with the log).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import click
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline import __version__, funnels, graph, ingest, journeys, sessionize, store, touchpoints
from pipeline.config import Config, load_config
from pipeline.errors import JourneymapError, UsageError

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


def run_pipeline(
    inputs: list[str | Path],
    db: str | Path,
    cfg: Config,
    fmt: str | None = None,
    progress=None,
    now: datetime | None = None,
) -> RunSummary:
    """Ingest `inputs` into `db`, re-sessionise, refresh the marts: one transaction.

    `progress` receives `update(stage, done_bytes, total_bytes, rows)` calls.
    """
    progress = progress or _NoProgress()
    fmt = fmt or cfg.input.format
    if fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMAT_CHOICES)}")
    paths = ingest.discover_inputs(inputs)
    started_at = now or datetime.now(UTC)
    ingested_at = started_at.astimezone(UTC).replace(tzinfo=None)
    con = store.connect(db)
    try:
        store.ensure_schema(con)
        run_id = store.next_run_id(con)
        summary = RunSummary(run_id)
        try:
            _load_and_sessionize(con, paths, cfg, fmt, summary, progress, started_at, ingested_at)
        except BaseException as err:
            store.rollback(con)
            # The failed run is recorded in its own transaction, so the next run can see it.
            store.record_run(
                con,
                run_id=run_id,
                started_at=started_at,
                status="failed",
                version=__version__,
                inputs=[str(p) for p in paths],
                error=f"{type(err).__name__}: {err}"[:2000],
            )
            raise
        return summary
    finally:
        con.close()


def _load_and_sessionize(con, paths, cfg, fmt, summary, progress, started_at, ingested_at):
    total_bytes = sum(p.stat().st_size for p in paths)
    done_bytes = 0
    rows = 0
    reasons: Counter[str] = Counter()
    nulled: Counter[str] = Counter()
    read_s = load_s = 0.0
    store.begin_load(con)
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
        reader = ingest.read_file(path, file_fmt, cfg, ingested_at)
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
            nulled.update(dict(batch.field_issues.select("field", "n_rows").iter_rows()))
            rows += batch.n_read
            progress.update("ingest", done_bytes, total_bytes, rows)
        done_bytes += stats["n_bytes"]
        progress.update("ingest", done_bytes, total_bytes, rows)
        summary.files.append(store.FileCounts(source=str(path), **stats))
    summary.stage_seconds["ingest"] = read_s
    summary.stage_seconds["load"] = load_s
    for f in summary.files:
        if f.n_read != f.n_accepted + f.n_duplicates + f.n_quarantined:
            raise RuntimeError(
                f"row accounting broken for {f.source}: read {f.n_read} != accepted {f.n_accepted}"
                f" + duplicates {f.n_duplicates} + quarantined {f.n_quarantined}"
            )
    summary.quarantined_by_reason = dict(reasons.most_common())
    summary.nulled_fields = dict(nulled)

    t0 = time.perf_counter()
    progress.update("sessionise", done_bytes, total_bytes, rows)
    sessions, steps = sessionize.sessionize(store.read_events(con), cfg)
    summary.stage_seconds["sessionise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress.update("journeys", done_bytes, total_bytes, rows)
    sessions, steps, marts = build_journeys(sessions, steps, cfg)
    summary.stage_seconds["journeys"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress.update("store", done_bytes, total_bytes, rows)
    store.replace_marts(con, sessions, steps)
    store.replace_journey_marts(con, marts)
    store.create_views(con)
    human = sessions.filter(~pl.col("is_bot"))
    journeys = human if cfg.bots.exclude_from_journeys else sessions
    summary.n_sessions = sessions.height
    summary.n_bot_sessions = sessions.height - human.height
    summary.n_persons = journeys["person_id"].n_unique()
    summary.n_converted_sessions = int(journeys["is_converted"].sum())
    summary.stage_seconds["store"] = time.perf_counter() - t0
    store.record_run(
        con,
        run_id=summary.run_id,
        started_at=started_at,
        status="ok",
        version=__version__,
        inputs=[str(p) for p in paths],
        files=summary.files,
        quarantined_by_reason=summary.quarantined_by_reason,
        nulled_fields=summary.nulled_fields,
        n_persons=summary.n_persons,
        n_sessions=summary.n_sessions,
        n_bot_sessions=summary.n_bot_sessions,
        stage_seconds=summary.stage_seconds,
    )
    store.commit(con)


def build_journeys(
    sessions: pl.DataFrame, steps: pl.DataFrame, cfg: Config
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """Touchpoints, transitions, graph metrics, paths and blockers from sessionised steps.

    Returns sessions and steps again because `conversion.touchpoint` can mark more steps as
    conversions once touchpoints are known; every mart then uses the same definition.
    """
    rules = touchpoints.effective_rules(cfg)
    mapped = touchpoints.assign_touchpoints(
        steps.lazy(), rules, conversion_touchpoint=cfg.conversion.touchpoint
    ).collect()
    if cfg.conversion.touchpoint:
        steps = steps.with_columns(is_conversion=mapped["is_conversion"])
        converted = mapped.group_by("session_id").agg(by_touchpoint=pl.col("is_conversion").any())
        sessions = (
            sessions.join(converted, on="session_id", how="left")
            .with_columns(
                is_converted=pl.col("is_converted") | pl.col("by_touchpoint").fill_null(False)
            )
            .drop("by_touchpoint")
        )
    journey_sessions = (
        sessions.filter(~pl.col("is_bot")) if cfg.bots.exclude_from_journeys else sessions
    )
    mapped = mapped.join(journey_sessions.select("session_id"), on="session_id")
    journey_steps = journeys.collapse_repeats(mapped.lazy()).collect()
    edges = journeys.journey_edges(journey_steps.lazy(), journey_sessions.lazy()).collect()
    transitions = journeys.count_transitions(edges.lazy()).collect()
    metrics = graph.touchpoint_metrics(graph.build_transition_graph(transitions))
    stages = journey_steps.group_by("touchpoint").agg(stage=pl.col("stage").first())
    exits = journeys.touchpoint_exit_rates(journey_steps.lazy(), journey_sessions.lazy()).collect()
    metrics = (
        metrics.rename({"exit_rate": "exit_rate_per_visit"})
        .join(stages, on="touchpoint", how="left")
        .join(exits, on="touchpoint", how="left")
    )
    paths = journeys.session_paths(journey_steps.lazy(), journey_sessions.lazy())
    marts = {
        "journey_steps": journey_steps,
        "transitions": transitions,
        "transitions_by_segment": journeys.transitions_by_segment(edges.lazy()).collect(),
        "touchpoints": metrics,
        "paths": journeys.top_paths(paths).collect(),
        "path_lengths": journeys.path_lengths(paths).collect(),
        "blockers": journeys.find_blockers(journey_steps.lazy(), journey_sessions.lazy()),
    }
    return sessions, steps, marts


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
    required=True,
    type=click.Path(path_type=Path),
    help="A log file or a directory of them (plain or .gz). Repeat for several.",
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
def run(
    inputs: tuple[Path, ...], db: Path, config_path: Path | None, fmt: str | None, quiet: bool
) -> None:
    """Ingest INPUT files into --db, sessionise them and refresh the marts."""
    cfg = load_config(config_path)
    if fmt is not None and fmt not in FORMAT_CHOICES:
        raise UsageError(f"unknown --format {fmt!r}: use one of {', '.join(FORMAT_CHOICES)}")
    err_console = Console(stderr=True)
    started = time.perf_counter()
    if quiet or not err_console.is_terminal:
        summary = run_pipeline(list(inputs), db, cfg, fmt)
    else:
        with _RichProgress(err_console) as progress:
            summary = run_pipeline(list(inputs), db, cfg, fmt, progress)
    if not quiet:
        _print_summary(summary, db, time.perf_counter() - started)


def _print_summary(s: RunSummary, db: Path, seconds: float) -> None:
    console = Console(highlight=False)
    console.print(f"journeymap run {s.run_id} into {db}")
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
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


def _read_mart(db: Path, sql: str, mart: str, params: list | None = None) -> pl.DataFrame:
    con = store.connect(db, read_only=True)
    try:
        if not store.has_table(con, mart):
            raise UsageError(
                f"{db} has no {mart} yet: run `journeymap run --db {db} --input ...` first"
            )
        return store.query(con, sql, params)
    finally:
        con.close()


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


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


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
    con = store.connect(db, read_only=True)
    try:
        if not store.has_table(con, "marts.journey_steps"):
            raise UsageError(
                f"{db} has no marts.journey_steps yet: run `journeymap run --db {db} --input ...` first"
            )
        frames = {name: store.query(con, sql) for name, sql in funnels.REPORT_INPUTS.items()}
    finally:
        con.close()
    try:
        path = report_mod.render_report(frames, cfg, out, source=str(db))
    except OSError as err:
        raise UsageError(f"cannot write --out {out}: {err.strerror}") from err
    click.echo(f"wrote {path}")
    if png_dir:
        for png in report_mod.export_png(report_mod.build_figures(frames, cfg), png_dir):
            click.echo(f"wrote {png}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, never a traceback for a user's mistake."""
    try:
        cli.main(args=argv, prog_name="journeymap", standalone_mode=False)
        return 0
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
        first_line = next(iter(str(exc).splitlines()), "")
        click.echo(
            f"journeymap: internal error: {type(exc).__name__}: {first_line} "
            "(the database is unchanged; please report this)",
            err=True,
        )
        return EXIT_INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
