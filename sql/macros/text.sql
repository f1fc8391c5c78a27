{#- Whitespace, as Python's str.split() and the contract's \s see it: ASCII whitespace, every
    Unicode space separator (NBSP, ideographic space, ...), line/paragraph separators, and
    the C0 information separators and NEL. One definition for names, emails and ids. -#}
{% macro ws() -%}
[:space:]\pZ\x{1c}-\x{1f}\x{85}
{%- endmacro %}

{#- Collapse inner whitespace runs to one space, trim the ends, blank -> NULL. -#}
{% macro clean_text(expression) -%}
nullif(trim(regexp_replace({{ expression }}, '[{{ ws() }}]+', ' ', 'g')), '')
{%- endmacro %}

{#- Trim whitespace at both ends only (inner whitespace kept), blank -> NULL. -#}
{% macro trim_text(expression) -%}
nullif(regexp_replace({{ expression }}, '^[{{ ws() }}]+|[{{ ws() }}]+$', '', 'g'), '')
{%- endmacro %}
