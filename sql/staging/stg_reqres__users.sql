-- The users of the run being built, one row per record exactly as received: typed, trimmed, standardized.
-- grain: one row per received record (page, position_in_page) of the latest run whose extraction completed; records without a usable id are kept (is_keyed = false)
-- materialized: table
-- inputs: latest_run
-- incremental: by_page
-- column page: API page the record was received on.
-- column position_in_page: 1-based position of the record within its page.
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
-- column record: The record's JSON exactly as received, for records that cannot be keyed (NULL otherwise).
with

api_pages as (

    select * from {{ source('raw', 'api_pages') }}

),

run_pages as (

    select
        page,
        json_extract(body, '$.data[*]') as records
    from api_pages
    where run_id = {{ latest_extracted_run() }}

),

received as materialized (

    -- materialized on purpose: a run's pages are few rows (one per page), which DuckDB scans
    -- on one thread; the unnested records are many, so parsing them from this CTE runs on
    -- every thread (2.0x faster at 1M records on 2 cores, benchmarks/scale_bench.py)
    select
        page,
        unnest(records) as record,
        generate_subscripts(records, 1) as position_in_page
    from run_pages

),

parsed as (

    -- each record parsed once into the fields we read, and once for its shape: the JSON
    -- types of the record and of its optional keys (a key sent as null has type 'NULL',
    -- a key not sent has none). One parse for the three; json_keys + json_type took two.
    select
        page,
        position_in_page,
        record,
        json_transform(
            record,
            '{"id": "VARCHAR", "first_name": "VARCHAR", "last_name": "VARCHAR", "email": "VARCHAR",
              "avatar": "VARCHAR", "engagement_score": "VARCHAR", "last_activity_at": "VARCHAR"}'
        ) as fields,
        json_type(record, ['$', '$.engagement_score', '$.last_activity_at']) as types
    from received

),

extracted as (

    select
        page,
        position_in_page,
        record,
        types[1] = 'OBJECT' as is_object,
        {{ trim_text('fields.id') }} as id_text,
        fields.first_name as first_name_text,
        fields.last_name as last_name_text,
        fields.email as email_text,
        fields.avatar as avatar_text,
        types[2] is not null as has_engagement_score,
        fields.engagement_score as engagement_score_text,
        types[3] is not null as has_last_activity_at,
        fields.last_activity_at as last_activity_text
    from parsed

),

standardized as (

    select
        ---------- ids
        page,
        position_in_page,
        case
            when regexp_full_match(id_text, '-?[0-9]{1,18}') then id_text::bigint
        end as customer_id,

        ---------- strings
        {{ clean_text('first_name_text') }} as first_name,
        {{ clean_text('last_name_text') }} as last_name,
        lower({{ trim_text('email_text') }}) as email,
        {{ trim_text('avatar_text') }} as avatar_url,
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

        ---------- raw
        -- kept for records that cannot be keyed (they go to quarantine as received)
        case when not is_object or not regexp_full_match(coalesce(id_text, ''), '-?[0-9]{1,18}') then record end as record
    from extracted

),

final as (

    select * from standardized

)

select * from final
