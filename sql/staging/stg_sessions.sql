-- staging.stg_sessions: one row per session, human and bot (grain: session_id), 1:1 with
-- marts.sessions. Adds the UTC date and hour, the duration in minutes, the landing and exit
-- URL paths (query removed) and the session's number among its person's sessions.
-- Columns: session_id, person_id, anonymous_id, user_id, started_at, ended_at, session_date,
--          started_hour, duration_in_s, duration_in_min, n_steps, landing_url, landing_path,
--          exit_url, exit_path, referrer, device, os, browser, channel, utm_source,
--          utm_medium, utm_campaign, revenue, is_bot, is_converted,
--          session_index_for_person (1 = the person's first session in the database),
--          is_first_session_for_person
create or replace view staging.stg_sessions as
with sessions as (
    select * from marts.sessions
),

final as (
    select
        session_id,
        person_id,
        anonymous_id,
        user_id,
        started_at,
        ended_at,
        cast(started_at as date) as session_date,
        hour(started_at) as started_hour,
        duration_in_s,
        duration_in_s / 60 as duration_in_min,
        n_steps,
        landing_url,
        regexp_replace(landing_url, '\?.*$', '') as landing_path,
        exit_url,
        regexp_replace(exit_url, '\?.*$', '') as exit_path,
        referrer,
        device,
        os,
        browser,
        channel,
        utm_source,
        utm_medium,
        utm_campaign,
        revenue,
        is_bot,
        is_converted,
        row_number() over (
            partition by person_id order by started_at, session_id
        ) as session_index_for_person,
        session_index_for_person = 1 as is_first_session_for_person,
    from sessions
)

select * from final
