"""Contender: the core job as one DuckDB SQL script (`core_duckdb.sql`).

The script's touchpoint CASE gets one `when` line per rule of the shared rule table (every
value bound as a parameter, never pasted into the SQL); everything else is the script as
written.

Usage: python bench/core_duckdb.py EVENTS.parquet DEFINITIONS.json OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import duckdb

SCRIPT = Path(__file__).with_name("core_duckdb.sql")
MARKER = "-- (touchpoint rules)"


def touchpoint_case(rules: list[dict]) -> tuple[str, dict]:
    """`when ... then ...` lines for the touchpoint CASE, in rule order, and their values."""
    lines, params = [], {}
    for i, rule in enumerate(rules):
        conditions = []
        if rule["match"] is not None:
            conditions.append(f"has_url and regexp_matches(url_path, $rule_{i}_match)")
            params[f"rule_{i}_match"] = rule["match"]
        if rule["event_type"] is not None:
            conditions.append(f"event_type = $rule_{i}_event_type")
            params[f"rule_{i}_event_type"] = rule["event_type"]
        if rule["status"] is not None:
            conditions.append(f"status // $rule_{i}_divisor = $rule_{i}_status")
            params[f"rule_{i}_divisor"], params[f"rule_{i}_status"] = rule["status"]
        lines.append(f"when {' and '.join(conditions)} then $rule_{i}_name")
        params[f"rule_{i}_name"] = rule["name"]
    return "\n            ".join(lines), params


def statements(definitions: dict, events_path: Path, out: Path) -> list[tuple[str, dict]]:
    """The script's statements, each with the named parameters it uses."""
    case, params = touchpoint_case(definitions["rules"])
    params |= {
        "events_path": str(events_path),
        "timeout_s": definitions["timeout_s"],
        "page_view": definitions["page_view"],
        "conversion_event_types": definitions["conversion_event_types"],
        "conversion_url_pattern": definitions["conversion_url_pattern"],
        "sessions_path": str(out / "sessions.parquet"),
        "transitions_path": str(out / "transitions.parquet"),
    }
    script = SCRIPT.read_text()
    if script.count(MARKER) != 1:
        raise ValueError(f"{SCRIPT.name} must hold the marker {MARKER!r} once, in the CASE")
    script = script.replace(MARKER, case)
    result = []
    for statement in duckdb.extract_statements(script):
        names = set(re.findall(r"\$(\w+)", statement.query))
        result.append((statement.query, {k: v for k, v in params.items() if k in names}))
    return result


def main(events_path: Path, definitions_path: Path, out: Path) -> None:
    definitions = json.loads(definitions_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    for sql, params in statements(definitions, events_path, out):
        con.execute(sql, params).fetchall()
    [(n_rows_read,)] = con.execute(
        "select count(*) from read_parquet($path)", {"path": str(events_path)}
    ).fetchall()
    [(n_events,)] = con.sql("select count(*) from steps").fetchall()
    [(n_sessions,)] = con.sql("select count(*) from sessions").fetchall()
    summary = {"n_rows_read": n_rows_read, "n_events": n_events, "n_sessions": n_sessions}
    (out / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
