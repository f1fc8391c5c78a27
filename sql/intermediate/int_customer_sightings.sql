-- Every time a run saw a customer id: the history behind first_seen_at / last_seen_at.
-- The latest run's ids come from its parsed records; earlier runs' from their raw pages.
-- grain: one row per (run_id, customer_id) over every run whose extraction completed
-- materialized: view
-- column run_id: The run that received the id.
-- column customer_id: The API's id.
-- column seen_at: When the first page carrying the id in that run was fetched (UTC).
with

users as (

    select * from {{ ref('stg_reqres__users') }}

),

pages as (

    select * from {{ ref('stg_reqres__pages') }}

),

current_run as (

    select * from {{ ref('stg_pipeline__current_run') }}

),

past_sightings as (

    select * from {{ ref('stg_reqres__past_sightings') }}

),

latest_sightings as (

    select
        current_run.run_id,
        users.customer_id,
        min(pages.fetched_at) as seen_at
    from users
    cross join current_run
    inner join pages
        on pages.run_id = current_run.run_id
        and pages.page = users.page
    where users.is_keyed
    group by current_run.run_id, users.customer_id

),

final as (

    select * from latest_sightings
    union all
    select * from past_sightings

)

select * from final
