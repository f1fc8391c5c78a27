-- Every landed page of every run, without its body: when it was fetched and how many records it held.
-- grain: one row per (run_id, page)
-- materialized: view
-- column run_id: The run that fetched the page.
-- column page: Page number.
-- column fetched_at: When the page was fetched (UTC).
-- column http_status: HTTP status of the answer that was landed (always 200).
-- column attempts: Requests it took (1 = no retry).
-- column record_count: Records in the page's data list.
with

api_pages as (

    select * from {{ source('raw', 'api_pages') }}

),

final as (

    select
        run_id,
        page,
        fetched_at,
        http_status,
        attempts,
        record_count
    from api_pages

)

select * from final
