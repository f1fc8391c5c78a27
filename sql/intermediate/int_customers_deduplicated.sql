-- One record per customer: the highest-scoring one; ties go to the first seen (lowest page, then position).
-- grain: one row per customer_id
-- materialized: view
-- column records_received: How many records the run received for this customer_id (1 = no duplicates).
with

scored as (

    select * from {{ ref('int_customers_scored') }}

),

deduplicated as (

    -- one window, so one sort: the count needs the whole partition (the frame says so) and
    -- row_number ignores frames; two windows with different orders would sort twice
    select
        *,
        count(*) over by_quality as records_received
    from scored
    window by_quality as (
        partition by customer_id
        order by data_quality_score desc, page asc, position_in_page asc
        rows between unbounded preceding and unbounded following
    )
    qualify row_number() over by_quality = 1

),

final as (

    select * from deduplicated

)

select * from final
