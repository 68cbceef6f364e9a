"""Measure: combined-log parsing, as `journeymap run`'s ingest stage does it.

Iterates `pipeline.ingest.read_file` over one access log (decompress, split, parse, validate,
normalise; batch by batch) and prints one JSON line: lines read, events accepted, lines
quarantined and the seconds spent inside the iteration (start-up and imports excluded; the
harness also reports the whole process). Nothing is loaded into a database. (`journeymap
run` reads the next batch while it loads one, so its `stage_seconds['ingest']` counts only
the wait for a batch: this measures the reader alone.)

Usage: python bench/parse_log.py ACCESS_LOG [CONFIG.toml]
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pipeline import ingest
from pipeline.config import load_config


def main(log: Path, config: Path | None) -> None:
    cfg = load_config(config)
    n_read = n_accepted = n_quarantined = 0
    start = time.perf_counter()
    for batch in ingest.read_file(log, "combined", cfg, datetime.now(UTC)):
        n_read += batch.n_read
        n_accepted += batch.events.height
        n_quarantined += batch.quarantine.height
    seconds = time.perf_counter() - start
    result = {
        "n_read": n_read,
        "n_accepted": n_accepted,
        "n_quarantined": n_quarantined,
        "seconds": seconds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
