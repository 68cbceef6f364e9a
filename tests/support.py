"""Helpers shared by several test modules."""

from __future__ import annotations

import dataclasses

from pipeline.config import Config


def without_limit(cfg: Config) -> Config:
    """`cfg` with no quarantine limit: for tests about what is quarantined, where a file of
    nothing but bad rows must still load (the limit has its own tests)."""
    return dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, max_quarantined_share=1.0))
