-- The export's metadata: counts per quality bucket and how the run got there.
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

final as (

    select
        (select count(*) from customers) as total_customers,
        strftime(now() at time zone 'UTC', '%Y-%m-%dT%H:%M:%SZ') as export_timestamp,
        {
            'high_quality': (select count(*) from customers where quality_bucket = 'high'),
            'medium_quality': (select count(*) from customers where quality_bucket = 'medium'),
            'low_quality': (select count(*) from customers where quality_bucket = 'low')
        } as data_quality_summary,
        (select run_id from run) as run_id,
        (select source_url from run) as source,
        (select count(*) from staged) as records_extracted,
        (select count(*) from staged where is_keyed) - (select count(*) from customers) as duplicates_removed,
        (select count(*) from staged where not is_keyed) as records_quarantined,
        (select round(avg(data_quality_score), 2) from customers) as average_quality_score

)

select * from final
