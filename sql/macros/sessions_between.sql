-- marts.sessions_between(start_date, end_date): the human sessions that started on a UTC
-- day from start_date to end_date, both included, as a table macro (grain: session_id).
-- Dates may be given as DATE values or 'YYYY-MM-DD' strings.
-- Usage: select channel, count(*) from marts.sessions_between('2026-10-01', '2026-10-07') group by all
-- Columns: those of staging.stg_sessions
create or replace macro marts.sessions_between(start_date, end_date) as table
with sessions as (
    select * from staging.stg_sessions where not is_bot
),

final as (
    select *
    from sessions
    where session_date between cast(start_date as date) and cast(end_date as date)
)

select * from final order by started_at, session_id
