-- The common question, answered: how many customers per quality bucket, and how good they are.
-- grain: one row per quality_bucket (high, medium, low; buckets with no customers show 0)
-- materialized: table
-- column quality_bucket: high (>= 90), medium (70-89), low (< 70).
-- column customers: Customers in the bucket.
-- column share: Share of all customers in the bucket (0-1).
-- column avg_data_quality_score: Mean data_quality_score in the bucket.
-- column missing_email / invalid_email / missing_avatar: Customers in the bucket with that issue.
with

customers as (

    select * from {{ ref('dim_customers') }}

),

buckets as (

    -- the bucket type itself, as in dim_customers: order by quality_bucket goes high, medium, low
    select cast(unnest(enum_range(null::{{ value_set('quality_bucket') }})) as {{ value_set('quality_bucket') }})
        as quality_bucket

),

per_bucket as (

    select
        buckets.quality_bucket,
        count(customers.customer_id) as customers,
        round(avg(customers.data_quality_score), 2) as avg_data_quality_score,
        count(*) filter (where list_contains(customers.quality_issues, 'missing_email')) as missing_email,
        count(*) filter (where list_contains(customers.quality_issues, 'invalid_email')) as invalid_email,
        count(*) filter (where list_contains(customers.quality_issues, 'missing_avatar')) as missing_avatar
    from buckets
    left join customers
        on buckets.quality_bucket = customers.quality_bucket
    group by buckets.quality_bucket

),

final as (

    select
        quality_bucket,
        customers,
        round(customers / nullif(sum(customers) over (), 0), 4) as share,
        avg_data_quality_score,
        missing_email,
        invalid_email,
        missing_avatar
    from per_bucket
    order by quality_bucket

)

select * from final
