-- marts.transition_probabilities: how journeys move on from each touchpoint
-- (grain: from_touchpoint x to_touchpoint), from marts.transitions (human journeys, START,
-- CONVERSION and EXIT included). probability is the edge's share of all transitions leaving
-- from_touchpoint, so it sums to 1 per from_touchpoint; rank_from = 1 is its most taken edge
-- (ties share a rank).
-- Columns: from_touchpoint, to_touchpoint, n_transitions, n_sessions, probability,
--          rank_from, median_seconds
create or replace view marts.transition_probabilities as
with transitions as (
    select * from marts.transitions
),

final as (
    select
        from_touchpoint,
        to_touchpoint,
        n_transitions,
        n_sessions,
        n_transitions / sum(n_transitions) over (partition by from_touchpoint) as probability,
        rank() over (
            partition by from_touchpoint order by n_transitions desc
        ) as rank_from,
        median_seconds,
    from transitions
)

select * from final order by from_touchpoint, rank_from, to_touchpoint
