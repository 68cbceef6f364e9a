"""`journeymap sql`: ad-hoc SQL on the database, read-only, as a one-shot QUERY, a script on
stdin, or the `journeymap>` prompt (driven here through `sql_prompt` with fake input)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from pipeline import cli, store
from pipeline.config import load_config
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
CELL = re.compile(r"│ *([^\s│][^│\n]*?) *(?=│)")  # the cells of a table's body, not its header


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """The committed sample, run through the whole pipeline."""
    path = tmp_path_factory.mktemp("sql") / "journeymap.duckdb"
    cli.run_pipeline(
        [ROOT / "data/sample"], path, load_config(ROOT / "data/sample/journeymap.toml")
    )
    return path


def duck(db: Path, sql: str) -> pl.DataFrame:
    """The expected answer, straight from DuckDB."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return pl.from_arrow(con.sql(sql).to_arrow_table())
    finally:
        con.close()


def invoke(db: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(
        cli.cli, ["sql", "--db", str(db), *args], input=input, catch_exceptions=False
    )


def run_main(capsys, monkeypatch, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """stderr is exactly one `journeymap: error: ...` line, with no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("journeymap: error: ")
    return lines[0]


# ------------------------------------------------------------------------------ one-shot


def test_count_in_a_table_matches_duckdb(db):
    """The table shows the count DuckDB computes for the same query."""
    expected = duck(db, "select count(*) as n from marts.sessions where not is_bot")["n"][0]
    result = invoke(db, "select count(*) as n_human from marts.sessions where not is_bot")
    assert result.exit_code == 0
    assert "n_human" in result.stdout
    assert CELL.findall(result.stdout) == [str(expected)]


def test_csv_parses_back_to_the_same_frame(db):
    """--format csv, read with Polars, equals the result DuckDB gives."""
    sql = (
        "select channel, count(*) as n_sessions, sum(revenue) as revenue "
        "from marts.sessions group by channel order by channel"
    )
    result = invoke(db, sql, "--format", "csv")
    assert result.exit_code == 0
    assert_frame_equal(pl.read_csv(io.StringIO(result.stdout)), duck(db, sql))


def test_json_is_a_list_of_rows(db):
    """--format json gives one object per row, with DuckDB's values."""
    sql = "select device, count(*) as n_sessions from marts.sessions group by 1 order by 2 desc"
    result = invoke(db, sql, "--format", "json")
    assert json.loads(result.stdout) == duck(db, sql).to_dicts()


def test_max_rows_caps_a_table_and_counts_the_rest(db):
    """A table shows --max-rows rows and says how many more there are."""
    result = invoke(db, "select i from range(250) as t(i) order by i", "--max-rows", "5")
    assert result.exit_code == 0
    assert CELL.findall(result.stdout) == ["0", "1", "2", "3", "4"]
    assert "… 245 more rows (250 rows in all)" in result.stdout


def test_max_rows_does_not_cap_csv(db):
    """CSV is for scripts: every row, whatever --max-rows says."""
    result = invoke(db, "select i from range(250) as t(i)", "--format", "csv", "--max-rows", "5")
    assert len(result.stdout.splitlines()) == 1 + 250


def test_a_statement_without_rows_prints_ok(db):
    """`set` returns no rows: the table output says ok; CSV prints nothing."""
    assert invoke(db, "set threads = 2").stdout == "ok\n"
    assert invoke(db, "set threads = 2", "--format", "csv").stdout == ""


def test_values_are_not_rich_markup(db):
    """Text from the web (URLs, user agents) prints as it is, never as markup; NULL is shown."""
    result = invoke(db, "select '[bold]x[/] [/nope]' as url, null as referrer")
    assert result.exit_code == 0
    assert CELL.findall(result.stdout) == ["[bold]x[/] [/nope]", "NULL"]


def test_a_dot_command_works_as_query(db):
    """`journeymap sql --db F .tables` lists the tables without a prompt."""
    result = invoke(db, ".tables", "--format", "csv")
    rows = pl.read_csv(io.StringIO(result.stdout))
    assert {"marts.sessions": "table", "marts.sessions_by_day": "view"}.items() <= dict(
        rows.iter_rows()
    ).items()


# -------------------------------------------------------------------------------- errors


def test_syntax_error_is_one_line_exit_2(db, capsys, monkeypatch):
    """A syntax error: DuckDB's first line and where, exit 2, no traceback."""
    code, out, err = run_main(capsys, monkeypatch, "sql", "--db", db, "selec 1 from marts.sessions")
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert 'Parser Error: syntax error at or near "selec"' in line and "LINE 1:" in line


def test_unknown_table_names_the_way_to_list_tables(db, capsys, monkeypatch):
    """A missing table: exit 2, a close name if one exists, and how to list them all."""
    code, _, err = run_main(capsys, monkeypatch, "sql", "--db", db, "select * from sessions")
    line = one_line_error(err)
    assert code == 2
    assert "Table with name sessions does not exist" in line
    assert "did you mean marts.sessions?" in line
    assert f"`journeymap sql --db {db}`, then `.tables`" in line


def test_unknown_column_lists_candidates(db, capsys, monkeypatch):
    """A binder error keeps DuckDB's candidate columns and points to `.schema`."""
    code, _, err = run_main(
        capsys, monkeypatch, "sql", "--db", db, "select duration_s from marts.sessions"
    )
    line = one_line_error(err)
    assert code == 2 and "duration_in_s" in line and "`.schema TABLE`" in line


@pytest.mark.parametrize(
    "statement",
    [
        "insert into raw.settings values ('k', 'v')",
        "create table marts.mine as select 1 as x",
        "drop view marts.sessions_by_day",
    ],
)
def test_writes_are_refused_read_only(db, capsys, monkeypatch, statement):
    """Writing to the database: exit 2 and one line saying it is opened read-only."""
    code, _, err = run_main(capsys, monkeypatch, "sql", "--db", db, statement)
    assert code == 2
    assert "the database is opened read-only for analysis" in one_line_error(err)


def test_missing_database_is_exit_3(tmp_path, capsys, monkeypatch):
    """No database file: the store's message, exit 3, and no file is created."""
    missing = tmp_path / "none.duckdb"
    code, _, err = run_main(capsys, monkeypatch, "sql", "--db", missing, "select 1")
    assert code == 3 and "journeymap run" in one_line_error(err)
    assert not missing.exists()


def test_error_in_a_later_statement_names_it(db, capsys, monkeypatch):
    """Of several statements in QUERY, the failing one is named; those before it ran."""
    code, out, err = run_main(
        capsys, monkeypatch, "sql", "--db", db, "select 1 as first; select * from nope"
    )
    assert code == 2 and "first" in out
    assert "statement 2: Catalog Error" in one_line_error(err)


# ---------------------------------------------------------------------------------- stdin


def test_dash_reads_the_query_from_stdin(db):
    """`-` runs the statements on stdin (a heredoc, a file)."""
    result = invoke(db, "-", "--format", "csv", input="select 41 + 1\n  as answer\n")
    assert result.stdout == "answer\n42\n"


def test_piped_script_runs_statements_and_dot_commands(db):
    """Without QUERY, stdin is a script: dot-commands, statements over several lines,
    `;`-separated statements on one line, and nothing after `.quit`."""
    n_sessions = duck(db, "select count(*) as n from marts.sessions")["n"][0]
    script = "\n".join(
        [
            ".tables",
            "-- sessions per device",
            "select count(*) as n_sessions",
            "from marts.sessions;",
            ".schema marts.sessions",
            "select 1 as a; select 2 as b;",
            ".quit",
            "select 'not run' as c;",
        ]
    )
    result = invoke(db, "--format", "csv", input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "name,kind\n" in out and "marts.sessions,table\n" in out
    assert f"n_sessions\n{n_sessions}\n" in out
    assert "column_name,data_type,is_nullable\nsession_id,VARCHAR,true\n" in out
    assert "duration_in_s,DOUBLE,true\n" in out
    assert out.endswith("a\n1\nb\n2\n")


def test_piped_script_stops_at_the_first_error(db, capsys, monkeypatch):
    """A script stops at its first failing statement, naming its line; exit 2."""
    script = "select 1 as a;\n\nselect *\nfrom nope;\nselect 2 as b;\n"
    code, out, err = run_main(capsys, monkeypatch, "sql", "--db", db, stdin=script)
    assert code == 2 and " a " in out and " b " not in out
    assert "line 3: Catalog Error" in one_line_error(err)


def test_empty_stdin_says_what_to_give(db, capsys, monkeypatch):
    """No QUERY and nothing on stdin: one line naming the three ways in."""
    code, _, err = run_main(capsys, monkeypatch, "sql", "--db", db, stdin="")
    assert code == 2 and "give a QUERY" in one_line_error(err)


# --------------------------------------------------------------------------------- prompt


def feed(*lines):
    """`input()` over `lines`; an exception in the list is raised (Ctrl-C, Ctrl-D)."""
    items = iter(lines)

    def read_line(prompt: str) -> str:
        item = next(items, EOFError())
        if isinstance(item, BaseException):
            raise item
        return item

    return read_line


@pytest.fixture
def prompt(db):
    """Runs `sql_prompt` interactively on fake input; returns (stdout text, error lines)."""
    con = store.connect(db, read_only=True)
    out: list[str] = []
    errors: list[str] = []

    def run(*lines):
        session = cli.SqlSession(con, db, "csv", 100, out.append)
        cli.sql_prompt(session, feed(*lines), errors.append, interactive=True)
        return "".join(out), errors

    yield run
    con.close()


def test_prompt_runs_a_statement_once_a_line_ends_with_semicolon(prompt):
    """Lines accumulate until one ends with `;`."""
    out, errors = prompt("select 1", "  + 1", "  as two;")
    assert out == "two\n2\n\n" and errors == []


def test_prompt_reports_an_error_and_carries_on(prompt):
    """An error prints one line; the next statement still runs."""
    out, errors = prompt("select * from nope;", "select 3 as three;")
    assert len(errors) == 1 and errors[0].startswith("error: Catalog Error")
    assert "three\n3\n" in out


def test_ctrl_c_drops_the_statement_being_typed(prompt):
    """Ctrl-C clears the buffer: the half-typed statement never runs."""
    out, errors = prompt("select 'dropped'", KeyboardInterrupt(), "select 'kept' as k;")
    assert "dropped" not in out and "k\nkept\n" in out and errors == []


def test_prompt_dot_commands(prompt):
    """`.schema` shows columns; an unknown command or name is one error line; `.exit` leaves."""
    out, errors = prompt(".schema sessions_by_day", ".nope", ".schema nope", ".exit", "select 1;")
    assert "column_name,data_type,is_nullable\nsession_date,DATE,true\n" in out
    assert errors == [
        "error: unknown command .nope: `.help` lists the commands",
        "error: no table or view named nope: `.tables` lists them",
    ]
    assert "1\n1\n" not in out


def test_prompt_help_names_every_command(prompt):
    """`.help` names the dot-commands."""
    out, _ = prompt(".help")
    for command in (".tables", ".schema NAME", ".help", ".quit"):
        assert command in out


# ------------------------------------------------------------------------------- readers


def test_another_reader_does_not_block(db):
    """A process holding the database open read-only does not stop `journeymap sql`."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb\n"
            f"con = duckdb.connect({str(db)!r}, read_only=True)\n"
            "con.sql('select count(*) from marts.sessions').fetchall()\n"
            "print('open', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        result = invoke(db, "select count(*) as n from marts.sessions", "--format", "csv")
        assert result.exit_code == 0 and result.stdout.startswith("n\n")
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0


def test_script_error_is_a_usage_error(db):
    """In-process, a failing script raises `UsageError` (main maps it to exit 2)."""
    with pytest.raises(UsageError, match="line 1: "):
        invoke(db, input="select * from nope;\n")
