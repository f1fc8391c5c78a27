-- The users of the run being built, one row per record exactly as received: typed, trimmed, standardized.
-- grain: one row per received record (run_id, page, position_in_page); records without a usable id are kept (is_keyed = false)
-- materialized: table
-- column run_id: The run whose pages these records came from: the latest run whose extraction completed.
-- column page: API page the record was received on.
-- column position_in_page: 1-based position of the record within its page.
-- column fetched_at: When the page was fetched (UTC).
-- column run_started_at: When the run started; activity recency is measured against it.
-- column customer_id: The API's id as an integer; NULL when missing or not an integer ("7" casts, "abc" does not).
-- column is_keyed: True when the record has a usable customer_id; false rows go to marts.quarantined_records.
-- column quarantine_reason: Why an unkeyed record cannot be used: not_an_object, missing_id or invalid_id.
-- column first_name: First name, whitespace trimmed and collapsed, case kept; NULL when blank or missing.
-- column last_name: Last name, whitespace trimmed and collapsed, case kept; NULL when blank or missing.
-- column email: Email trimmed and lower-cased; NULL when blank or missing. Not validated here.
-- column avatar_url: Avatar URL trimmed; NULL when blank or missing.
-- column has_engagement_score: True when the record carries the optional engagement_score key (even as null).
-- column engagement_score_text: engagement_score as sent, as text (NULL when null or absent).
-- column has_last_activity_at: True when the record carries the optional last_activity_at key (even as null).
-- column last_activity_text: last_activity_at as sent, as text (NULL when null or absent).
-- column record: The record's JSON exactly as received.
with

runs as (

    select * from {{ source('raw', 'runs') }}

),

api_pages as (

    select * from {{ source('raw', 'api_pages') }}

),

current_run as (

    -- the marts describe the latest run whose extraction completed
    select
        run_id,
        started_at
    from runs
    where extracted_at is not null
    order by run_id desc
    limit 1

),

run_pages as (

    select
        api_pages.run_id,
        api_pages.page,
        api_pages.fetched_at,
        current_run.started_at as run_started_at,
        json_extract(api_pages.body, '$.data[*]') as records
    from api_pages
    inner join current_run
        on api_pages.run_id = current_run.run_id

),

received as (

    select
        run_id,
        page,
        fetched_at,
        run_started_at,
        unnest(records) as record,
        generate_subscripts(records, 1) as position_in_page
    from run_pages

),

extracted as (

    select
        *,
        json_type(record) = 'OBJECT' as is_object,
        trim(record ->> 'id') as id_text,
        record ->> 'first_name' as first_name_text,
        record ->> 'last_name' as last_name_text,
        record ->> 'email' as email_text,
        record ->> 'avatar' as avatar_text,
        json_exists(record, '$.engagement_score') as has_engagement_score,
        record ->> 'engagement_score' as engagement_score_text,
        json_exists(record, '$.last_activity_at') as has_last_activity_at,
        record ->> 'last_activity_at' as last_activity_text
    from received

),

standardized as (

    select
        ---------- ids
        run_id,
        page,
        position_in_page,
        case
            when regexp_full_match(id_text, '-?[0-9]{1,18}') then id_text::bigint
        end as customer_id,

        ---------- strings
        nullif(trim(regexp_replace(first_name_text, '[[:space:]]+', ' ', 'g')), '') as first_name,
        nullif(trim(regexp_replace(last_name_text, '[[:space:]]+', ' ', 'g')), '') as last_name,
        nullif(lower(regexp_replace(email_text, '^[[:space:]]+|[[:space:]]+$', '', 'g')), '') as email,
        nullif(regexp_replace(avatar_text, '^[[:space:]]+|[[:space:]]+$', '', 'g'), '') as avatar_url,
        engagement_score_text,
        last_activity_text,
        case
            when not is_object then 'not_an_object'
            when id_text is null then 'missing_id'
            when not regexp_full_match(id_text, '-?[0-9]{1,18}') then 'invalid_id'
        end as quarantine_reason,

        ---------- booleans
        coalesce(is_object, false) and coalesce(regexp_full_match(id_text, '-?[0-9]{1,18}'), false) as is_keyed,
        coalesce(has_engagement_score, false) as has_engagement_score,
        coalesce(has_last_activity_at, false) as has_last_activity_at,

        ---------- timestamps
        fetched_at,
        run_started_at,

        ---------- raw
        record
    from extracted

),

final as (

    select * from standardized

)

select * from final
