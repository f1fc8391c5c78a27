-- One record per customer: the highest-scoring one; ties go to the first seen (lowest page, then position).
-- grain: one row per customer_id
-- materialized: view
-- column records_received: How many records the run received for this customer_id (1 = no duplicates).
with

scored as (

    select * from {{ ref('int_customers_scored') }}

),

counted as (

    select
        *,
        count(*) over (partition by customer_id) as records_received
    from scored

),

deduplicated as (

    select *
    from counted
    qualify row_number() over (
        partition by customer_id
        order by data_quality_score desc, page asc, position_in_page asc
    ) = 1

),

final as (

    select * from deduplicated

)

select * from final
