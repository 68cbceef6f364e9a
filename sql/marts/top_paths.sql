-- marts.top_paths: the most frequent journeys, touchpoint by touchpoint, per outcome
-- (grain: outcome x rank), from the exact (unfolded) paths of marts.paths.
-- n_steps counts the touchpoints in the path; share is of all sessions with that outcome.
-- Columns: outcome, rank, path, n_steps, n_sessions, share, median_seconds_to_convert
create or replace view marts.top_paths as
with paths as (
    select * from marts.paths where variant = 'exact'
),

final as (
    select
        outcome,
        rank,
        path,
        len(string_split(path, ' > ')) as n_steps,
        n_sessions,
        share,
        median_seconds_to_convert,
    from paths
)

select * from final order by outcome, rank
