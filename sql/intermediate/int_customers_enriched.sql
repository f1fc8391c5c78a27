-- Each customer with the seed's enrichment fields: from the record's own facts where it carries them,
-- otherwise from a stable md5 hash of the customer id (same id -> same value, on every DuckDB version):
-- one md5 of the id, read as five independent 24-bit draws (hex digits 1-6, 7-12, 13-18, 19-24, 25-30).
-- grain: one row per customer_id
-- materialized: view
-- column engagement_level: high (score >= 70), medium (40-69), low (< 40), unknown (key present but null/unparseable); hashed when the record has no engagement_score.
-- column activity_status: active (last activity within 90 days before the run started), inactive (older), unknown (key present but null/unparseable); hashed when absent.
-- column acquisition_channel: website, mobile_app or email_campaign (hashed).
-- column market_segment: US-West, US-East, EU-Central or APAC (hashed).
-- column customer_tier: basic (60%), premium (30%) or enterprise (10%) (hashed).
-- column run_id: The run the row describes (stg_pipeline__current_run).
-- column run_started_at: When that run started: activity recency is measured against it.
-- column engagement_draw: Hex digits 1-6 of md5(customer_id) as a number: engagement_level's hash.
-- column activity_draw: Hex digits 7-12 of md5(customer_id): activity_status's hash.
-- column channel_draw: Hex digits 13-18 of md5(customer_id): acquisition_channel's hash.
-- column segment_draw: Hex digits 19-24 of md5(customer_id): market_segment's hash.
-- column tier_draw: Hex digits 25-30 of md5(customer_id): customer_tier's hash.
with

customers as (

    select * from {{ ref('int_customers_deduplicated') }}

),

current_run as (

    select * from {{ ref('stg_pipeline__current_run') }}

),

with_run as (

    select
        customers.*,
        current_run.run_id,
        current_run.started_at as run_started_at
    from customers
    cross join current_run

),

digested as (

    select
        *,
        md5(customer_id::varchar) as id_md5
    from with_run

),

hashed as (

    -- five independent draws from one digest: one md5 per customer, not one per field
    select
        * exclude (id_md5),
        ('0x' || substr(id_md5, 1, 6))::ubigint as engagement_draw,
        ('0x' || substr(id_md5, 7, 6))::ubigint as activity_draw,
        ('0x' || substr(id_md5, 13, 6))::ubigint as channel_draw,
        ('0x' || substr(id_md5, 19, 6))::ubigint as segment_draw,
        ('0x' || substr(id_md5, 25, 6))::ubigint as tier_draw
    from digested

),

enriched as (

    select
        *,
        cast(case
            when has_engagement_score and engagement_score >= 70 then 'high'
            when has_engagement_score and engagement_score >= 40 then 'medium'
            when has_engagement_score and engagement_score >= 0 then 'low'
            when has_engagement_score then 'unknown'
            else ['high', 'medium', 'low'][1 + (engagement_draw % 3)::integer]
        end as {{ value_set('engagement_level') }}) as engagement_level,
        cast(case
            when has_last_activity_at and last_activity_at >= run_started_at - interval 90 day then 'active'
            when has_last_activity_at and last_activity_at is not null then 'inactive'
            when has_last_activity_at then 'unknown'
            else ['active', 'inactive'][1 + (activity_draw % 2)::integer]
        end as {{ value_set('activity_status') }}) as activity_status,
        cast(['website', 'mobile_app', 'email_campaign'][1 + (channel_draw % 3)::integer]
            as {{ value_set('acquisition_channel') }}) as acquisition_channel,
        cast(['US-West', 'US-East', 'EU-Central', 'APAC'][1 + (segment_draw % 4)::integer]
            as {{ value_set('market_segment') }}) as market_segment,
        cast(case
            when tier_draw % 10 < 6 then 'basic'
            when tier_draw % 10 < 9 then 'premium'
            else 'enterprise'
        end as {{ value_set('customer_tier') }}) as customer_tier
    from hashed

),

final as (

    select * from enriched

)

select * from final
