-- Every keyed record of the run, with its quality score, bucket and the issues that explain the score.
-- grain: one row per received record with a usable customer_id (run_id, page, position_in_page)
-- materialized: view
-- column email_is_valid: True when email matches ^[^@\s]+@[^@\s]+\.[^@\s]+$.
-- column email_domain: The part after @ of a valid email; 'unknown' otherwise.
-- column engagement_score: engagement_score as a number; NULL when absent, null, unparseable or outside 0..100.
-- column last_activity_at: last_activity_at parsed as ISO-8601; NULL when absent, null or unparseable.
-- column data_quality_score: 100 minus 10 per missing first_name/last_name/email/avatar, 10 for an invalid email, 10 per optional fact present but null/unparseable; never below 0.
-- column quality_bucket: high (>= 90), medium (70-89), low (< 70).
-- column quality_issues: The deductions behind data_quality_score, e.g. missing_email, invalid_email.
with

users as (

    select * from {{ ref('stg_reqres__users') }}
    where is_keyed

),

validated as (

    select
        *,
        regexp_full_match(email, '[^@{{ ws() }}]+@[^@{{ ws() }}]+\.[^@{{ ws() }}]+') as email_is_valid,
        case
            when try_cast(engagement_score_text as double) between 0 and 100
                then try_cast(engagement_score_text as double)
        end as engagement_score,
        -- ISO-8601 only: DuckDB's cast alone would also take words like 'epoch' and 'infinity'
        case
            when regexp_full_match(
                last_activity_text,
                '[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?'
            ) then try_cast(replace(last_activity_text, ',', '.') as timestamptz)
        end as last_activity_at
    from users

),

issues as (

    -- concat_ws skips NULLs: the issues that apply, in a fixed order, comma-separated
    select
        *,
        concat_ws(
            ',',
            case when first_name is null then 'missing_first_name' end,
            case when last_name is null then 'missing_last_name' end,
            case when email is null then 'missing_email' end,
            case when email is not null and not email_is_valid then 'invalid_email' end,
            case when avatar_url is null then 'missing_avatar' end,
            case when has_engagement_score and engagement_score is null then 'invalid_engagement_score' end,
            case when has_last_activity_at and last_activity_at is null then 'invalid_last_activity_at' end
        ) as quality_issues_text
    from validated

),

listed as (

    select
        * exclude (quality_issues_text),
        case
            when quality_issues_text = '' then []::varchar[]
            else string_split(quality_issues_text, ',')
        end as quality_issues
    from issues

),

scored as (

    select
        *,
        greatest(0, 100 - 10 * len(quality_issues))::integer as data_quality_score,
        case
            when email_is_valid then split_part(email, '@', 2)
            else 'unknown'
        end as email_domain
    from listed

),

bucketed as (

    select
        *,
        cast(case
            when data_quality_score >= 90 then 'high'
            when data_quality_score >= 70 then 'medium'
            else 'low'
        end as {{ value_set('quality_bucket') }}) as quality_bucket
    from scored

),

final as (

    select * from bucketed

)

select * from final
