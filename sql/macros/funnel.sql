-- marts.funnel(steps): an ordered funnel over human journeys, as a table macro
-- (grain: funnel step; one row per element of steps). A session counts at step k when its
-- journey (marts.journey_steps in position order) visits steps[1], ..., steps[k] in this
-- order, other touchpoints in between allowed: the definition of pipeline.funnels.funnel,
-- with the same counts. Each step is matched greedily at its first visit after the previous
-- step's match, which leaves the most room for the steps after it. Counts never rise.
-- Step 1 is compared with all journeys: its conversion_from_previous is its share of them
-- and its count_dropped the journeys that never reach it.
-- Usage: select * from marts.funnel(['product', 'cart', 'checkout_shipping'])
-- Columns: step_index, touchpoint, count_sessions, share_of_first,
--          conversion_from_previous, count_dropped
create or replace macro marts.funnel(steps) as table
with recursive journey_steps as (
    select * from marts.journey_steps
),

sessions as (
    select * from marts.sessions where not is_bot
),

journeys as (
    select
        journey_steps.session_id,
        list(journey_steps.touchpoint order by journey_steps.position) as touchpoints,
    from journey_steps
    join sessions using (session_id)
    group by journey_steps.session_id
),

funnel_steps as (
    select
        generate_subscripts(steps, 1) as step_index,
        unnest(steps) as touchpoint,
),

-- one row per session and funnel step it reached; matched_at is the 1-based journey
-- position where that step was matched (0 before the first step)
reached(session_id, step_index, matched_at) as (
    select
        session_id,
        0,
        0,
    from journeys

    union all

    select
        reached.session_id,
        reached.step_index + 1,
        reached.matched_at + list_position(
            journeys.touchpoints[reached.matched_at + 1:], steps[reached.step_index + 1]
        ),
    from reached
    join journeys using (session_id)
    where
        reached.step_index < len(steps)
        and list_position(
            journeys.touchpoints[reached.matched_at + 1:], steps[reached.step_index + 1]
        ) is not null
),

counted as (
    select
        funnel_steps.step_index,
        funnel_steps.touchpoint,
        count(reached.session_id) as count_sessions,
    from funnel_steps
    left join reached using (step_index)
    group by funnel_steps.step_index, funnel_steps.touchpoint
),

with_previous as (
    select
        step_index,
        touchpoint,
        count_sessions,
        coalesce(
            lag(count_sessions) over (order by step_index),
            (select count(*) from journeys)
        ) as count_previous,
        first(count_sessions) over (
            order by step_index rows between unbounded preceding and unbounded following
        ) as count_first,
    from counted
),

final as (
    select
        step_index,
        touchpoint,
        count_sessions,
        -- 0 rather than null when there is nothing to compare with, as the Python funnel
        coalesce(count_sessions / nullif(count_first, 0), 0.0) as share_of_first,
        coalesce(count_sessions / nullif(count_previous, 0), 0.0) as conversion_from_previous,
        count_previous - count_sessions as count_dropped,
    from with_previous
)

select * from final order by step_index
