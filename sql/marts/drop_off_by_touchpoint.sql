-- marts.drop_off_by_touchpoint: where human journeys end without converting
-- (grain: touchpoint). A session reaches a touchpoint when its journey
-- (marts.journey_steps) visits it; it exits there when its journey ends there and the
-- session did not convert (the definition of marts.touchpoints.exit_rate). next_touchpoint
-- is the touchpoint most often visited right after it (ties: alphabetical; null when
-- journeys only end there).
-- Columns: touchpoint, stage, count_sessions, count_exit_sessions, count_converted_sessions,
--          exit_rate, next_touchpoint, count_next_transitions
create or replace view marts.drop_off_by_touchpoint as
with journey_steps as (
    select * from marts.journey_steps
),

sessions as (
    select * from marts.sessions where not is_bot
),

steps as (
    select
        journey_steps.session_id,
        journey_steps.position,
        journey_steps.touchpoint,
        journey_steps.stage,
        sessions.is_converted,
        lead(journey_steps.touchpoint) over (
            partition by journey_steps.session_id order by journey_steps.position
        ) as next_touchpoint,
    from journey_steps
    join sessions using (session_id)
),

reached as (
    select
        session_id,
        touchpoint,
        any_value(stage) as stage,
        any_value(is_converted) as is_converted,
        -- the journey's last step is the only one without a next touchpoint
        bool_or(next_touchpoint is null) as is_last_touchpoint,
    from steps
    group by session_id, touchpoint
),

reach_by_touchpoint as (
    select
        touchpoint,
        any_value(stage) as stage,
        count(*) as count_sessions,
        count(*) filter (where is_last_touchpoint and not is_converted) as count_exit_sessions,
        count(*) filter (where is_converted) as count_converted_sessions,
    from reached
    group by touchpoint
),

next_steps as (
    select
        touchpoint,
        next_touchpoint,
        count(*) as count_next_transitions,
    from steps
    where next_touchpoint is not null
    group by touchpoint, next_touchpoint
    qualify row_number() over (
        partition by touchpoint order by count_next_transitions desc, next_touchpoint
    ) = 1
),

final as (
    select
        reach_by_touchpoint.touchpoint,
        reach_by_touchpoint.stage,
        reach_by_touchpoint.count_sessions,
        reach_by_touchpoint.count_exit_sessions,
        reach_by_touchpoint.count_converted_sessions,
        reach_by_touchpoint.count_exit_sessions
            / reach_by_touchpoint.count_sessions as exit_rate,
        next_steps.next_touchpoint,
        coalesce(next_steps.count_next_transitions, 0) as count_next_transitions,
    from reach_by_touchpoint
    left join next_steps using (touchpoint)
)

select * from final order by count_exit_sessions desc, touchpoint
