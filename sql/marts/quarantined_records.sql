-- Records of the latest run that cannot be keyed (no usable id): kept here with the reason, never dropped silently.
-- grain: one row per unkeyed received record of the latest run (page, position_in_page)
-- column page: API page the record was received on.
-- column position_in_page: 1-based position of the record within its page.
-- materialized: table
-- column reason: not_an_object, missing_id or invalid_id.
-- column record: The record exactly as received.
with

users as (

    select * from {{ ref('stg_reqres__users') }}

),

quarantined as (

    select
        page,
        position_in_page,
        quarantine_reason as reason,
        record
    from users
    where not is_keyed

),

final as (

    select * from quarantined

)

select * from final
