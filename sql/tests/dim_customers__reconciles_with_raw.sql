-- counts reconcile with raw: every record landed for the run reached staging, every distinct
-- usable id landed in the run has exactly one mart row, and every unkeyed record is quarantined.
-- The run is the one the models describe (stg_pipeline__current_run, published with them), so
-- `pipeline.py test` after a run that landed but was not built still checks the published marts.
with

staged as (

    select * from {{ ref('stg_reqres__users') }}

),

landed as (

    select coalesce(sum(record_count), 0) as records
    from {{ source('raw', 'api_pages') }}
    where run_id = (select run_id from {{ ref('stg_pipeline__current_run') }})

),

counts as (

    select
        (select records from landed) as records_landed,
        (select count(*) from staged) as records_staged,
        (select count(distinct customer_id) from staged where is_keyed) as distinct_ids_landed,
        (select count(*) from {{ ref('dim_customers') }}) as mart_rows,
        (select count(*) from staged where not is_keyed) as unkeyed_records,
        (select count(*) from {{ ref('quarantined_records') }}) as quarantined_rows

)

select *
from counts
where records_landed != records_staged
    or distinct_ids_landed != mart_rows
    or unkeyed_records != quarantined_rows
