-- every enum column holds only the seed's values (and email_domain is never NULL)
{%- set accepted = {
    'engagement_level': ['high', 'medium', 'low', 'unknown'],
    'activity_status': ['active', 'inactive', 'unknown'],
    'acquisition_channel': ['website', 'mobile_app', 'email_campaign'],
    'market_segment': ['US-West', 'US-East', 'EU-Central', 'APAC'],
    'customer_tier': ['basic', 'premium', 'enterprise'],
    'quality_bucket': ['high', 'medium', 'low'],
    'email_domain': none,
} %}
with

customers as (

    select * from {{ ref('dim_customers') }}

),

checks as (
{% for column, values in accepted.items() %}
    select customer_id, '{{ column }}' as column_name, {{ column }} as value
    from customers
    where {{ column }} is null
    {%- if values %} or {{ column }} not in ('{{ values | join("', '") }}'){% endif %}
    {% if not loop.last %}union all{% endif %}
{%- endfor %}

)

select * from checks
