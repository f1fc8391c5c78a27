-- every enum column holds only the seed's values
with

customers as (

    select * from {{ ref('dim_customers') }}

),

checks as (

    select customer_id, 'engagement_level' as column_name, engagement_level as value
    from customers
    where engagement_level is null or engagement_level not in ('high', 'medium', 'low', 'unknown')
    union all
    select customer_id, 'activity_status', activity_status
    from customers
    where activity_status is null or activity_status not in ('active', 'inactive', 'unknown')
    union all
    select customer_id, 'acquisition_channel', acquisition_channel
    from customers
    where acquisition_channel is null or acquisition_channel not in ('website', 'mobile_app', 'email_campaign')
    union all
    select customer_id, 'market_segment', market_segment
    from customers
    where market_segment is null or market_segment not in ('US-West', 'US-East', 'EU-Central', 'APAC')
    union all
    select customer_id, 'customer_tier', customer_tier
    from customers
    where customer_tier is null or customer_tier not in ('basic', 'premium', 'enterprise')
    union all
    select customer_id, 'quality_bucket', quality_bucket
    from customers
    where quality_bucket is null or quality_bucket not in ('high', 'medium', 'low')
    union all
    select customer_id, 'email_domain', email_domain
    from customers
    where email_domain is null

)

select * from checks
