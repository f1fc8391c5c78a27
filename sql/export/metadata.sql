-- The export's metadata: counts per quality bucket and how the run got there.
-- One pass over the customers and one over the staged records (aggregates with filters,
-- not a subquery per figure: each subquery is planned and scanned on its own).
-- export_timestamp is now(): in DuckDB, the start of the transaction that reads the marts, i.e.
-- when the snapshot the document shows was taken (the build's own start, for a run that writes
-- its export before the commit because the disk is short of space).
with

customers as (

    select * from {{ ref('dim_customers') }}

),

staged as (

    select * from {{ ref('stg_reqres__users') }}

),

run as (

    select * from {{ ref('stg_pipeline__current_run') }}

),

customer_counts as (

    select
        count(*) as total_customers,
        count(*) filter (where quality_bucket = 'high') as high_quality,
        count(*) filter (where quality_bucket = 'medium') as medium_quality,
        count(*) filter (where quality_bucket = 'low') as low_quality,
        round(avg(data_quality_score), 2) as average_quality_score
    from customers

),

record_counts as (

    select
        count(*) as records_extracted,
        count(*) filter (where is_keyed) as records_keyed,
        count(*) filter (where not is_keyed) as records_quarantined
    from staged

),

final as (

    select
        customer_counts.total_customers,
        strftime(now() at time zone 'UTC', '%Y-%m-%dT%H:%M:%SZ') as export_timestamp,
        {
            'high_quality': customer_counts.high_quality,
            'medium_quality': customer_counts.medium_quality,
            'low_quality': customer_counts.low_quality
        } as data_quality_summary,
        (select run_id from run) as run_id,
        (select source_url from run) as source,
        record_counts.records_extracted,
        record_counts.records_keyed - customer_counts.total_customers as duplicates_removed,
        record_counts.records_quarantined,
        customer_counts.average_quality_score
    from customer_counts
    cross join record_counts

)

select * from final
