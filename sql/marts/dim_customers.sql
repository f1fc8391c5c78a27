-- The customers of the latest successful sync, deduplicated, scored and enriched. Start here.
-- grain: one row per customer_id
-- materialized: table
-- column customer_id: The API's user id.
-- column full_name: First and last name joined by one space; either alone when the other is missing; NULL when both are.
-- column first_name: First name, whitespace trimmed and collapsed, case kept.
-- column last_name: Last name, whitespace trimmed and collapsed, case kept.
-- column email: Email, trimmed and lower-cased (may be invalid: see quality_issues).
-- column email_domain: Domain of a valid email; 'unknown' otherwise.
-- column avatar_url: Avatar URL, whitespace trimmed.
-- column engagement_level: high / medium / low / unknown: from engagement_score where the record carries it, else a stable hash of the id.
-- column activity_status: active / inactive / unknown: from last_activity_at (90 days before the run) where carried, else a stable hash of the id.
-- column acquisition_channel: website / mobile_app / email_campaign (stable hash of the id).
-- column market_segment: US-West / US-East / EU-Central / APAC (stable hash of the id).
-- column customer_tier: basic / premium / enterprise (stable hash of the id).
-- column engagement_score: The record's engagement_score (0-100) when it carried a valid one.
-- column last_activity_at: The record's last_activity_at when it carried a valid one.
-- column data_quality_score: 0-100: 100 minus 10 per issue in quality_issues.
-- column quality_bucket: high (>= 90), medium (70-89), low (< 70).
-- column quality_issues: Why the score is below 100: missing_first_name, missing_last_name, missing_email, invalid_email, missing_avatar, invalid_engagement_score, invalid_last_activity_at.
-- column records_received: Records the latest run received for this id (> 1 means duplicates were merged).
-- column source_page: Page of the record that won the deduplication.
-- column first_seen_at: When a run first received this id, of the runs whose pages are kept (all, unless --keep-runs prunes them).
-- column last_seen_at: When a run last received this id.
-- column runs_seen: How many runs received this id, of the runs whose pages are kept (1: first seen in the latest sync).
-- column run_id: The run this row describes.
with

customers as (

    select * from {{ ref('int_customers_enriched') }}

),

sightings as (

    select * from {{ ref('int_customer_sightings') }}

),

history as (

    select
        customer_id,
        min(seen_at) as first_seen_at,
        max(seen_at) as last_seen_at,
        count(*) as runs_seen
    from sightings
    group by customer_id

),

named as (

    select
        customers.*,
        nullif(concat_ws(' ', customers.first_name, customers.last_name), '') as full_name
    from customers

),

final as (

    select
        ---------- ids
        named.customer_id,

        ---------- strings
        named.full_name,
        named.first_name,
        named.last_name,
        named.email,
        named.email_domain,
        named.avatar_url,
        named.engagement_level,
        named.activity_status,
        named.acquisition_channel,
        named.market_segment,
        named.customer_tier,

        ---------- numerics
        named.engagement_score,
        named.data_quality_score,
        named.quality_bucket,
        named.quality_issues,
        named.records_received,
        named.page as source_page,

        ---------- timestamps
        named.last_activity_at,
        history.first_seen_at,
        history.last_seen_at,
        history.runs_seen,

        ---------- lineage
        named.run_id
    from named
    left join history
        on named.customer_id = history.customer_id

)

select * from final
