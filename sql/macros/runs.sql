{#- Which run the models describe: the latest run whose extraction completed. One definition,
    used by the models, the export and the runner's change detection. -#}
{% macro latest_extracted_run() -%}
(select max(run_id) from {{ source('raw', 'runs') }} where extracted_at is not null)
{%- endmacro %}
