-- staging.stg_events: one row per stored event (grain: event_id), 1:1 with raw.events.
-- Adds the UTC date and the URL path (query removed) analysts filter on most.
-- Columns: event_id, ts, event_date, anonymous_id, user_id, event_type, url, url_path, host,
--          referrer, user_agent, status, revenue, utm_source, utm_medium, utm_campaign,
--          source, source_line, run_id
create or replace view staging.stg_events as
with events as (
    select * from raw.events
),

final as (
    select
        event_id,
        ts,
        cast(ts as date) as event_date,
        anonymous_id,
        user_id,
        event_type,
        url,
        regexp_replace(url, '\?.*$', '') as url_path,
        host,
        referrer,
        user_agent,
        status,
        revenue,
        utm_source,
        utm_medium,
        utm_campaign,
        source,
        source_line,
        run_id,
    from events
)

select * from final
