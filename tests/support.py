"""Helpers shared by several test modules."""

from __future__ import annotations

import dataclasses
import json
import zlib
from datetime import datetime, timedelta
from pathlib import Path

from pipeline.config import Config


def without_limit(cfg: Config) -> Config:
    """`cfg` with no quarantine limit: for tests about what is quarantined, where a file of
    nothing but bad rows must still load (the limit has its own tests)."""
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, max_quarantined_share=1.0))


def gzip_members(data: bytes) -> list[bytes]:
    """The inflated members of gzip `data`, in order (logrotate and `cat a.gz b.gz` make
    several); each member must end, not be cut short."""
    members = []
    while data:
        member = zlib.decompressobj(wbits=31)
        members.append(member.decompress(data) + member.flush())
        assert member.eof, "a gzip member is cut short"
        data = member.unused_data
    return members


def write_hostile_sessions(
    path: Path,
    start: datetime,
    *,
    urls: list[str],
    user_agent: str,
    rejected: str,
    prefix: str,
    n_sessions: int,
    minutes_apart: int,
    seconds_per_step: int,
) -> None:
    """NDJSON with `n_sessions` visitors, each viewing `urls` in turn with `user_agent`, and
    one rejected line whose raw text is `rejected`: hostile data for the report's escaping."""
    lines = [rejected]
    for i in range(n_sessions):
        at = start + timedelta(minutes=minutes_apart * i)
        for j, url in enumerate(urls):
            record = {
                "anonymous_id": f"{prefix}-{i}",
                "ts": (at + timedelta(seconds=seconds_per_step * j)).isoformat(),
                "event_type": "page_view",
                "url": url,
                "user_agent": user_agent,
            }
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
