-- data_quality_score is 0..100 and agrees with its bucket
select customer_id, data_quality_score, quality_bucket
from {{ ref('dim_customers') }}
where data_quality_score is null
    or data_quality_score not between 0 and 100
    or quality_bucket != case
        when data_quality_score >= 90 then 'high'
        when data_quality_score >= 70 then 'medium'
        else 'low'
    end
