-- marts.sessions_by_day: human sessions per UTC day, channel and device
-- (grain: session_date x channel x device). Bots are excluded, as in every journey metric.
-- Columns: session_date, channel, device, count_sessions, count_persons,
--          count_converted_sessions, conversion_rate, revenue
create or replace view marts.sessions_by_day as
with sessions as (
    select * from marts.sessions where not is_bot
),

final as (
    select
        cast(started_at as date) as session_date,
        channel,
        device,
        count(*) as count_sessions,
        count(distinct person_id) as count_persons,
        count(*) filter (where is_converted) as count_converted_sessions,
        count(*) filter (where is_converted) / count(*) as conversion_rate,
        coalesce(sum(revenue), 0) as revenue,
    from sessions
    group by all
)

select * from final order by session_date, channel, device
