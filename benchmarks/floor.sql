-- The floor: the same business rules as sql/ (standardize, score, dedup, enrich, sort, export),
-- hand-written as one DuckDB script over the landed raw.api_pages, in as few passes as possible.
--
-- Pass 1 (transform): each record is parsed once into typed fields (json_transform into a
--   struct) and once for its shape (json_type with a list of paths: the record's type and
--   the optional keys' types, so a key present with a JSON null is told apart from an
--   absent key; from_json into a MAP does both in one go but is 2x slower in DuckDB 2.0),
--   every record is scored, and the dedup is one hash aggregate
--   (arg_max on a packed key: score desc, page asc, position asc) instead of a window sort;
--   the md5 enrichment runs on the winners only. The result is a temp (in-memory) table.
--   The page arrays are a materialized CTE so that parsing uses every core.
-- Pass 2 (export): one sort, COPY TO json.
--
-- The rule expressions (whitespace class of sql/macros/text.sql, the e-mail pattern, the
-- ISO-8601 check of last_activity_at, the md5 draws) are the models'; keep them in step when
-- the rules change, or scale_bench.py reports MISMATCH.
--
-- Run by benchmarks/scale_bench.py (benchmarks/_child.py floor); `__OUTPUT__` is replaced by
-- the output path as a SQL string literal. `-- @phase <name>` lines split the timed phases.

-- @phase transform
create or replace temp table floor_customers as
with

run as (
    select run_id, started_at
    from raw.runs
    where extracted_at is not null
    order by run_id desc
    limit 1
),

pages as materialized (
    -- materialized: a run's pages are few rows, which DuckDB scans on one thread; from the
    -- materialized page arrays the unnest and parse below run on every thread (6.7 s -> 3.6 s
    -- at 1M records on 2 cores). The models do the same (sql/staging/stg_reqres__users.sql).
    select api_pages.page, json_extract(api_pages.body, '$.data[*]') as records
    from raw.api_pages
    inner join run on api_pages.run_id = run.run_id
),

received as (
    select page, unnest(records) as record, generate_subscripts(records, 1) as pos
    from pages
),

parsed as (
    -- each record parsed once into typed fields, once for its shape (present-but-null != absent)
    select
        page,
        pos,
        types,
        json_transform(record, '{"id": "VARCHAR", "first_name": "VARCHAR", "last_name": "VARCHAR",
            "email": "VARCHAR", "avatar": "VARCHAR", "engagement_score": "VARCHAR",
            "last_activity_at": "VARCHAR"}') as r
    from (
        select *, json_type(record, ['$', '$.engagement_score', '$.last_activity_at']) as types
        from received
    )
    where types[1] = 'OBJECT'
),

standardized as (
    select
        page,
        pos,
        nullif(regexp_replace(r.id, '^[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+|[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+$', '', 'g'), '') as id_text,
        nullif(trim(regexp_replace(r.first_name, '[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+', ' ', 'g')), '') as first_name,
        nullif(trim(regexp_replace(r.last_name, '[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+', ' ', 'g')), '') as last_name,
        lower(nullif(regexp_replace(r.email, '^[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+|[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+$', '', 'g'), '')) as email,
        nullif(regexp_replace(r.avatar, '^[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+|[[:space:]\pZ\x{1c}-\x{1f}\x{85}]+$', '', 'g'), '') as avatar_url,
        types[2] is not null as has_engagement_score,
        case when try_cast(r.engagement_score as double) between 0 and 100
            then try_cast(r.engagement_score as double) end as engagement_score,
        types[3] is not null as has_last_activity_at,
        case
            when regexp_full_match(
                r.last_activity_at,
                '[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?'
            ) then try_cast(replace(r.last_activity_at, ',', '.') as timestamptz)
        end as last_activity_at
    from parsed
),

scored as (
    select
        id_text::bigint as customer_id,
        page,
        pos,
        first_name,
        last_name,
        email,
        has_engagement_score,
        engagement_score,
        has_last_activity_at,
        last_activity_at,
        regexp_full_match(email, '[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+@[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+\.[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+') as email_is_valid,
        [issue for issue in [
            case when first_name is null then 'missing_first_name' end,
            case when last_name is null then 'missing_last_name' end,
            case when email is null then 'missing_email' end,
            case when email is not null
                and not regexp_full_match(email, '[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+@[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+\.[^@[:space:]\pZ\x{1c}-\x{1f}\x{85}]+')
                then 'invalid_email' end,
            case when avatar_url is null then 'missing_avatar' end,
            case when has_engagement_score and engagement_score is null then 'invalid_engagement_score' end,
            case when has_last_activity_at and last_activity_at is null then 'invalid_last_activity_at' end
        ] if issue is not null] as quality_issues
    from standardized
    where regexp_full_match(id_text, '-?[0-9]{1,18}')
),

winners as (
    -- one hash aggregate: the highest score, ties to the lowest page, then position
    select
        customer_id,
        arg_max(
            {
                'first_name': first_name, 'last_name': last_name, 'email': email,
                'email_is_valid': email_is_valid,
                'has_engagement_score': has_engagement_score, 'engagement_score': engagement_score,
                'has_last_activity_at': has_last_activity_at, 'last_activity_at': last_activity_at,
                'quality_issues': quality_issues
            },
            (greatest(0, 100 - 10 * len(quality_issues))::bigint << 44)
                - (page::bigint << 16) - pos::bigint
        ) as w
    from scored
    group by customer_id
)

select
    customer_id,
    nullif(concat_ws(' ', w.first_name, w.last_name), '') as full_name,
    case when w.email_is_valid then split_part(w.email, '@', 2) else 'unknown' end as email_domain,
    case
        when w.has_engagement_score and w.engagement_score >= 70 then 'high'
        when w.has_engagement_score and w.engagement_score >= 40 then 'medium'
        when w.has_engagement_score and w.engagement_score >= 0 then 'low'
        when w.has_engagement_score then 'unknown'
        else ['high', 'medium', 'low'][1 + (('0x' || substr(md5(customer_id::varchar), 1, 6))::ubigint % 3)::integer]
    end as engagement_level,
    case
        when w.has_last_activity_at and w.last_activity_at >= (select started_at from run) - interval 90 day then 'active'
        when w.has_last_activity_at and w.last_activity_at is not null then 'inactive'
        when w.has_last_activity_at then 'unknown'
        else ['active', 'inactive'][1 + (('0x' || substr(md5(customer_id::varchar), 7, 6))::ubigint % 2)::integer]
    end as activity_status,
    ['website', 'mobile_app', 'email_campaign'][1 + (('0x' || substr(md5(customer_id::varchar), 13, 6))::ubigint % 3)::integer] as acquisition_channel,
    ['US-West', 'US-East', 'EU-Central', 'APAC'][1 + (('0x' || substr(md5(customer_id::varchar), 19, 6))::ubigint % 4)::integer] as market_segment,
    case (('0x' || substr(md5(customer_id::varchar), 25, 6))::ubigint % 10)
        when 0 then 'basic' when 1 then 'basic' when 2 then 'basic' when 3 then 'basic'
        when 4 then 'basic' when 5 then 'basic' when 9 then 'enterprise' else 'premium'
    end as customer_tier,
    greatest(0, 100 - 10 * len(w.quality_issues))::integer as data_quality_score,
    case
        when greatest(0, 100 - 10 * len(w.quality_issues)) >= 90 then 'high'
        when greatest(0, 100 - 10 * len(w.quality_issues)) >= 70 then 'medium'
        else 'low'
    end as quality_bucket,
    w.quality_issues
from winners;

-- @phase export
copy (
    select *
    from floor_customers
    order by lower(strip_accents(full_name)) asc nulls last, customer_id asc
) to __OUTPUT__ (format json, array true);

-- @phase metadata
select
    count(*) as total_customers,
    count(*) filter (where quality_bucket = 'high') as high_quality,
    count(*) filter (where quality_bucket = 'medium') as medium_quality,
    count(*) filter (where quality_bucket = 'low') as low_quality
from floor_customers;
