"""Sessionise: events in, sessions and their steps out (Polars, no Python per event).

Rules (one meaning everywhere, see DESIGN.md):

- static assets and health checks are not journey steps and do not keep a session alive;
- identity stitching: an anonymous id that logs in takes the first user id it logged in
  with, so that user's devices become one `person_id`;
- a session ends after more than `timeout_s` of inactivity (a gap of exactly `timeout_s`
  continues it), after `max_duration_s`, and optionally at local midnight or when the
  campaign changes;
- bots (user-agent patterns or more than `max_steps_per_minute` steps within a minute) are
  flagged per anonymous id; their sessions are kept with `is_bot = true`.

>>> sessions, steps = sessionize(events.lazy(), Config())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from pipeline.config import BotConfig, Config, ConversionConfig, StepConfig
from pipeline.schemas import SESSION_STEPS, SESSIONS, conform, join_by_hash

# Polars' default (streaming) engine sorts, joins in order and gathers wide frames several
# times slower than its in-memory engine on a frame that is already in memory (10M events:
# the sort by person 12.2 s vs 3.6 s); the collects that do so ask for the in-memory one.
IN_MEMORY = "in-memory"

# Read at a session's first step only (landing host, referrer, device, campaign).
LANDING_ONLY = ("host", "referrer", "user_agent", "utm_source", "utm_medium", "utm_campaign")
# Read at every step when sessions split on a campaign change.
CAMPAIGN_COLUMNS = ("utm_source", "utm_campaign")
# Each step's row in the events as sessionise received them, to fetch its landing attributes.
EVENT_ROW = "_event_row"

SEARCH_ENGINES = r"(^|\.)(google|bing|duckduckgo|yahoo|ecosia|baidu|yandex|qwant|startpage|brave)\."
SOCIAL_SITES = (
    r"(^|\.)(facebook|fb|instagram|t\.co|twitter|x\.com|linkedin|pinterest|tiktok|youtube|reddit"
    r"|snapchat|threads|lnkd\.in|whatsapp)"
)


def sessionize(events: pl.LazyFrame, cfg: Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Build `sessions` and `session_steps` (contracts in `schemas`) from stored events.

    `events` needs: event_id, ts, anonymous_id, user_id, event_type, url, host, referrer,
    user_agent, status, revenue, utm_source, utm_medium, utm_campaign.
    """
    # Materialised between stages: stitching and bot flags each add what an aggregate of
    # their input says, and a fused plan computes the shared input once per branch
    # (measured: 6.6 s fused vs 3.4 s staged on 2M events). The step filter too: stitching
    # collects its aggregate on its own.
    steps = journey_steps(events, cfg.steps).collect(engine=IN_MEMORY).lazy()
    steps = stitch_identities(steps).collect().lazy()
    steps = flag_bots(steps, cfg.bots).collect().with_row_index(EVENT_ROW)
    # Attributes read only at a session's first step stay out of the sort by person: they
    # are fetched for the first steps alone, one row per session rather than per step.
    landing_only = [
        c
        for c in LANDING_ONLY
        if c in steps.columns
        and not (cfg.sessions.split_on_campaign_change and c in CAMPAIGN_COLUMNS)
    ]
    ordered = assign_sessions(steps.drop(landing_only).lazy(), cfg)
    ordered = ordered.with_columns(is_conversion=is_conversion(cfg.conversion))
    steps_df = ordered.collect(engine=IN_MEMORY)

    session_steps = conform(steps_df.lazy(), SESSION_STEPS).collect()
    first_steps = steps_df.filter(pl.col("step") == 1).select("session_seq", EVENT_ROW)
    landing_attributes = steps.select(landing_only)[first_steps[EVENT_ROW]].with_columns(
        session_seq=first_steps["session_seq"]
    )
    sessions = summarise_sessions(steps_df.lazy(), landing_attributes.lazy())
    return sessions.collect(engine=IN_MEMORY), session_steps


def journey_steps(events: pl.LazyFrame, cfg: StepConfig) -> pl.LazyFrame:
    """Keep the events that are journey steps: no static assets, no health checks."""
    extensions = "|".join(e.lstrip(".").replace(".", r"\.") for e in cfg.asset_extensions)
    health = [p.lower().rstrip("/") for p in cfg.health_check_paths]
    if not extensions and not health:
        return events

    def excluded(urls: pl.Expr) -> pl.Expr:
        path = url_path(urls).str.to_lowercase()
        is_asset = path.str.contains(rf"\.({extensions})$") if extensions else pl.lit(False)
        is_health = path.str.strip_chars_end("/").is_in(health) if health else pl.lit(False)
        return is_asset | is_health

    return events.filter(~url_judged(excluded).fill_null(False))


def url_judged(judge: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """Whether each step's `url` is one of the distinct URLs that `judge` (a predicate over a
    column of URLs) accepts.

    `judge` runs once per distinct URL and steps are looked up in the accepted set: URLs
    repeat across millions of steps, and a regex per step costs several times a set lookup.
    """
    # Ordered: `judge` reads the same distinct values it filters; two unordered `unique()`
    # calls may list them in different orders and misalign the mask.
    urls = pl.col("url").unique(maintain_order=True)
    return pl.col("url").is_in(urls.filter(judge(urls)).implode())


def url_path(url: pl.Expr | None = None) -> pl.Expr:
    """The path of `url` (default: the `url` column): the query removed (stored URLs carry no
    fragment)."""
    return (pl.col("url") if url is None else url).str.replace(r"\?.*$", "")


def stitch_identities(events: pl.LazyFrame) -> pl.LazyFrame:
    """Add `person_id`: the user id of the event, else the first user id its device logged in
    with, else the anonymous id.

    >>> # a1 logs in as u1 on a phone, b1 logs in as u1 on a desktop: both become "u:u1"
    """
    first_login = (
        events.filter(pl.col("user_id").is_not_null())
        .sort("ts", "user_id")
        .group_by("anonymous_id")
        .agg(stitched_user_id=pl.col("user_id").first())
        .collect()
    )
    user = pl.coalesce("user_id", "stitched_user_id")
    # Looked up rather than joined: a join copies every column of every event, a lookup
    # only adds one (1M events: 0.03 s vs 0.08 s).
    stitched = pl.col("anonymous_id").replace_strict(
        first_login["anonymous_id"], first_login["stitched_user_id"], default=None
    )
    # One concatenation per event: a coalesce of three prefixed ids would build all three.
    return events.with_columns(stitched_user_id=stitched).with_columns(
        person_id=pl.concat_str(
            pl.when(user.is_null()).then(pl.lit("a:")).otherwise(pl.lit("u:")),
            pl.coalesce(user, "anonymous_id"),
        )
    )


def device_groups(device_users: pl.DataFrame) -> pl.DataFrame:
    """Label every device that logged in with the devices it can share a person with.

    A person `u:U` gathers every device with an event of user U, and one device can carry
    events of several users, so people are linked through devices and user ids. Devices
    connected that way get one `group` (the smallest user id among them): all events of a
    person then lie in the devices of one group. Devices that never logged in are absent
    (each is its own group). Label propagation over the (device, user) pairs: it settles in
    as many rounds as the longest chain of shared devices, one or two in practice.

    Input: `anonymous_id`, `user_id` (one row per pair, as many as logged-in devices).
    """
    pairs = device_users.select("anonymous_id", "user_id").unique()
    labels = pairs.group_by("anonymous_id").agg(group=pl.col("user_id").min())
    while True:
        by_user = (
            pairs.join(labels, on="anonymous_id")
            .group_by("user_id")
            .agg(group=pl.col("group").min())
        )
        relabelled = (
            pairs.join(by_user, on="user_id")
            .group_by("anonymous_id")
            .agg(group=pl.col("group").min())
        )
        if relabelled.join(labels, on=["anonymous_id", "group"], how="anti").is_empty():
            return relabelled
        labels = relabelled


def person_partitions(events: pl.DataFrame, n_parts: int) -> list[pl.DataFrame]:
    """`events` dealt into at most `n_parts` frames of whole persons (`with_person_partition`),
    for `sessionize` one at a time: sessions of the frames together are those of one pass, and
    a frame is sorted and joined in a fraction of the memory the whole needs. For a frame
    already in memory (a notebook); `journeymap run` deals stored events the same way in
    DuckDB (`store.write_partitions`).
    """
    if n_parts <= 1:
        return [events]
    # The rule reads only the ids: the wide frame is dealt once, not joined.
    ids = events.lazy().select("anonymous_id", "user_id")
    part = with_person_partition(ids, n_parts).select("part").collect()
    return events.with_columns(part=part.to_series()).partition_by("part", include_key=False)


def with_person_partition(events: pl.LazyFrame, n_parts: int) -> pl.LazyFrame:
    """`events` (text `anonymous_id` and `user_id`) with `part`, a number below `n_parts`:
    that of the device's group (`device_groups`, from the logged-in devices, collected here),
    else the device's own, so that each person's events share one. Otherwise lazy: a scan can
    be dealt into partition files in one streaming pass, without ever holding all the events
    (`bench/core_journeymap.py`)."""
    logged_in = events.filter(pl.col("user_id").is_not_null()).select("anonymous_id", "user_id")
    groups = device_groups(logged_in.collect())
    by_group = groups.select("anonymous_id", part=id_hash("group") % n_parts)
    return join_by_hash(events, by_group, ["anonymous_id"]).with_columns(
        part=pl.coalesce("part", id_hash("anonymous_id") % n_parts)
    )


def flag_bots(events: pl.LazyFrame, cfg: BotConfig) -> pl.LazyFrame:
    """Add `is_bot`, per anonymous id: a robot user agent or an inhuman step rate."""
    patterns = "|".join(pl.escape_regex(p.lower()) for p in cfg.user_agent_patterns)
    # Matched once per distinct user agent: agents repeat across millions of rows.
    agents = events.select(pl.col("user_agent").unique()).drop_nulls()
    by_agent = (
        agents.filter(
            pl.col("user_agent").cast(pl.String).str.to_lowercase().str.contains(patterns)
        )
        if patterns
        else agents.head(0)
    )
    robots = events.join(by_agent, on="user_agent", how="semi").select("anonymous_id")
    too_fast = too_fast_devices(events, cfg.max_steps_per_minute)
    bot_devices = pl.concat([robots, too_fast]).unique().collect()["anonymous_id"]
    # Bots are few: a set lookup per step costs a fraction of a join.
    return events.with_columns(is_bot=pl.col("anonymous_id").is_in(bot_devices.implode()))


def too_fast_devices(events: pl.LazyFrame, n: int) -> pl.LazyFrame:
    """Anonymous ids with more than `n` steps within some 60 s: the step n places earlier on
    the same device is less than a minute ago.

    Only devices with more than `n` steps in all can qualify, and they are few, so only their
    steps are sorted. Devices are grouped by a 64-bit hash of their id (integers group and
    sort several times faster than text). Two devices sharing a hash merge into one stream,
    which can only add steps to a minute, never remove any: the devices found are checked
    again by their text ids, so the result is exact.
    """
    hashed = events.select("anonymous_id", "ts", device=id_hash("anonymous_id"))
    busy = hashed.group_by("device").agg(n_steps=pl.len()).filter(pl.col("n_steps") > n)

    def rate_exceeded(frame: pl.LazyFrame, device: str) -> pl.LazyFrame:
        same_device = pl.col(device) == pl.col(device).shift(n)
        too_fast = same_device & ((pl.col("ts") - pl.col("ts").shift(n)) < pl.duration(seconds=60))
        return frame.sort(device, "ts").filter(too_fast.fill_null(False)).select(device).unique()

    candidates = rate_exceeded(hashed.join(busy, on="device", how="semi"), "device")
    suspects = hashed.join(candidates, on="device", how="semi").drop("device")
    return rate_exceeded(suspects, "anonymous_id")


def assign_sessions(events: pl.LazyFrame, cfg: Config) -> pl.LazyFrame:
    """Add `session_id` and `step` (1-based): each person's steps together, in (ts, event_id)
    order (see `by_person_and_time`)."""
    s = cfg.sessions
    ordered = by_person_and_time(events).lazy()
    gap = pl.col("ts") - pl.col("ts").shift(1)
    breaks = ~pl.col("same_person") | (gap > pl.duration(seconds=s.timeout_s))
    if s.split_at_midnight:
        local_date = pl.col("ts").dt.convert_time_zone(s.timezone).dt.date()
        breaks = breaks | (local_date != local_date.shift(1))
    if s.split_on_campaign_change:
        campaign = pl.concat_str(
            [
                pl.col("utm_source").cast(pl.String).fill_null(""),
                pl.col("utm_campaign").cast(pl.String).fill_null(""),
            ],
            separator="/",
        )
        # A step without UTM tags continues the campaign it came in on; a tagged step starts a
        # session unless its campaign is the one already in effect in this visit (none, for a
        # visit that began untagged). The carry stays inside the visit: an earlier visit of the
        # same person must not decide whether this one splits.
        visit = breaks.cast(pl.UInt32).cum_sum()
        tagged = pl.when(campaign != "/").then(campaign)
        in_effect = tagged.forward_fill().shift(1).over(visit)
        breaks = breaks | (tagged.is_not_null() & (tagged != in_effect).fill_null(True))
    # A visit longer than max_duration_s is cut into consecutive windows of that length.
    # Starts are forward-filled from break rows: no per-group window over millions of rows.
    visit_start = pl.when(breaks).then(pl.col("ts")).forward_fill()
    window = (pl.col("ts") - visit_start).dt.total_microseconds() // (s.max_duration_s * 1_000_000)
    ordered = ordered.with_columns(
        is_session_start=breaks | (window != window.shift(1)).fill_null(True),
        row=pl.int_range(pl.len(), dtype=pl.Int64),
    )
    starts = pl.col("is_session_start")
    return ordered.with_columns(
        session_seq=starts.cast(pl.UInt32).cum_sum(),
        is_session_end=starts.shift(-1).fill_null(True),
        # Formatted at each session's first step and carried down: one string per session,
        # not per step, is formatted.
        session_id=pl.when(starts)
        .then(pl.format("{}:{}", pl.col("person_id"), pl.col("ts").dt.epoch("ms").cast(pl.String)))
        .forward_fill(),
        step=(pl.col("row") - pl.when(starts).then(pl.col("row")).forward_fill() + 1).cast(
            pl.UInt32
        ),
    ).drop("row", "is_session_start", "same_person")


def id_hash(column: str) -> pl.Expr:
    """A 64-bit hash of an id column, to group and sort by: callers check for collisions."""
    return pl.col(column).hash()


def by_person_and_time(events: pl.LazyFrame) -> pl.DataFrame:
    """`events` sorted by person, then (ts, event_id); persons in the order of a hash of their
    id, each person's events together. Adds `same_person`: the row before is the same person.

    A 64-bit hash sorts faster than the text of the id (10M events: ~3.5 s vs ~5.5 s). Two
    persons sharing a hash would interleave; that leaves neighbouring rows with the same hash
    and different persons, so it is detected and the text is sorted instead. The ids are
    compared once, for that check and for `same_person` both (10M steps: ~1 s a comparison).
    """
    ordered = (
        events.with_columns(_person_hash=id_hash("person_id"))
        .sort("_person_hash", pl.col("ts").dt.epoch("us"), "event_id")
        .with_columns(same_person=_same_as_before("person_id"))
        .collect(engine=IN_MEMORY)
    )
    shared_hash = _same_as_before("_person_hash") & ~pl.col("same_person")
    if ordered.select(shared_hash.any()).item():
        ordered = ordered.sort("person_id", "ts", "event_id").with_columns(
            same_person=_same_as_before("person_id")
        )
    return ordered.drop("_person_hash")


def _same_as_before(column: str) -> pl.Expr:
    """Whether each row's `column` equals the row before's (false on the first row)."""
    return (pl.col(column) == pl.col(column).shift(1)).fill_null(False)


def is_conversion(cfg: ConversionConfig) -> pl.Expr:
    """A step converts when its event type or its URL path matches the `[conversion]` rule."""
    by_event = (
        pl.col("event_type").cast(pl.String).is_in(list(cfg.event_types))
        if cfg.event_types
        else pl.lit(False)
    )
    by_url = (
        url_judged(lambda urls: url_path(urls).str.contains(cfg.url_pattern))
        if cfg.url_pattern
        else pl.lit(False)
    )
    return (by_event | by_url).fill_null(False)


def summarise_sessions(steps: pl.LazyFrame, landing_attributes: pl.LazyFrame) -> pl.LazyFrame:
    """One row per session: timing, landing/exit, device, channel, campaign, outcome.

    Landing attributes come from each session's first step and exit attributes from its
    last; only a narrow frame is grouped. A wide group-by over every step would hold many
    times the steps in memory. `landing_attributes` holds, by `session_seq`, the columns of
    `LANDING_ONLY` that `steps` lacks, taken at each session's first step.
    """
    totals = (
        steps.select("session_seq", "user_id", "revenue", "is_bot", "is_conversion")
        .group_by("session_seq")
        .agg(
            n_steps=pl.len().cast(pl.UInt32),
            user_id=pl.col("user_id").drop_nulls().first(),
            revenue=pl.col("revenue").sum(),
            is_bot=pl.col("is_bot").any(),
            is_converted=pl.col("is_conversion").any(),
        )
    )
    first_steps = steps.filter(pl.col("step") == 1)
    in_steps = [c for c in LANDING_ONLY if c in first_steps.collect_schema().names()]
    landing = (
        first_steps.select(
            "session_seq",
            "session_id",
            "person_id",
            "anonymous_id",
            "stitched_user_id",
            *in_steps,
            started_at="ts",
            landing_url="url",
        )
        .join(landing_attributes, on="session_seq")
        .rename({"host": "landing_host"})
    )
    exits = steps.filter(pl.col("is_session_end")).select(
        "session_seq", ended_at="ts", exit_url="url"
    )
    sessions = (
        landing.join(totals, on="session_seq").join(exits, on="session_seq").drop("session_seq")
    )
    # Stored events may arrive dictionary-encoded; sessions are few enough for plain text.
    text = ["referrer", "landing_host", "user_agent", "utm_source", "utm_medium", "utm_campaign"]
    sessions = sessions.with_columns(pl.col(text).cast(pl.String)).collect(engine=IN_MEMORY)
    agents = classify_user_agents(sessions["user_agent"])
    return (
        sessions.lazy()
        .join(agents.lazy(), on="user_agent", how="left", nulls_equal=True)
        .with_columns(
            user_id=pl.coalesce("user_id", "stitched_user_id"),
            duration_in_s=in_seconds(pl.col("ended_at") - pl.col("started_at")),
            channel=classify_channel(),
        )
        .sort("started_at", "session_id")
        .pipe(conform, SESSIONS)
    )


def classify_channel() -> pl.Expr:
    """Default channel grouping from UTM tags, else the landing referrer (GA4-like)."""
    medium = pl.col("utm_medium").fill_null("").str.to_lowercase()
    source = pl.col("utm_source").fill_null("").str.to_lowercase()
    ref_host = (
        pl.col("referrer")
        .str.extract(r"^(?i:[a-z][a-z0-9+.-]*)://(?:[^@/]*@)?([^/:?#]+)", 1)
        .str.to_lowercase()
    )
    social_source = source.str.contains(SOCIAL_SITES.replace(r"(^|\.)", "^"))
    internal = ref_host.is_not_null() & (ref_host == pl.col("landing_host"))
    return (
        pl.when(medium.str.contains(r"^(cpc|ppc|paid.?search|sem)$") & social_source)
        .then(pl.lit("paid_social"))
        .when(medium.str.contains(r"^(cpc|ppc|paid.?search|sem)$"))
        .then(pl.lit("paid_search"))
        .when(medium.str.contains(r"paid.?social|social.?paid"))
        .then(pl.lit("paid_social"))
        .when(medium.str.contains(r"display|banner|cpm"))
        .then(pl.lit("display"))
        .when(medium.str.contains(r"e-?mail|newsletter") | (source == "newsletter"))
        .then(pl.lit("email"))
        .when(medium.str.contains(r"affiliate"))
        .then(pl.lit("affiliate"))
        .when(medium.str.contains(r"^(social|social-network|social-media|sm)$"))
        .then(pl.lit("organic_social"))
        .when((medium != "") | (source != ""))
        .then(pl.lit("other_campaign"))
        .when(ref_host.is_null() | internal)
        .then(pl.lit("direct"))
        .when(ref_host.str.contains(SEARCH_ENGINES))
        .then(pl.lit("organic_search"))
        .when(ref_host.str.contains(SOCIAL_SITES))
        .then(pl.lit("organic_social"))
        .otherwise(pl.lit("referral"))
    )


def classify_user_agents(user_agents: pl.Series) -> pl.DataFrame:
    """device (desktop/mobile/tablet/bot/other), os and browser for each distinct user agent.

    Parsing runs once per distinct user agent, never per event: a day of traffic has
    millions of events but only thousands of distinct agents.
    """
    from ua_parser import parse

    rows = []
    for ua in user_agents.unique().drop_nulls().to_list():
        result = parse(ua)
        browser = result.user_agent.family if result.user_agent else None
        os_family = result.os.family if result.os else None
        device_family = result.device.family if result.device else None
        rows.append(
            (
                ua,
                _device_class(ua, device_family, os_family),
                os_family or "Other",
                browser or "Other",
            )
        )
    frame = pl.DataFrame(
        rows,
        schema={
            "user_agent": pl.String,
            "device": pl.String,
            "os": pl.String,
            "browser": pl.String,
        },
        orient="row",
    )
    unknown = pl.DataFrame(
        {"user_agent": [None], "device": ["unknown"], "os": ["unknown"], "browser": ["unknown"]},
        schema=frame.schema,
    )
    return pl.concat([frame, unknown])


def _device_class(ua: str, device_family: str | None, os_family: str | None) -> str:
    lowered = ua.lower()
    if device_family == "Spider":
        return "bot"
    if (
        device_family == "iPad"
        or "tablet" in lowered
        or (os_family == "Android" and "mobile" not in lowered)
    ):
        return "tablet"
    if os_family in ("iOS", "Android", "Windows Phone", "BlackBerry OS") or "mobile" in lowered:
        return "mobile"
    if os_family in (
        "Windows",
        "Mac OS X",
        "macOS",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "FreeBSD",
    ):
        return "desktop"
    return "other"


def in_seconds(duration: pl.Expr) -> pl.Expr:
    """A duration in seconds, the same bits however the rows are partitioned.

    Polars divides a column by a constant as a multiplication by its reciprocal, but a
    one-row frame by true division: `/ 1e6` could differ in the last bit between a one-pass
    run and a partitioned one. A multiplication is the same everywhere.
    """
    return duration.dt.total_microseconds() * 1e-6
