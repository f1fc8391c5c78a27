-- The customers array of the export, in its contract order:
-- full_name case- and accent-insensitively, NULL names last, ties by customer_id.
with

customers as (

    select * from {{ ref('dim_customers') }}

),

final as (

    select
        customer_id,
        full_name,
        email_domain,
        engagement_level,
        activity_status,
        acquisition_channel,
        market_segment,
        customer_tier,
        data_quality_score,
        quality_bucket,
        quality_issues
    from customers
    order by lower(strip_accents(full_name)) asc nulls last, customer_id asc

)

select * from final
