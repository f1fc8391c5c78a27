-- The run the marts describe: the latest run whose extraction completed.
-- grain: one row (none before the first run lands)
-- materialized: view
-- column run_id: The run's id in raw.runs.
-- column started_at: When the run started; activity recency is measured against it.
-- column source_url: The API the run read (without secrets).
with

runs as (

    select * from {{ source('raw', 'runs') }}

),

final as (

    select
        run_id,
        started_at,
        source_url
    from runs
    where run_id = {{ latest_extracted_run() }}

)

select * from final
