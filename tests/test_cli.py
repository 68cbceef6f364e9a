"""The `journeymap` command line, in-process: `CliRunner` against `cli`, and `main(argv)`, which
maps errors to exit codes and one-line messages (what the installed script runs).

Counts in the expected summaries are worked out by hand from the log lines below.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys

import click
import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

import pipeline
from pipeline import __version__, sessionize, store
from pipeline import cli as cli_module
from pipeline.cli import FORMAT_CHOICES, cli, main

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0"


def _line(ip: str, ts: str, target: str, agent: str = FIREFOX, status: int = 200) -> str:
    return f'{ip} - - [{ts} +0000] "GET {target} HTTP/1.1" {status} 512 "-" "{agent}"'


# 7 lines read: 5 accepted (1, 2, 3, 6, 7), 1 duplicate (4 repeats 1), 1 quarantined (5).
# Steps: 1.1.1.1 has /, /products, /checkout/success (the .js is not a step) within 20 minutes:
# one human session, converted. 2.2.2.2 is curl: one bot session.
ACCESS_LOG = (
    "\n".join(
        [
            _line("1.1.1.1", "05/Mar/2024:10:00:00", "/"),
            _line("1.1.1.1", "05/Mar/2024:10:00:01", "/static/app.js"),
            _line("1.1.1.1", "05/Mar/2024:10:05:00", "/products?page=2"),
            _line("1.1.1.1", "05/Mar/2024:10:00:00", "/"),
            "this is not a log line",
            _line("2.2.2.2", "05/Mar/2024:10:10:00", "/", agent="curl/8.4.0"),
            _line("1.1.1.1", "05/Mar/2024:10:20:00", "/checkout/success"),
        ]
    )
    + "\n"
)


@pytest.fixture
def access_log(tmp_path):
    path = tmp_path / "access.log"
    path.write_text(ACCESS_LOG, encoding="utf-8")
    return path


def count_in(summary: str, label: str) -> int:
    """The number on the summary row labelled `label` (table borders are skipped)."""
    match = re.search(rf"^\W*{re.escape(label)}\W+([\d,]+)\W*$", summary, re.MULTILINE)
    assert match, f"no row {label!r} in:\n{summary}"
    return int(match.group(1).replace(",", ""))


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str) -> str:
    """stderr is exactly one `journeymap: error: ...` line, with no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("journeymap: error: ")
    return lines[0]


# ------------------------------------------------------------------------------------- run


def test_run_summarises_read_accepted_duplicates_and_quarantined(access_log, tmp_path):
    """`run` exits 0 and its summary counts 7 read, 5 accepted, 1 duplicate, 1 quarantined."""
    db = tmp_path / "out" / "journeymap.duckdb"
    result = CliRunner().invoke(cli, ["run", "--input", str(access_log), "--db", str(db)])
    assert result.exit_code == 0, result.output
    counts = {
        label: count_in(result.stdout, label)
        for label in ("rows read", "accepted", "duplicates", "quarantined", "malformed_line")
    }
    assert counts == {
        "rows read": 7,
        "accepted": 5,
        "duplicates": 1,
        "quarantined": 1,
        "malformed_line": 1,
    }
    assert count_in(result.stdout, "sessions (human)") == 1
    assert count_in(result.stdout, "converted") == 1
    assert count_in(result.stdout, "bot sessions") == 1


def test_run_stores_what_the_summary_reports(access_log, tmp_path):
    """The database holds the 5 accepted events, the 1 quarantined line and 2 sessions."""
    db = tmp_path / "journeymap.duckdb"
    result = CliRunner().invoke(cli, ["run", "--input", str(access_log), "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = store.connect(db, read_only=True)
    try:
        n_events = store.query(con, "select count(*) as n from raw.events").item()
        quarantined = store.query(con, "select source_line, reason from raw.quarantine").rows()
        sessions = store.query(
            con, "select n_steps, is_bot, is_converted from marts.sessions order by is_bot"
        ).rows()
    finally:
        con.close()
    assert n_events == 5
    assert quarantined == [(5, "malformed_line")]
    assert sessions == [(3, False, True), (1, True, False)]


def test_rerunning_the_same_file_adds_nothing(access_log, tmp_path):
    """A second run over the same file accepts 0 rows: all 6 parseable lines are duplicates."""
    db = tmp_path / "journeymap.duckdb"
    runner = CliRunner()
    args = ["run", "--input", str(access_log), "--db", str(db)]
    assert runner.invoke(cli, args).exit_code == 0
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert count_in(second.stdout, "rows read") == 7
    assert count_in(second.stdout, "accepted") == 0
    assert count_in(second.stdout, "duplicates") == 5 + 1
    assert count_in(second.stdout, "quarantined") == 1


def test_quarantined_rows_do_not_fail_the_run(access_log, tmp_path, capsys):
    """main() returns 0 for a run that quarantined rows, and says where they went."""
    code, out, err = run_main(capsys, "run", "--input", access_log, "--db", tmp_path / "j.db")
    assert code == 0, err
    assert count_in(out, "quarantined") == 1
    assert "raw.quarantine" in out


def test_quiet_prints_nothing(access_log, tmp_path, capsys):
    """--quiet: no summary and no progress; the run still happens."""
    code, out, err = run_main(
        capsys, "run", "--quiet", "--input", access_log, "--db", tmp_path / "j.db"
    )
    assert (code, out, err) == (0, "", "")
    assert (tmp_path / "j.db").is_file()


# ---------------------------------------------------------------------------- usage errors


def test_missing_input_file_is_a_usage_error_naming_the_path(tmp_path, capsys):
    """A missing --input file: exit 2, one line on stderr naming the path, no traceback."""
    missing = tmp_path / "nope" / "access.log"
    code, out, err = run_main(capsys, "run", "--input", missing, "--db", tmp_path / "j.db")
    assert code == 2
    assert str(missing) in assert_one_line_error(err)
    assert not (tmp_path / "j.db").exists()


def test_unknown_format_is_a_usage_error_naming_the_allowed_formats(access_log, tmp_path, capsys):
    """--format xml: exit 2, one line listing auto, combined, common, ndjson, csv, parquet."""
    code, _, err = run_main(
        capsys, "run", "--input", access_log, "--db", tmp_path / "j.db", "--format", "xml"
    )
    assert code == 2
    line = assert_one_line_error(err)
    assert "'xml'" in line
    for fmt in ("auto", "combined", "common", "ndjson", "csv", "parquet"):
        assert fmt in line
    assert set(FORMAT_CHOICES) == {"auto", "combined", "common", "ndjson", "csv", "parquet"}


def test_missing_required_option_is_one_line(tmp_path, capsys):
    """`run` without --input: exit 2, one line naming the option and pointing at --help."""
    code, _, err = run_main(capsys, "run", "--db", tmp_path / "j.db")
    assert code == 2
    line = assert_one_line_error(err)
    assert "--input" in line
    assert "journeymap run --help" in line


def test_missing_required_option_with_clirunner():
    """Click itself (standalone mode) also exits 2 for a missing required option."""
    result = CliRunner().invoke(cli, ["run", "--input", "x.log"])
    assert result.exit_code == 2
    assert "Missing option '--db'" in result.stderr


def test_unknown_command_is_one_line(capsys):
    """An unknown command: exit 2, one line naming it."""
    code, _, err = run_main(capsys, "frobnicate")
    assert code == 2
    assert "frobnicate" in assert_one_line_error(err)


def test_no_command_shows_usage_not_an_error(capsys):
    """`journeymap` alone prints the usage and commands (not 'error: Usage: ...') and exits 2,
    as click does."""
    code, _, err = run_main(capsys)
    assert code == 2
    assert err.startswith("Usage: journeymap")
    assert "error" not in err.lower()
    assert "run" in err and "sample" in err


def test_an_internal_error_is_one_line_and_leaves_the_database_unchanged(
    access_log, tmp_path, capsys, monkeypatch
):
    """A bug mid-run: exit 4, one `internal error` line (even for a multi-line exception), and
    the previous run's data still there; the failed run is recorded."""
    db = tmp_path / "j.db"
    assert run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)[0] == 0

    def broken(events, cfg):
        raise RuntimeError("boom\nsecond line of detail")

    monkeypatch.setattr(sessionize, "sessionize", broken)
    other = tmp_path / "other.log"
    other.write_text(_line("3.3.3.3", "06/Mar/2024:09:00:00", "/") + "\n", encoding="utf-8")
    code, _, err = run_main(capsys, "run", "--quiet", "--input", other, "--db", db)
    assert code == 4
    assert "Traceback" not in err
    assert err.splitlines() == [
        "journeymap: internal error: RuntimeError: boom "
        "(the database is unchanged; please report this)"
    ]
    con = store.connect(db, read_only=True)
    try:
        n_events = store.query(con, "select count(*) from raw.events").item()
        n_sessions = store.query(con, "select count(*) from marts.sessions").item()
        runs = store.query(con, "select run_id, status from raw.runs order by run_id").rows()
    finally:
        con.close()
    assert (n_events, n_sessions) == (5, 2)
    assert runs == [(1, "ok"), (2, "failed")]


def _bad_log(tmp_path, n_good: int, n_bad: int):
    path = tmp_path / f"mixed-{n_good}-{n_bad}.log"
    good = [_line("4.4.4.4", f"07/Mar/2024:10:{i:02d}:00", f"/p/{i}") for i in range(n_good)]
    path.write_text("\n".join(good + ["garbage"] * n_bad) + "\n", encoding="utf-8")
    return path


def test_too_much_quarantine_exits_5_and_keeps_the_rejects_not_the_events(
    access_log, tmp_path, capsys
):
    """6 of 8 rows bad (75 % > the default 50 %): exit 5 with one line naming the share, the
    limit and the top reason; the run's 2 good events are not loaded, its 6 rejects are kept,
    the run is recorded as rejected, and the earlier run's data is untouched."""
    db = tmp_path / "j.db"
    assert run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)[0] == 0
    code, _, err = run_main(capsys, "run", "--input", _bad_log(tmp_path, 2, 6), "--db", db)
    assert code == 5
    line = assert_one_line_error(err)
    assert "75.0% of 8 rows" in line
    assert "malformed_line 6" in line
    assert "input.max_quarantined_share = 0.5" in line
    con = store.connect(db, read_only=True)
    try:
        n_events = store.query(con, "select count(*) from raw.events").item()
        rejects = store.query(
            con, "select run_id, count(*) from raw.quarantine group by 1 order by 1"
        )
        runs = store.query(
            con, "select status, n_read, n_quarantined from raw.runs order by run_id"
        )
    finally:
        con.close()
    assert n_events == 5
    assert rejects.rows() == [(1, 1), (2, 6)]
    assert runs.rows() == [("ok", 7, 1), ("rejected", 8, 6)]


def test_the_quarantine_limit_is_configurable(tmp_path, capsys):
    """The same 75 %-bad file passes with input.max_quarantined_share = 0.8."""
    config = tmp_path / "journeymap.toml"
    config.write_text("[input]\nmax_quarantined_share = 0.8\n", encoding="utf-8")
    code, out, err = run_main(
        capsys,
        "run",
        "--input",
        _bad_log(tmp_path, 2, 6),
        "--db",
        tmp_path / "j.db",
        "--config",
        config,
    )
    assert code == 0, err
    assert count_in(out, "accepted") == 2


def test_json_log_lines_describe_the_run(access_log, tmp_path, capsys):
    """--log-format json: stdout stays empty; every stderr line is a JSON object; the stages
    come in order and run_finished carries the summary's counts."""
    code, out, err = run_main(
        capsys, "run", "--input", access_log, "--db", tmp_path / "j.db", "--log-format", "json"
    )
    assert code == 0
    assert out == ""
    records = [json.loads(line) for line in err.splitlines()]
    assert all(r["level"] == "info" and "ts" in r for r in records)
    stages = [r["stage"] for r in records if r["event"] == "stage_started"]
    assert stages == ["ingest", "sessionise", "journeys", "store", "publish"]
    finished = records[-1]
    assert finished["event"] == "run_finished"
    assert (finished["n_read"], finished["n_accepted"], finished["n_duplicates"]) == (7, 5, 1)
    assert (finished["n_quarantined"], finished["mode"]) == (1, "full")
    assert finished["quarantined_by_reason"] == {"malformed_line": 1}


def test_json_log_reports_failures_with_their_exit_code(tmp_path, capsys):
    """A usage error under --log-format json is one JSON error line, and the exit code stays."""
    code, out, err = run_main(
        capsys,
        "run",
        "--input",
        tmp_path / "missing.log",
        "--db",
        tmp_path / "j.db",
        "--log-format",
        "json",
    )
    assert code == 2
    assert out == ""
    (record,) = [json.loads(line) for line in err.splitlines()]
    assert (record["event"], record["level"], record["exit_code"]) == ("run_failed", "error", 2)
    assert "missing.log does not exist" in record["message"]


def test_full_refresh_needs_no_input_but_a_plain_run_does(access_log, tmp_path, capsys):
    """`run --full-refresh` without --input rebuilds from stored events; `run` alone is a
    usage error naming --input and the alternative."""
    db = tmp_path / "j.db"
    assert run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)[0] == 0
    code, out, err = run_main(capsys, "run", "--db", db, "--full-refresh")
    assert code == 0, err
    assert "full (--full-refresh)" in out
    assert count_in(out, "sessions (human)") == 1


# ----------------------------------------------------------------------------------- status


def test_status_lists_the_latest_runs_newest_first(access_log, tmp_path, capsys):
    """Three runs (ok full, ok incremental, rejected): JSON lists them newest first with the
    counts raw.runs holds; the table names each status."""
    db = tmp_path / "j.db"
    run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)
    run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)
    run_main(capsys, "run", "--quiet", "--input", _bad_log(tmp_path, 1, 3), "--db", db)
    code, out, _ = run_main(capsys, "status", "--db", db, "--format", "json")
    assert code == 0
    status = json.loads(out)
    assert (status["n_events"], status["n_sessions"], status["n_quarantined"]) == (5, 2, 4)
    assert status["run_in_progress"] is None
    runs = [(r["run_id"], r["status"], r["mode"], r["n_accepted"]) for r in status["runs"]]
    assert runs == [(3, "rejected", None, 1), (2, "ok", "incremental", 0), (1, "ok", "full", 5)]
    assert "75.0%" in status["runs"][0]["error"]

    code, out, _ = run_main(capsys, "status", "--db", db, "--runs", "2")
    assert code == 0
    assert "rejected" in out and "incremental" in out
    assert "full" not in out.split("Latest")[1], "--runs 2 must leave out the first run"


def test_status_shows_a_run_in_progress(access_log, tmp_path, capsys):
    """While a run holds the lock, status says so (with the holder's pid) and still reads
    the published database."""
    db = tmp_path / "j.db"
    run_main(capsys, "run", "--quiet", "--input", access_log, "--db", db)
    workspace = store.open_workspace(db)
    try:
        code, out, _ = run_main(capsys, "status", "--db", db, "--format", "json")
    finally:
        store.release_workspace(workspace)
    assert code == 0
    assert json.loads(out)["run_in_progress"].startswith(f"pid {os.getpid()} since ")
    code, out, _ = run_main(capsys, "status", "--db", db, "--format", "json")
    assert json.loads(out)["run_in_progress"] is None


def test_status_of_a_missing_database_is_a_store_error(tmp_path, capsys):
    """status on a path with no database: exit 3, one line saying it does not exist."""
    code, _, err = run_main(capsys, "status", "--db", tmp_path / "nope.duckdb")
    assert code == 3
    assert "does not exist" in assert_one_line_error(err)


# ----------------------------------------------------------------------------- store errors


def test_db_inside_a_regular_file_is_a_store_error(access_log, tmp_path, capsys):
    """--db whose parent is a regular file: exit 3, one line naming the database."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    db = blocker / "j.duckdb"
    code, _, err = run_main(capsys, "run", "--input", access_log, "--db", db)
    assert code == 3
    assert str(blocker) in assert_one_line_error(err)


def test_db_under_a_regular_file_deeper_down_is_a_store_error(access_log, tmp_path, capsys):
    """--db two levels under a regular file (the directory cannot be created): exit 3."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    code, _, err = run_main(
        capsys, "run", "--input", access_log, "--db", blocker / "sub" / "j.duckdb"
    )
    assert code == 3
    assert str(blocker) in assert_one_line_error(err)


def test_directory_as_db_is_a_store_error(access_log, tmp_path, capsys):
    """A directory given as --db: exit 3, one line."""
    directory = tmp_path / "dbdir"
    directory.mkdir()
    code, _, err = run_main(capsys, "run", "--input", access_log, "--db", directory)
    assert code == 3
    assert str(directory) in assert_one_line_error(err)


# ---------------------------------------------------------------------------- config errors


def _run_with_config(capsys, tmp_path, access_log, text: str) -> tuple[int, str]:
    config = tmp_path / "journeymap.toml"
    config.write_text(text, encoding="utf-8")
    code, _, err = run_main(
        capsys, "run", "--input", access_log, "--db", tmp_path / "j.db", "--config", config
    )
    return code, err


def test_config_with_an_unknown_key_suggests_the_right_one(access_log, tmp_path, capsys):
    """`[sessions] timeout = 60`: exit 2, "did you mean 'sessions.timeout_s'"."""
    code, err = _run_with_config(capsys, tmp_path, access_log, "[sessions]\ntimeout = 60\n")
    assert code == 2
    assert "did you mean 'sessions.timeout_s'" in assert_one_line_error(err)
    assert not (tmp_path / "j.db").exists()


def test_config_with_a_wrong_type_is_a_usage_error(access_log, tmp_path, capsys):
    """`timeout_s = "30"` (a string): exit 2, one line naming the key and the type."""
    code, err = _run_with_config(capsys, tmp_path, access_log, '[sessions]\ntimeout_s = "30"\n')
    assert code == 2
    line = assert_one_line_error(err)
    assert "sessions.timeout_s" in line
    assert "int" in line


def test_config_that_is_not_toml_is_a_usage_error(access_log, tmp_path, capsys):
    """A config file that is not TOML: exit 2, one line saying so."""
    code, err = _run_with_config(capsys, tmp_path, access_log, "{ this is: json-ish }\n")
    assert code == 2
    assert "not valid TOML" in assert_one_line_error(err)


def test_missing_config_file_is_a_usage_error(access_log, tmp_path, capsys):
    """--config pointing nowhere: exit 2, one line naming the path."""
    missing = tmp_path / "missing.toml"
    code, _, err = run_main(
        capsys, "run", "--input", access_log, "--db", tmp_path / "j.db", "--config", missing
    )
    assert code == 2
    assert str(missing) in assert_one_line_error(err)


def test_unknown_timezone_is_a_usage_error(access_log, tmp_path, capsys):
    """`sessions.timezone = "Mars/Olympus"`: exit 2, one line naming key and value."""
    code, err = _run_with_config(
        capsys, tmp_path, access_log, '[sessions]\ntimezone = "Mars/Olympus"\n'
    )
    assert code == 2
    line = assert_one_line_error(err)
    assert "sessions.timezone" in line
    assert "Mars/Olympus" in line


def test_config_is_applied_to_the_run(access_log, tmp_path, capsys):
    """The config reaches sessionize: with timeout_s = 240, the human's steps at 10:00, 10:05
    and 10:20 are three sessions (gaps of 5 and 15 minutes both exceed 4 minutes)."""
    code, err = _run_with_config(capsys, tmp_path, access_log, "[sessions]\ntimeout_s = 240\n")
    assert code == 0, err
    con = store.connect(tmp_path / "j.db", read_only=True)
    try:
        n_human = store.query(con, "select count(*) from marts.sessions where not is_bot").item()
    finally:
        con.close()
    assert n_human == 3


# --------------------------------------------------------------------------- help, version


def _leaf_commands(group=cli, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


@pytest.mark.parametrize(("name", "command"), list(_leaf_commands()))
def test_help_lists_every_option_with_help_text(name, command):
    """`<command> --help` exits 0 and shows every option, each with help text."""
    result = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert options
    for option in options:
        assert option.help, f"{name} {option.opts} has no help text"
        for flag in option.opts:
            assert flag in result.output
        assert option.help.split()[0] in result.output


def test_group_help_lists_the_commands():
    """`--help` (and `-h`) lists every command."""
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(cli, [flag])
        assert result.exit_code == 0
        for name in cli.commands:
            assert name in result.output
        assert "--version" in result.output


def test_version(capsys):
    """`--version` prints the package version and exits 0, via click and via main()."""
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"journeymap, version {__version__}"
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.strip() == f"journeymap, version {__version__}"


def test_tables_print_data_with_brackets_as_written(capsys):
    """A touchpoint or URL with brackets is data, not rich markup: printed as is, no error."""
    frame = pl.DataFrame({"path": ["/search?q=[/x]", "[bold]cart[/bold]"], "n": [1, 2]})
    cli_module._emit(frame, "table", "paths", {"path": "path", "n": "n"})
    out = capsys.readouterr().out
    assert "/search?q=[/x]" in out
    assert "[bold]cart[/bold]" in out


def test_a_run_into_a_foreign_database_fails_cleanly(access_log, tmp_path, capsys):
    """--db holding a view where journeymap keeps its events table: exit 4 with one line
    naming DuckDB's complaint, the view untouched, the failure recorded, the lock released."""
    import duckdb

    db = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    con.execute("create view raw.events as select 1 as x")
    con.close()
    code, _, err = run_main(capsys, "run", "--input", access_log, "--db", db)
    assert code == 4
    (line,) = err.strip().splitlines()
    assert "internal error" in line and "events" in line
    con = store.connect(db, read_only=True)
    try:
        view = store.query(con, "select * from raw.events")
        runs = store.query(con, "select status from raw.runs")
    finally:
        con.close()
    assert view.rows() == [(1,)]
    assert runs.rows() == [("failed",)]
    assert store.running_writer(db) is None


def test_a_database_journeymap_cannot_set_up_is_left_as_it_was(access_log, tmp_path, capsys):
    """raw.runs is someone's view: setting up the schema fails before the run starts. Exit 4
    with DuckDB's complaint, the file byte for byte as it was, no work file left."""
    import duckdb

    db = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create schema raw")
    con.execute("create view raw.runs as select 1 as run_id")
    con.close()
    before = db.read_bytes()
    code, _, err = run_main(capsys, "run", "--input", access_log, "--db", db)
    assert code == 4
    (line,) = err.strip().splitlines()
    assert "internal error" in line and "ALTER VIEW" in line
    assert db.read_bytes() == before
    assert store.running_writer(db) is None
    assert list(tmp_path.glob(".foreign.duckdb.run-*")) == []


def test_partition_writes_run_in_order_and_raise_their_errors():
    """Partitions are stored on a second connection while the next is computed: every
    write lands, in the order given, before the block ends, and a failed write is raised
    rather than lost."""
    con = duckdb.connect()
    con.execute("create table stored (part integer)")

    def insert(cursor, frame: pl.DataFrame) -> None:
        cursor.register("new_part", frame.to_arrow())
        cursor.execute("insert into stored select part from new_part")
        cursor.unregister("new_part")

    with cli_module._one_write_ahead(con) as write:
        for part in range(3):
            write(insert, pl.DataFrame({"part": [part]}))
    assert con.execute("select list(part order by rowid) from stored").fetchall() == [([0, 1, 2],)]

    def fail(cursor, frame: pl.DataFrame) -> None:
        raise RuntimeError(f"disk full at part {frame['part'][0]}")

    failing = pytest.raises(RuntimeError, match="disk full at part 7")
    with failing, cli_module._one_write_ahead(con) as write:
        write(fail, pl.DataFrame({"part": [7]}))


def test_allocator_keeps_freed_memory_unless_the_user_chooses_a_decay():
    """jemalloc takes the last of repeated options, and Polars puts its own default first."""
    polars_default = pipeline.POLARS_ALLOCATOR_DEFAULT
    assert pipeline.allocator_setting("") == "dirty_decay_ms:5000"
    # Inherited from a parent process that imported Polars: not the user's choice.
    assert pipeline.allocator_setting(polars_default) == "dirty_decay_ms:5000"
    assert pipeline.allocator_setting(f"{polars_default},{polars_default}") == "dirty_decay_ms:5000"
    assert pipeline.allocator_setting("stats_print:true") == "stats_print:true,dirty_decay_ms:5000"
    assert (
        pipeline.allocator_setting(f"{polars_default},narenas:2") == "narenas:2,dirty_decay_ms:5000"
    )
    assert pipeline.allocator_setting("dirty_decay_ms:100") == "dirty_decay_ms:100"
    assert pipeline.allocator_setting(f"{polars_default},dirty_decay_ms:0") == "dirty_decay_ms:0"


@contextlib.contextmanager
def _runs_connection(db):
    """A connection as `journeymap run` opens it (`store.connect_work` on a workspace)."""
    workspace = store.open_workspace(db)
    try:
        con = store.connect_work(workspace)
        try:
            yield con
        finally:
            store.close(con)
    finally:
        store.release_workspace(workspace)


@contextlib.contextmanager
def _plain_connection(db):
    """A connection as the other commands open it (`store.connect`)."""
    con = store.connect(db)
    try:
        yield con
    finally:
        store.close(con)


def test_the_runs_connection_keeps_freed_blocks_up_to_its_memory_cap(tmp_path):
    """A run's DuckDB connection keeps the blocks it frees, as many as its cap allows; a
    reading connection keeps none."""
    with _runs_connection(tmp_path / "j.duckdb") as con:
        kept, cap = con.execute(
            "select current_setting('block_allocator_memory'), current_setting('memory_limit')"
        ).fetchone()
    with _plain_connection(tmp_path / "other.duckdb") as reader:
        (kept_by_reader,) = reader.execute(
            "select current_setting('block_allocator_memory')"
        ).fetchone()
    assert kept == cap == "244.1 MiB"  # 256MB, as DuckDB prints it
    assert kept_by_reader == "0 bytes"


def _row_groups(con, table: str) -> int:
    return con.execute(
        f"select count(distinct row_group_id) from pragma_storage_info('{table}')"
    ).fetchone()[0]


def _append_and_checkpoint(con) -> int:
    """Five inserts of 70k rows (DuckDB's row groups hold 122,880), each checkpointed as a
    run's partitions are; the number of row groups the table is left with."""
    con.execute("create table t (n bigint, s varchar)")
    for i in range(5):
        con.execute(
            "insert into t select i, 'session-' || i from range(?, ?) r(i)",
            [i * 70_000, (i + 1) * 70_000],
        )
        con.execute("checkpoint")
    assert con.execute("select count(*), sum(n) from t").fetchone() == (
        350_000,
        sum(range(350_000)),
    )
    return _row_groups(con, "t")


def test_the_runs_connection_keeps_each_appended_row_group_as_it_is(tmp_path):
    """The run's connection never merges what it appends (each insert keeps its row group); any
    other connection keeps DuckDB's default, which merges the older half-full row groups
    (DuckDB 2.0 leaves the last few alone: five become four)."""
    with _runs_connection(tmp_path / "j.duckdb") as con:
        n_by_run = _append_and_checkpoint(con)
    with _plain_connection(tmp_path / "other.duckdb") as other:
        n_by_other = _append_and_checkpoint(other)
    assert n_by_run == 5
    assert n_by_other < n_by_run


def test_a_refresh_reclaims_the_rows_it_deletes_on_the_runs_connection(tmp_path):
    """Deleting six persons of ten leaves 40 % of three row groups: DuckDB's vacuum, which the
    run's connection otherwise leaves off, packs them into two."""
    with _runs_connection(tmp_path / "j.duckdb") as con:
        store.ensure_schema(con)
        con.execute(
            "insert into marts.sessions (session_id, person_id) "
            "select 's' || i, 'p' || (i % 10) from range(3 * 122880) r(i)"
        )
        con.execute("checkpoint")
        assert _row_groups(con, "marts.sessions") == 3
        con.execute(
            "create temp table refresh_persons as select 'p' || i as person_id from range(6) r(i)"
        )
        store.delete_sessions(con, refresh_only=True)
        assert _row_groups(con, "marts.sessions") == 2
        kept = con.execute(
            "select count(*), count(*) filter (where person_id in ('p6', 'p7', 'p8', 'p9')) "
            "from marts.sessions"
        ).fetchone()
        assert kept == (3 * 122880 * 4 // 10,) * 2
        (tasks,) = con.execute("select current_setting('max_vacuum_tasks')").fetchone()
        assert tasks == 0  # off again for what the run appends next


def test_a_rejected_runs_events_are_reclaimed_on_the_runs_connection(tmp_path):
    """The events of a rejected run are taken back, and the space they took with them."""
    with _runs_connection(tmp_path / "j.duckdb") as con:
        store.ensure_schema(con)
        con.execute(
            "insert into raw.events (event_id, anonymous_id, run_id) "
            "select 'e' || i, 'a' || i, case when i % 10 < 6 then 2 else 1 end "
            "from range(3 * 122880) r(i)"
        )
        con.execute("checkpoint")
        assert _row_groups(con, "raw.events") == 3
        store.drop_run_events(con, 2)
        assert _row_groups(con, "raw.events") == 2
        kept = con.execute("select count(*), max(run_id) from raw.events").fetchone()
        assert kept == (3 * 122880 * 4 // 10, 1)


def test_polars_allocator_runs_with_journeymaps_decay_when_journeymap_is_imported_first():
    """In a fresh process, as the CLI starts: jemalloc's own statistics report the decay."""
    env = {**os.environ, "_RJEM_MALLOC_CONF": "stats_print:true"}
    code = "import pipeline, polars; polars.DataFrame({'a': [1]})"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert re.search(r"opt\.dirty_decay_ms: 5000\b", done.stderr), done.stderr[:2000]
