-- Baseline: the core job in plain DuckDB SQL, window functions over the events, the way an
-- analyst writes it (definitions: bench/definitions.py). `$name` values are bound by
-- core_duckdb.py, which also writes the `when` lines of the touchpoint CASE in place of the
-- marker comment there: one line per rule of the shared rule table, in order.

create temp table steps as
with

events as (
    -- exact duplicate rows out
    select distinct event_id, ts, anonymous_id, user_id, event_type, url, status
    from read_parquet($events_path)
),

first_logins as (
    select
        anonymous_id,
        first(user_id order by ts, user_id) as stitched_user_id,
    from events
    where user_id is not null
    group by anonymous_id
),

persons as (
    select
        events.*,
        coalesce(
            'u:' || events.user_id,
            'u:' || first_logins.stitched_user_id,
            'a:' || events.anonymous_id
        ) as person_id,
    from events
    left join first_logins using (anonymous_id)
),

gaps as (
    select
        *,
        coalesce(
            epoch_us(ts) - lag(epoch_us(ts)) over by_person > $timeout_s * 1000000,
            true
        ) as is_session_start,
    from persons
    window by_person as (partition by person_id order by ts, event_id)
),

sessionised as (
    select
        *,
        sum(is_session_start::integer) over (
            partition by person_id order by ts, event_id rows unbounded preceding
        ) as session_number,
    from gaps
),

-- Touchpoint and conversion once per distinct (url, event_type, status), joined back: a
-- catalogue has far fewer URLs than a day has events.
touchpoint_keys as (
    select distinct url, event_type, status,
    from events
),

key_paths as (
    select
        *,
        regexp_replace(url, '[?#].*$', '') as url_path,
    from touchpoint_keys
),

usable_urls as (
    select
        *,
        -- a URL rule never matches an event without a usable URL
        coalesce(
            url_path is not null
            and not (url_path = '' or (url_path = '/' and event_type <> $page_view)),
            false
        ) as has_url,
    from key_paths
),

touchpoints as (
    select
        url,
        event_type,
        status,
        case
            -- (touchpoint rules)
            else event_type
        end as touchpoint,
        coalesce(
            list_contains($conversion_event_types, event_type)
            or regexp_matches(regexp_replace(url, '\?.*$', ''), $conversion_url_pattern),
            false
        ) as is_conversion,
    from usable_urls
),

final as (
    select
        sessionised.person_id,
        sessionised.session_number,
        sessionised.ts,
        sessionised.event_id,
        touchpoints.touchpoint,
        touchpoints.is_conversion,
    from sessionised
    inner join touchpoints
        on sessionised.url is not distinct from touchpoints.url
        and sessionised.event_type is not distinct from touchpoints.event_type
        and sessionised.status is not distinct from touchpoints.status
)

select * from final;


create temp table sessions as
select
    person_id,
    session_number,
    min(ts) as started_at,
    count(*) as n_events,
    bool_or(is_conversion) as is_converted,
from steps
group by person_id, session_number;


create temp table transitions as
with

ordered_steps as (
    select
        *,
        lag(touchpoint) over by_session as previous_touchpoint,
        coalesce(
            sum(is_conversion::integer) over (
                by_session rows between unbounded preceding and 1 preceding
            ),
            0
        ) as n_conversions_before,
    from steps
    window by_session as (partition by person_id, session_number order by ts, event_id)
),

journey_steps as (
    -- repeats collapsed; nothing after the first conversion step
    select person_id, session_number, ts, event_id, touchpoint,
    from ordered_steps
    where n_conversions_before = 0 and previous_touchpoint is distinct from touchpoint
),

inner_edges as (
    select
        coalesce(lag(touchpoint) over by_session, 'START') as from_touchpoint,
        touchpoint as to_touchpoint,
    from journey_steps
    window by_session as (partition by person_id, session_number order by ts, event_id)
),

last_steps as (
    select
        person_id,
        session_number,
        last(touchpoint order by ts, event_id) as touchpoint,
    from journey_steps
    group by person_id, session_number
),

end_edges as (
    select
        last_steps.touchpoint as from_touchpoint,
        case when sessions.is_converted then 'CONVERSION' else 'EXIT' end as to_touchpoint,
    from last_steps
    inner join sessions using (person_id, session_number)
),

final as (
    select from_touchpoint, to_touchpoint, count(*) as n_transitions,
    from (select * from inner_edges union all select * from end_edges)
    group by from_touchpoint, to_touchpoint
)

select * from final;


copy (select person_id, started_at, n_events, is_converted, from sessions)
to $sessions_path (format parquet);

copy transitions to $transitions_path (format parquet);
