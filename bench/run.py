"""`make bench`: time `journeymap run` as a whole process on generated data.

Generates a combined access log with the project's sample generator (cached in
bench/cache/, git-ignored), runs `journeymap run` on it in a fresh process, measures wall
seconds and peak RSS, checks that the counts reconcile (read == accepted + duplicates +
quarantined, per file) and writes bench/results.md.

Usage: python bench/run.py --events 1000000 [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"


def generate(n_events: int) -> Path:
    """The combined log for n_events, generated once and reused."""
    from pipeline.sample import write_sample

    out = CACHE / f"combined-{n_events}"
    done = out / ".complete"
    if not done.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_sample(out, n_events, formats=("combined",), seed=11)
        done.write_text("ok\n")
    return out / "access.log.gz"


def count_lines(path: Path) -> int:
    import zlib

    n = 0
    with open(path, "rb") as fh:
        d = zlib.decompressobj(wbits=47)
        while chunk := fh.read(1 << 24):
            data = d.decompress(chunk)
            while d.eof and d.unused_data:
                rest = d.unused_data
                d = zlib.decompressobj(wbits=47)
                data += d.decompress(rest)
            n += data.count(b"\n")
    return n


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return wall seconds and its peak RSS in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed with exit {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="small run: check agreement only")
    args = parser.parse_args()

    log = generate(args.events)
    n_lines = count_lines(log)
    db = CACHE / f"bench-{args.events}.duckdb"
    db.unlink(missing_ok=True)
    cli = [sys.executable, "-m", "pipeline", "run", "--input", str(log), "--db", str(db), "--quiet"]
    wall, peak_mb = timed(cli)

    con = duckdb.connect(str(db), read_only=True)
    run = con.execute(
        "select n_read, n_accepted, n_duplicates, n_quarantined, n_sessions, stage_seconds "
        "from raw.runs order by run_id desc limit 1"
    ).fetchone()
    files = con.execute(
        "select source, n_read, n_accepted, n_duplicates, n_quarantined from raw.run_files"
    ).fetchall()
    con.close()
    n_read, n_accepted, n_duplicates, n_quarantined, n_sessions, stages = run
    reconciles = n_read == n_lines and all(r == a + d + q for _, r, a, d, q in files)
    if not reconciles:
        print(f"bench: counts do not reconcile: lines {n_lines}, runs {run}, files {files}")
        return 1
    stages = json.loads(stages)
    lines = [
        "# journeymap benchmark",
        "",
        f"Input: combined access log, {n_lines:,} lines ({args.events:,} simulated events"
        " plus their asset requests, duplicates and malformed lines), gzip.",
        f"Machine: {os.cpu_count()} cores. One `journeymap run` process, fresh database.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall seconds | {wall:.1f} |",
        f"| peak RSS MB | {peak_mb:,.0f} |",
        f"| lines/s end-to-end | {n_lines / wall:,.0f} |",
        f"| lines/s ingest stage (parse + validate + stage) | {n_lines / stages['ingest']:,.0f} |",
        f"| read = accepted + duplicates + quarantined | {n_read:,} = {n_accepted:,} + "
        f"{n_duplicates:,} + {n_quarantined:,} |",
        f"| sessions | {n_sessions:,} |",
        "",
        "Seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        (HERE / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
