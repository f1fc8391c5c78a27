-- customer_id is unique in dim_customers
select customer_id, count(*) as rows_with_id
from {{ ref('dim_customers') }}
group by customer_id
having count(*) > 1
