"""Run one command; write its wall seconds and peak RSS as JSON. Imports nothing heavy.

Why a separate process: Linux counts a child's peak RSS from before its `exec`, when it is
still a copy of its parent. Spawned straight from the harness, which holds Polars, DuckDB and
the compared results, every contender would be charged the harness's memory. Spawned from
this small process, the floor is a few MB.

Usage: python bench/measure.py RESULT.json COMMAND [ARG ...]
(exit code: the command's)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(result_path: str, cmd: list[str]) -> int:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    exit_code = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    result = {"wall_s": wall_s, "peak_mb": usage.ru_maxrss / 1024, "exit_code": exit_code}
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    return 0 if exit_code == 0 else (exit_code if exit_code > 0 else 128 - exit_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
