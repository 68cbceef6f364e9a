-- marts.blocker_summary: the ranked conversion blockers as a Pareto table
-- (grain: blocker, one row per rank of marts.blockers). share_of_lost_conversions is the
-- blocker's part of the conversions all blockers cost; cumulative_share adds them up in rank
-- order, so the last row is 1.
-- Columns: rank, touchpoint, segment, kind, lost_conversions, share_of_lost_conversions,
--          cumulative_share, n_sessions, evidence
create or replace view marts.blocker_summary as
with blockers as (
    select * from marts.blockers
),

final as (
    select
        rank,
        touchpoint,
        segment,
        kind,
        lost_conversions,
        lost_conversions / nullif(sum(lost_conversions) over (), 0) as share_of_lost_conversions,
        sum(lost_conversions) over (order by rank rows unbounded preceding)
            / nullif(sum(lost_conversions) over (), 0) as cumulative_share,
        n_sessions,
        evidence,
    from blockers
)

select * from final order by rank
