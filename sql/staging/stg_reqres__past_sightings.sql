-- Customer ids seen by earlier runs (every completed run but the latest), read from their raw pages.
-- The latest run's ids come from stg_reqres__users instead, which has parsed them already.
-- Kept, not rebuilt: a build parses only the pages of runs the table does not hold yet, so a
-- daily sync does not get slower with every run before it.
-- grain: one row per (run_id, customer_id) over every completed run before the latest
-- materialized: table
-- inputs: all_runs
-- incremental: by_run
-- column run_id: The run that received the id.
-- column customer_id: The API's id as an integer (records without a usable id are left out).
-- column seen_at: When the first page carrying the id in that run was fetched (UTC).
with

runs as (

    select * from {{ source('raw', 'runs') }}

),

api_pages as (

    select * from {{ source('raw', 'api_pages') }}

),

extracted_runs as (

    select run_id
    from runs
    where extracted_at is not null
        and run_id != {{ latest_extracted_run() }}
        {%- if is_incremental() %}
        -- the runs held already: their pages have not changed since
        and run_id not in (select run_id from {{ this }})
        {%- endif %}

),

ids as (

    select
        api_pages.run_id,
        api_pages.fetched_at,
        unnest(json_extract_string(api_pages.body, '$.data[*].id')) as id_text_raw
    from api_pages
    inner join extracted_runs
        on api_pages.run_id = extracted_runs.run_id

),

trimmed as (

    select
        run_id,
        fetched_at,
        {{ trim_text('id_text_raw') }} as id_text
    from ids

),

typed as (

    select
        run_id,
        id_text::bigint as customer_id,
        fetched_at
    from trimmed
    where regexp_full_match(id_text, '-?[0-9]{1,18}')

),

final as (

    select
        run_id,
        customer_id,
        min(fetched_at) as seen_at
    from typed
    group by run_id, customer_id

)

select * from final
