"""Contender: the core job in plain pandas (vectorised: sort, shift, cumsum, groupby).

URL regexes run once per distinct URL and are mapped back by the URL's factorised code, as
anyone would do with a catalogue of URLs; the touchpoint is one `np.select` over all events,
its conditions generated from the shared rule table.

Usage: python bench/core_pandas.py EVENTS.parquet DEFINITIONS.json OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def per_url(codes: np.ndarray, values: pd.Series) -> np.ndarray:
    """A value computed per distinct URL, spread back to every event (missing URL: False)."""
    spread = values.to_numpy(dtype=bool, na_value=False)[codes]
    return np.where(codes >= 0, spread, False)


def touchpoints(events: pd.DataFrame, definitions: dict) -> tuple[np.ndarray, np.ndarray]:
    """Touchpoint and conversion flag of every event."""
    codes, urls = pd.factorize(events["url"])
    urls = pd.Series(urls, dtype="str")
    path = urls.str.replace(r"[?#].*$", "", regex=True)
    event_type = events["event_type"]
    status = events["status"]

    spread_path = pd.Series(path.to_numpy()[codes]).where(codes >= 0).to_numpy()
    bare = (spread_path == "") | ((spread_path == "/") & (event_type != definitions["page_view"]))
    has_url = (codes >= 0) & ~np.asarray(bare, dtype=bool)

    conditions = []
    for rule in definitions["rules"]:
        condition = np.ones(len(events), dtype=bool)
        if rule["match"] is not None:
            condition &= has_url & per_url(codes, path.str.contains(rule["match"], regex=True))
        if rule["event_type"] is not None:
            condition &= (event_type == rule["event_type"]).to_numpy(dtype=bool, na_value=False)
        if rule["status"] is not None:
            divisor, value = rule["status"]
            condition &= (status // divisor == value).to_numpy(dtype=bool, na_value=False)
        conditions.append(condition)
    names = [rule["name"] for rule in definitions["rules"]]
    touchpoint = np.select(conditions, names, default=event_type.to_numpy(dtype=object))

    without_query = urls.str.replace(r"\?.*$", "", regex=True)
    by_url = per_url(codes, without_query.str.contains(definitions["conversion_url_pattern"]))
    by_event = event_type.isin(definitions["conversion_event_types"]).to_numpy(dtype=bool)
    return touchpoint, by_event | by_url


def main(events_path: Path, definitions_path: Path, out: Path) -> None:
    definitions = json.loads(definitions_path.read_text())
    raw = pd.read_parquet(events_path)
    n_rows_read = len(raw)
    events = raw.drop_duplicates()
    del raw

    first_logins = (
        events.loc[events["user_id"].notna(), ["anonymous_id", "ts", "user_id"]]
        .sort_values(["ts", "user_id"])
        .drop_duplicates("anonymous_id")
        .rename(columns={"user_id": "stitched_user_id"})[["anonymous_id", "stitched_user_id"]]
    )
    events = events.merge(first_logins, on="anonymous_id", how="left")
    events["person_id"] = (
        ("u:" + events["user_id"])
        .fillna("u:" + events["stitched_user_id"])
        .fillna("a:" + events["anonymous_id"])
    )
    events = events.sort_values(["person_id", "ts", "event_id"], ignore_index=True)

    new_person = events["person_id"] != events["person_id"].shift()
    too_long = events["ts"].diff() > pd.Timedelta(seconds=definitions["timeout_s"])
    is_session_start = (new_person | too_long).to_numpy()
    session = np.cumsum(is_session_start)
    touchpoint, is_conversion = touchpoints(events, definitions)
    steps = pd.DataFrame(
        {
            "session": session,
            "person_id": events["person_id"],
            "ts": events["ts"],
            "touchpoint": touchpoint,
            "is_conversion": is_conversion,
        }
    )
    del events

    sessions = steps.groupby("session", sort=True).agg(
        person_id=("person_id", "first"),
        started_at=("ts", "first"),
        n_events=("ts", "size"),
        is_converted=("is_conversion", "any"),
    )

    # Journey: repeats collapsed, cut after the first conversion step.
    conversions = steps["is_conversion"].astype(np.int64)
    conversions_before = conversions.groupby(steps["session"]).cumsum() - conversions
    repeated = ~is_session_start & (steps["touchpoint"] == steps["touchpoint"].shift())
    journey = steps.loc[(conversions_before == 0) & ~repeated, ["session", "touchpoint"]]

    first = (journey["session"] != journey["session"].shift()).to_numpy()
    last = (journey["session"] != journey["session"].shift(-1)).to_numpy()
    inner = pd.DataFrame(
        {
            "from_touchpoint": np.where(first, "START", journey["touchpoint"].shift()),
            "to_touchpoint": journey["touchpoint"].to_numpy(),
        }
    )
    ends = journey.loc[last]
    converted = sessions["is_converted"].reindex(ends["session"]).to_numpy()
    end_edges = pd.DataFrame(
        {
            "from_touchpoint": ends["touchpoint"].to_numpy(),
            "to_touchpoint": np.where(converted, "CONVERSION", "EXIT"),
        }
    )
    transitions = (
        pd.concat([inner, end_edges], ignore_index=True)
        .groupby(["from_touchpoint", "to_touchpoint"])
        .size()
        .rename("n_transitions")
        .reset_index()
    )

    out.mkdir(parents=True, exist_ok=True)
    sessions.to_parquet(out / "sessions.parquet", index=False)
    transitions.to_parquet(out / "transitions.parquet", index=False)
    summary = {"n_rows_read": n_rows_read, "n_events": len(steps), "n_sessions": len(sessions)}
    (out / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
