-- One record per customer: the highest-scoring one; ties go to the first seen (lowest page, then position).
-- grain: one row per customer_id
-- materialized: view
-- column records_received: How many records the run received for this customer_id (1 = no duplicates).
with

scored as (

    select * from {{ ref('int_customers_scored') }}

),

winners as (

    -- one hash aggregate over narrow columns picks each customer's winning record:
    -- arg_min of (-score, page, position) is the highest score, then the lowest page,
    -- then the lowest position (cheaper than sorting every wide row in a window)
    select
        customer_id,
        count(*) as records_received,
        arg_min(
            {'page': page, 'position_in_page': position_in_page},
            {'score': -data_quality_score, 'page': page, 'position_in_page': position_in_page}
        ) as winner
    from scored
    group by customer_id

),

deduplicated as (

    select
        scored.*,
        winners.records_received
    from scored
    inner join winners
        on scored.customer_id = winners.customer_id
        and scored.page = winners.winner.page
        and scored.position_in_page = winners.winner.position_in_page

),

final as (

    select * from deduplicated

)

select * from final
