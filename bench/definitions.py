"""The core job's definitions, in one place for all three contenders.

journeymap's core runs with `core_config()`; the two baselines (`core_duckdb.py`,
`core_pandas.py`) read `core_definitions(cfg)` as JSON, written by the harness, and generate
their touchpoint CASE / np.select from its rule list. Nothing is typed twice: the rules are
`pipeline.touchpoints.effective_rules` of that config, which ends in a catch-all.

The core job, identical for every contender:

1. drop exact duplicate rows;
2. person_id = 'u:' || user_id when the event has one, else 'u:' || the first user_id of its
   anonymous_id (by ts, then user_id), else 'a:' || anonymous_id;
3. sessions: steps ordered by (person_id, ts, event_id); a new session when the person
   changes or the gap is more than `timeout_s` (exactly `timeout_s` continues); no bots, no
   asset or health-check filtering, no maximum duration;
4. touchpoint: the name of the first rule that matches. A rule matches when all its given
   criteria do: `match`, a regex searched in the URL path (query and fragment removed; never
   matches an event without a usable URL: no path, an empty one, or "/" on an event other than
   a page view), `event_type` (exact), `status` ("404", "40x" or "5xx"). The last rule, `other`,
   matches every usable URL; an event without one is named by its event type (journeymap's
   own fallback);
5. conversion step: event_type in `conversion_event_types`, or the URL with its query removed
   matches `conversion_url_pattern`;
6. journey: consecutive repeats of a touchpoint are one step; the journey ends at the first
   conversion step;
7. transitions: START → first step, step → next step, last step → CONVERSION if the session
   converted, else EXIT; counted per (from_touchpoint, to_touchpoint).

Outputs (each contender, into its own folder): `sessions.parquet` (person_id, started_at,
n_events, is_converted), `transitions.parquet` (from_touchpoint, to_touchpoint,
n_transitions) and `summary.json` (n_rows_read, n_events, n_sessions).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pipeline.config import Config, TouchpointRule
from pipeline.touchpoints import PAGE_VIEW, effective_rules

# Every usable URL path matches; `effective_rules` puts it after every real rule.
CATCH_ALL = TouchpointRule(name="other", match="^", stage="orientation")
# Large enough never to cut a session or flag a visitor, small enough for integer arithmetic.
NO_LIMIT = 10**9


def core_config() -> Config:
    """journeymap's default config with everything outside the core job switched off."""
    base = Config()
    return dataclasses.replace(
        base,
        sessions=dataclasses.replace(base.sessions, max_duration_s=NO_LIMIT),
        bots=dataclasses.replace(base.bots, user_agent_patterns=(), max_steps_per_minute=NO_LIMIT),
        steps=dataclasses.replace(base.steps, asset_extensions=(), health_check_paths=()),
        # The default rules, then the catch-all: `effective_rules(core_config())` is that list.
        touchpoints=(*effective_rules(base), CATCH_ALL),
        default_touchpoints=False,
    )


def core_definitions(cfg: Config) -> dict:
    """What the baselines need to compute the same job, as plain JSON-able values."""
    return {
        "timeout_s": cfg.sessions.timeout_s,
        "page_view": PAGE_VIEW,
        "rules": [
            {
                "name": r.name,
                "match": r.match,
                "event_type": r.event_type,
                # "5xx" → status // 100 == 5, "40x" → status // 10 == 40, "404" → status == 404
                "status": None if r.status is None else _status_test(r.status),
            }
            for r in effective_rules(cfg)
        ],
        "conversion_event_types": list(cfg.conversion.event_types),
        "conversion_url_pattern": cfg.conversion.url_pattern,
    }


def write_definitions(path: Path) -> Path:
    path.write_text(json.dumps(core_definitions(core_config()), indent=2) + "\n")
    return path


def _status_test(pattern: str) -> list[int]:
    """A rule's status criterion as [divisor, value], as `touchpoints._status_condition`."""
    pattern = pattern.lower()
    if pattern.endswith("xx"):
        return [100, int(pattern[0])]
    if pattern.endswith("x"):
        return [10, int(pattern[:2])]
    return [1, int(pattern)]
