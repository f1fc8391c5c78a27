-- The run the marts describe: the latest run whose extraction completed, as of the last publish.
-- A table, published with the marts: after a build that failed, the views below it still
-- describe the published run, not the run that failed.
-- grain: one row (none before the first run lands)
-- materialized: table
-- inputs: all_runs
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
