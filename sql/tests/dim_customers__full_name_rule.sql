-- full_name is first and last name joined by one space, either alone, NULL when both are missing
select customer_id, first_name, last_name, full_name
from {{ ref('dim_customers') }}
where full_name is distinct from case
    when first_name is not null and last_name is not null then first_name || ' ' || last_name
    else coalesce(first_name, last_name)
end
