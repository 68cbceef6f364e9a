-- marts.conversion_by_segment: conversion of human sessions per segment
-- (grain: segment_type x segment_value). Each session counts once per segment_type, so
-- count_sessions sums to the human sessions within every segment_type. segment_type is one
-- of device, browser, os, channel, landing_touchpoint (first touchpoint of the journey),
-- landing_path (landing URL without query) and utm_campaign; a missing value is 'unknown'
-- ('(none)' for utm_campaign). The interval is the 95 % Wilson score interval (z = 1.96,
-- as pipeline.graph.wilson_interval): exact 0 without conversions, exact 1 when all converted.
-- Columns: segment_type, segment_value, count_sessions, count_converted_sessions,
--          conversion_rate, conversion_rate_low, conversion_rate_high, revenue,
--          revenue_per_session
create or replace view marts.conversion_by_segment as
with sessions as (
    select * from staging.stg_sessions where not is_bot
),

journey_steps as (
    select * from marts.journey_steps
),

landing_touchpoints as (
    select
        session_id,
        touchpoint as landing_touchpoint,
    from journey_steps
    where position = 1
),

session_segments as (
    select
        sessions.session_id,
        sessions.is_converted,
        coalesce(sessions.revenue, 0) as revenue,
        coalesce(sessions.device, 'unknown') as device,
        coalesce(sessions.browser, 'unknown') as browser,
        coalesce(sessions.os, 'unknown') as os,
        coalesce(sessions.channel, 'unknown') as channel,
        coalesce(landing_touchpoints.landing_touchpoint, 'unknown') as landing_touchpoint,
        coalesce(sessions.landing_path, 'unknown') as landing_path,
        coalesce(sessions.utm_campaign, '(none)') as utm_campaign,
    from sessions
    left join landing_touchpoints using (session_id)
),

segment_rows as (
    unpivot session_segments
    on device, browser, os, channel, landing_touchpoint, landing_path, utm_campaign
    into name segment_type value segment_value
),

aggregated as (
    select
        segment_type,
        segment_value,
        count(*) as count_sessions,
        count(*) filter (where is_converted) as count_converted_sessions,
        sum(revenue) as revenue,
    from segment_rows
    group by all
),

wilson as (
    select
        *,
        count_converted_sessions / count_sessions as conversion_rate,
        1.96 as z,
        z * z / count_sessions as z2n,
        (conversion_rate + z2n / 2) / (1 + z2n) as centre,
        z * sqrt(
            conversion_rate * (1 - conversion_rate) / count_sessions + z2n / (4 * count_sessions)
        ) / (1 + z2n) as half_width,
    from aggregated
),

final as (
    select
        segment_type,
        segment_value,
        count_sessions,
        count_converted_sessions,
        conversion_rate,
        case
            when count_converted_sessions = 0 then 0.0
            else greatest(centre - half_width, 0.0)
        end as conversion_rate_low,
        case
            when count_converted_sessions = count_sessions then 1.0
            else least(centre + half_width, 1.0)
        end as conversion_rate_high,
        revenue,
        revenue / count_sessions as revenue_per_session,
    from wilson
)

select * from final order by segment_type, count_sessions desc, segment_value
