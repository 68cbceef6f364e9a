"""Configuration: frozen dataclasses loaded once from `journeymap.toml`.

Every key has a default, so an empty file (or none) is a valid configuration. Unknown keys
are errors with a "did you mean" hint: a typo in a nightly job's config must not silently fall
back to a default.

>>> cfg = load_config(None)
>>> cfg.sessions.timeout_s
1800
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

# The canonical event columns a CSV/Parquet export can map onto (see schemas.EVENTS).
MAPPABLE_COLUMNS = (
    "event_id",
    "anonymous_id",
    "user_id",
    "ts",
    "event_type",
    "url",
    "host",
    "referrer",
    "user_agent",
    "status",
    "revenue",
)

FORMATS = ("auto", "combined", "common", "ndjson", "csv", "parquet")

# Journey stages a touchpoint belongs to: before, during and after buying.
STAGES = ("orientation", "purchase", "service")

# Node names the transition graph reserves for itself (see journeys/graph).
RESERVED_TOUCHPOINTS = ("START", "CONVERSION", "EXIT")


@dataclass(frozen=True)
class ColumnMapping:
    """Source column name for each canonical column of a CSV/Parquet export."""

    event_id: str = "event_id"
    anonymous_id: str = "anonymous_id"
    user_id: str = "user_id"
    ts: str = "ts"
    event_type: str = "event_type"
    url: str = "url"
    host: str = "host"
    referrer: str = "referrer"
    user_agent: str = "user_agent"
    status: str = "status"
    revenue: str = "revenue"


@dataclass(frozen=True)
class InputConfig:
    """How raw files are read."""

    format: str = "auto"
    timezone: str = "UTC"
    ts_unit: str = "iso"
    max_line_bytes: int = 65536
    csv_separator: str = ","
    # A run whose rejected share of rows read is above this fails with exit code 5 and
    # publishes nothing but its run record: a changed export format must wake someone up.
    max_quarantined_share: float = 0.5
    columns: ColumnMapping = field(default_factory=ColumnMapping)


@dataclass(frozen=True)
class PrivacyConfig:
    """What is never stored."""

    scrub_query_params: tuple[str, ...] = (
        "email",
        "e-mail",
        "mail",
        "token",
        "access_token",
        "id_token",
        "auth",
        "password",
        "passwd",
        "pwd",
        "secret",
        "api_key",
        "apikey",
        "key",
        "phone",
        "tel",
        "name",
        "firstname",
        "lastname",
        "address",
        "zip",
        "postcode",
        "iban",
        "card",
        "sessionid",
        "sid",
    )


@dataclass(frozen=True)
class SessionConfig:
    """When one session ends and the next begins."""

    timeout_s: int = 1800
    max_duration_s: int = 86400
    split_at_midnight: bool = False
    timezone: str = "UTC"
    split_on_campaign_change: bool = False
    # Events older than this many days before the newest stored event are reported as late:
    # they still land in the right sessions, but they change figures already published.
    late_days: int = 3
    # Sessionise at most about this many events at once. People are never split across
    # partitions, so the result does not depend on it; lower it to use less memory. 500k:
    # at 10M events, while sessionising, a run held 1.2-1.4 GB with 500k-event partitions
    # and 1.7-1.8 GB with 1M-event ones, taking about a tenth longer.
    partition_events: int = 500_000


@dataclass(frozen=True)
class BotConfig:
    """Which visitors are robots. Bots are stored but kept out of journeys."""

    user_agent_patterns: tuple[str, ...] = (
        "bot",
        "crawl",
        "spider",
        "slurp",
        "scrap",
        "fetch",
        "monitor",
        "headless",
        "phantomjs",
        "selenium",
        "puppeteer",
        "playwright",
        "lighthouse",
        "pingdom",
        "uptime",
        "curl/",
        "wget/",
        "python-requests",
        "python-urllib",
        "aiohttp",
        "httpx",
        "go-http-client",
        "java/",
        "okhttp",
        "libwww",
        "apache-httpclient",
        "scrapy",
        "facebookexternalhit",
    )
    max_steps_per_minute: int = 60
    exclude_from_journeys: bool = True


@dataclass(frozen=True)
class StepConfig:
    """Which requests are journey steps: static assets and health checks are not."""

    asset_extensions: tuple[str, ...] = (
        ".js",
        ".mjs",
        ".css",
        ".map",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".svg",
        ".webp",
        ".avif",
        ".ico",
        ".bmp",
        ".woff",
        ".woff2",
        ".ttf",
        ".otf",
        ".eot",
        ".mp4",
        ".webm",
        ".mp3",
        ".json",
        ".xml",
        ".txt",
        ".pdf",
        ".zip",
    )
    health_check_paths: tuple[str, ...] = (
        "/health",
        "/healthz",
        "/healthcheck",
        "/ping",
        "/status",
        "/ready",
        "/readyz",
        "/livez",
        "/metrics",
        "/server-status",
    )


@dataclass(frozen=True)
class ConversionConfig:
    """Which step makes a session converted: an event type or a URL path pattern (regex)."""

    event_types: tuple[str, ...] = ("purchase", "order_completed", "checkout_completed")
    url_pattern: str = (
        r"(?i)^/([a-z]{2}(-[a-z]{2})?/)?"
        r"(checkout/(success|complete|completed|confirmation|thank-?you)"
        r"|order[-_/]?(confirmation|confirmed|complete|success|received)"
        r"|thank-?you|bedankt|bestelling/(bevestiging|voltooid)|afrekenen/bevestiging"
        r"|bestaetigung|bestellung/bestaetigung|commande/confirmation)"
    )
    # A touchpoint name (from `[[touchpoints]]` or the defaults) whose steps convert too.
    touchpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class TouchpointRule:
    """One `[[touchpoints]]` table: which steps are touchpoint `name`, in journey `stage`.

    A step matches when every criterion given matches: `match` (a regular expression searched
    in the URL path, query removed), `event_type` (exact) and `status` (an HTTP status such as
    "404", or a class such as "5xx" or "40x"). At least one criterion is required.
    """

    name: str
    match: str | None = None
    event_type: str | None = None
    status: str | None = None
    stage: str


@dataclass(frozen=True)
class ReportConfig:
    """What the HTML report (`journeymap report`) draws."""

    # Columns of the step Sankey: the first N touchpoints of each journey.
    sankey_steps: int = 6
    # Touchpoints drawn per Sankey column; the rest of the column is one "Others" node.
    sankey_top_k: int = 6
    # The touchpoint of the anchored Sankey (journeys from their first visit to it); "" draws
    # no anchored Sankey.
    sankey_anchor: str = "cart"
    # Touchpoints a session must reach in this order to count at each funnel step.
    funnel_steps: tuple[str, ...] = (
        "product",
        "cart",
        "checkout_shipping",
        "checkout_payment",
        "order_confirmation",
    )
    # Touchpoints drawn in the touchpoint-to-touchpoint Sankey (the rest: "Others").
    transitions_top_k: int = 10
    # Converting and abandoning paths listed.
    top_paths: int = 10


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    input: InputConfig = field(default_factory=InputConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    sessions: SessionConfig = field(default_factory=SessionConfig)
    bots: BotConfig = field(default_factory=BotConfig)
    steps: StepConfig = field(default_factory=StepConfig)
    conversion: ConversionConfig = field(default_factory=ConversionConfig)
    # Ordered, first match wins; the defaults (`touchpoints.DEFAULT_RULES`) follow these unless
    # `default_touchpoints = false`.
    touchpoints: tuple[TouchpointRule, ...] = ()
    default_touchpoints: bool = True
    report: ReportConfig = field(default_factory=ReportConfig)


def load_config(path: str | Path | None) -> Config:
    """Read a `journeymap.toml`; `None` gives the defaults.

    Raises `ConfigError` naming the bad key, what was expected and, for a typo, the key meant.
    """
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing --config FILE")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML ({err}): fix the syntax") from err
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a `Config` from parsed TOML, validating every key and type."""
    cfg = _build(Config, data, "")
    _check_values(cfg)
    return cfg


def documented_keys() -> list[str]:
    """Every dotted config key, e.g. `sessions.timeout_s` (the README must document each)."""
    return list(_walk_keys(Config, ""))


def _walk_keys(cls: type, prefix: str):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        item = _table_list_item(hint)
        if dataclasses.is_dataclass(hint):
            yield from _walk_keys(hint, f"{prefix}{f.name}.")
        elif item is not None:
            # An array of tables: its keys are documented once, e.g. `touchpoints.name`.
            yield from _walk_keys(item, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def _table_list_item(hint: Any) -> type | None:
    """The dataclass of a `tuple[SomeDataclass, ...]` hint (an array of tables), else None."""
    if typing.get_origin(hint) is not tuple:
        return None
    item = typing.get_args(hint)[0]
    return item if dataclasses.is_dataclass(item) else None


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{where.rstrip('.')}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            suggestion = f"; did you mean '{where}{hint[0]}'?" if hint else ""
            if not hint and where.endswith("].") and key in _top_level_keys():
                # TOML puts every key after `[[touchpoints]]` into that table.
                suggestion = f"; top-level keys like '{key}' must come before the first [table]"
            raise ConfigError(
                f"unknown config key '{where}{key}'{suggestion} "
                f"(known keys here: {', '.join(sorted(known))})"
            )
        kwargs[key] = _coerce(known[key], value, f"{where}{key}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"config table {where.rstrip('.')} needs the key '{missing[0]}' "
            f"(missing: {', '.join(missing)})"
        )
    return cls(**kwargs)


def _top_level_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(hint: Any, value: Any, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    origin = typing.get_origin(hint)
    item = _table_list_item(hint)
    if item is not None:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(
                f"config key '{key}' must be a list of tables: write each one as [[{key}]]"
            )
        # Numbered from 1, as a reader counts the [[tables]] in the file.
        return tuple(_build(item, v, f"{key}[{i}].") for i, v in enumerate(value, 1))
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list):
            raise ConfigError(f'config key \'{key}\' must be a list of strings, e.g. ["a", "b"]')
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key '{key}' must contain only strings")
        return tuple(value)
    if origin in (types.UnionType, typing.Union):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    # bool is a subclass of int: check it first so `timeout_s = true` is refused.
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(
            f"config key '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check_values(cfg: Config) -> None:
    import zoneinfo
    from datetime import datetime

    import polars as pl

    if cfg.input.format not in FORMATS:
        raise ConfigError(
            f"input.format = {cfg.input.format!r} is unknown: use one of {', '.join(FORMATS)}"
        )
    for key, tz in (
        ("input.timezone", cfg.input.timezone),
        ("sessions.timezone", cfg.sessions.timezone),
    ):
        try:
            zoneinfo.ZoneInfo(tz)
            # Polars does the conversions and knows fewer names than the system's zoneinfo
            # ('localtime', 'Factory', 'posix/...'): refuse those now, not halfway a run.
            pl.Series([datetime(2000, 1, 1)]).dt.replace_time_zone(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, pl.exceptions.PolarsError) as err:
            raise ConfigError(
                f"{key} = {tz!r} is not a known time zone: use an IANA name like 'Europe/Amsterdam'"
            ) from err
    positive = {
        "sessions.timeout_s": cfg.sessions.timeout_s,
        "sessions.max_duration_s": cfg.sessions.max_duration_s,
        "input.max_line_bytes": cfg.input.max_line_bytes,
        "bots.max_steps_per_minute": cfg.bots.max_steps_per_minute,
        "sessions.partition_events": cfg.sessions.partition_events,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be a positive number, got {value}")
    if not 0 <= cfg.input.max_quarantined_share <= 1:
        raise ConfigError(
            f"input.max_quarantined_share must be a share between 0 and 1 (0.05 = 5 %), "
            f"got {cfg.input.max_quarantined_share}"
        )
    if cfg.sessions.late_days < 0:
        raise ConfigError(f"sessions.late_days must be 0 or more, got {cfg.sessions.late_days}")
    if cfg.input.ts_unit not in ("iso", "s", "ms", "us") and "%" not in cfg.input.ts_unit:
        # Anything else would be taken as a strftime format that matches nothing, and every
        # row would be quarantined as a bad timestamp.
        raise ConfigError(
            f"input.ts_unit = {cfg.input.ts_unit!r} is unknown: use iso, s, ms, us or a "
            'strftime format such as "%d/%m/%Y %H:%M"'
        )
    if len(cfg.input.csv_separator) != 1:
        raise ConfigError('input.csv_separator must be a single character, e.g. "," or ";"')
    if cfg.conversion.url_pattern:
        _check_regex("conversion.url_pattern", cfg.conversion.url_pattern)
    _check_touchpoints(cfg)
    _check_report(cfg.report)


def _check_regex(key: str, pattern: str) -> None:
    """Refuse a pattern Polars cannot use (it does the matching, with Rust regex syntax)."""
    import polars as pl

    try:
        pl.Series([""], dtype=pl.String).str.contains(pattern)
    except pl.exceptions.PolarsError as err:
        # Polars' message spans lines (pattern, caret, expression); keep the `error:` line.
        lines = [ln.strip() for ln in str(err).splitlines()]
        reason = next((ln[len("error: ") :] for ln in lines if ln.startswith("error: ")), lines[0])
        raise ConfigError(
            f"{key} = {pattern!r} is not a valid regular expression ({reason}); "
            "the syntax is Rust's regex: no look-around or backreferences"
        ) from err


_STATUS_PATTERN = r"[1-5](\d\d|\dx|xx)"
_TOUCHPOINT_NAME = r"\w[\w .-]*"


def _check_touchpoints(cfg: Config) -> None:
    stages: dict[str, str] = {}
    for i, rule in enumerate(cfg.touchpoints, 1):
        where = f"touchpoints[{i}]"
        if not re.fullmatch(_TOUCHPOINT_NAME, rule.name) or rule.name.endswith(" "):
            raise ConfigError(
                f"{where}.name = {rule.name!r} is not a usable name: use letters, digits and "
                '"_", e.g. "checkout_payment"'
            )
        if rule.name in RESERVED_TOUCHPOINTS:
            raise ConfigError(
                f"{where}.name = {rule.name!r} is reserved for the journey graph: pick another"
            )
        if rule.stage not in STAGES:
            raise ConfigError(
                f"{where}.stage = {rule.stage!r} is unknown: use one of {', '.join(STAGES)}"
            )
        if stages.setdefault(rule.name, rule.stage) != rule.stage:
            raise ConfigError(
                f"{where}: touchpoint {rule.name!r} has stage {stages[rule.name]!r} in an "
                f"earlier rule and {rule.stage!r} here: a touchpoint has one stage"
            )
        if rule.match is None and rule.event_type is None and rule.status is None:
            raise ConfigError(
                f"{where} ({rule.name!r}) has no criterion: give match, event_type or status"
            )
        if rule.match is not None:
            if not rule.match:
                raise ConfigError(f"{where}.match is empty: it would match every URL")
            _check_regex(f"{where}.match", rule.match)
        if rule.event_type is not None and not rule.event_type:
            raise ConfigError(f"{where}.event_type is empty: give an event type or leave it out")
        if rule.status is not None and not re.fullmatch(_STATUS_PATTERN, rule.status.lower()):
            raise ConfigError(
                f"{where}.status = {rule.status!r} is not an HTTP status or class: "
                'use e.g. "404", "40x" or "5xx"'
            )
    target = cfg.conversion.touchpoint
    if target is not None:
        # The defaults live with the matching code; imported here, not at module level, so
        # that config stays the module every stage imports and imports no stage itself.
        from pipeline.touchpoints import effective_rules

        names = list(dict.fromkeys(r.name for r in effective_rules(cfg)))
        if target not in names and not target.startswith("/"):
            close = difflib.get_close_matches(target, names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"conversion.touchpoint = {target!r} is not a touchpoint name: {hint}"
                f"(names: {', '.join(names) or 'none'}; "
                "event types go in conversion.event_types)"
            )


# More columns or nodes than this make a Sankey nobody can read (and a slow page).
_REPORT_LIMITS = {"sankey_steps": 20, "sankey_top_k": 30, "transitions_top_k": 50, "top_paths": 50}


def _check_report(report: ReportConfig) -> None:
    for key, most in _REPORT_LIMITS.items():
        value = getattr(report, key)
        if not 1 <= value <= most:
            raise ConfigError(f"report.{key} must be between 1 and {most}, got {value}")
    if not report.funnel_steps:
        raise ConfigError(
            'report.funnel_steps is empty: list the touchpoints of the funnel, e.g. ["cart", '
            '"checkout_payment", "order_confirmation"]'
        )
    # An empty anchor switches the anchored Sankey off; a funnel step must name something.
    names = [*report.funnel_steps, *([report.sankey_anchor] if report.sankey_anchor else [])]
    for name in names:
        if not name or name != name.strip():
            raise ConfigError(
                f"report touchpoint {name!r} is blank or has spaces around it: "
                'use a touchpoint name such as "cart"'
            )
        if name in RESERVED_TOUCHPOINTS:
            raise ConfigError(
                f"report touchpoint {name!r} is a synthetic node, not a touchpoint: "
                'the funnel and the anchored Sankey take touchpoint names such as "cart"'
            )


# Bump when a code change alters what the stored sessions or journeys mean: the next run then
# rebuilds every mart instead of mixing old and new definitions.
MARTS_VERSION = 2


def marts_fingerprint(cfg: Config) -> str:
    """A digest of everything the stored sessions and journeys depend on.

    An incremental run recomputes only the persons with new events; that is exact only while
    these settings stay the same, so a changed fingerprint makes the run rebuild every mart.
    """
    sessions = dataclasses.asdict(cfg.sessions)
    sessions.pop("late_days")  # decides what is reported, not what is computed
    sessions.pop("partition_events")  # decides how much is computed at once, not what
    shaping = {
        "marts_version": MARTS_VERSION,
        "sessions": sessions,
        "bots": dataclasses.asdict(cfg.bots),
        "steps": dataclasses.asdict(cfg.steps),
        "conversion": dataclasses.asdict(cfg.conversion),
        "touchpoints": [dataclasses.asdict(rule) for rule in cfg.touchpoints],
        "default_touchpoints": cfg.default_touchpoints,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
