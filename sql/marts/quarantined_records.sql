-- Records of the latest run that cannot be keyed (no usable id): kept here with the reason, never dropped silently.
-- grain: one row per unkeyed received record (run_id, page, position_in_page)
-- materialized: table
-- column reason: not_an_object, missing_id or invalid_id.
-- column record: The record exactly as received.
with

users as (

    select * from {{ ref('stg_reqres__users') }}

),

quarantined as (

    select
        run_id,
        page,
        position_in_page,
        quarantine_reason as reason,
        record,
        fetched_at
    from users
    where not is_keyed

),

final as (

    select * from quarantined

)

select * from final
