-- marts.quarantine_by_reason: rejected input rows per run, file and reason
-- (grain: run_id x source x reason). Every rejected row is in raw.quarantine as read
-- (IP addresses masked as <ip>: a raw IP is never stored).
-- Columns: run_id, source, reason, count_rows, first_source_line, example_raw
create or replace view marts.quarantine_by_reason as
with quarantine as (
    select * from raw.quarantine
),

final as (
    select
        run_id,
        source,
        reason,
        count(*) as count_rows,
        min(source_line) as first_source_line,
        arg_min(raw, source_line) as example_raw,
    from quarantine
    group by all
)

select * from final order by run_id, source, count_rows desc
