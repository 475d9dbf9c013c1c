-- Initial schema. Columns follow the `_fields` of the row tuples in streams/model.py, in order.
-- Sort keys start with (project, day) so a project's date range reads a narrow slice;
-- the partition (month) is a function of that day, so FINAL never merges across partitions.
-- Codecs: columns the reports scan (ids, timestamps) keep fast LZ4 — ZSTD decoding doubled
-- the funnel's CPU in bench/bench_reports.py; timestamps use T64 (rows are not in time order
-- inside a day, so Delta gains nothing and T64+LZ4 came out smaller and 4x faster to read than
-- Delta+ZSTD). Text that reports never read (URLs, titles, props, contacts) is ZSTD.
-- events.path is LowCardinality: funnel steps match it, and a site has a bounded set of pages.

CREATE TABLE IF NOT EXISTS {db:Identifier}.events
(
    project_id   LowCardinality(String),
    event_id     String CODEC(ZSTD(1)),
    client_id    String CODEC(LZ4),
    ts           DateTime64(3, 'UTC') CODEC(T64, LZ4),
    received_at  DateTime64(3, 'UTC') CODEC(T64, LZ4),
    type         LowCardinality(String),
    name         LowCardinality(String),
    site         LowCardinality(String),
    url          String CODEC(ZSTD(1)),
    path         LowCardinality(String),
    referrer     String CODEC(ZSTD(1)),
    title        String CODEC(ZSTD(1)),
    props        String CODEC(ZSTD(1)),
    source_type  LowCardinality(String),
    utm_source   LowCardinality(String),
    utm_medium   LowCardinality(String),
    utm_campaign LowCardinality(String),
    utm_content  String CODEC(ZSTD(1)),
    utm_term     String CODEC(ZSTD(1)),
    click_id     String CODEC(ZSTD(1)),
    phone_hash   String CODEC(ZSTD(1)),
    email_hash   String CODEC(ZSTD(1)),
    phone        String CODEC(ZSTD(1)),
    email        String CODEC(ZSTD(1)),
    contact_name String CODEC(ZSTD(1)),
    value        Float64 CODEC(ZSTD(1)),
    currency     LowCardinality(String)
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (project_id, toDate(ts), type, cityHash64(client_id), event_id);

CREATE TABLE IF NOT EXISTS {db:Identifier}.visits
(
    project_id   LowCardinality(String),
    visit_id     String CODEC(LZ4),
    client_id    String CODEC(LZ4),
    start_ts     DateTime64(3, 'UTC') CODEC(T64, LZ4),
    end_ts       DateTime64(3, 'UTC') CODEC(T64, LZ4),
    site         LowCardinality(String),
    landing_url  String CODEC(ZSTD(1)),
    landing_path String CODEC(ZSTD(1)),
    referrer     String CODEC(ZSTD(1)),
    source_type  LowCardinality(String),
    source       LowCardinality(String),
    medium       LowCardinality(String),
    campaign     LowCardinality(String),
    content      String CODEC(ZSTD(1)),
    term         String CODEC(ZSTD(1)),
    click_id     String CODEC(ZSTD(1)),
    pageviews    UInt32,
    events       UInt32,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(start_ts)
ORDER BY (project_id, toDate(start_ts), visit_id);

CREATE TABLE IF NOT EXISTS {db:Identifier}.conversions
(
    project_id    LowCardinality(String),
    conversion_id String CODEC(LZ4),
    kind          LowCardinality(String),
    name          LowCardinality(String),
    client_id     String CODEC(LZ4),
    person_id     String CODEC(LZ4),
    ts            DateTime64(3, 'UTC') CODEC(T64, LZ4),
    visit_id      String CODEC(LZ4),
    value         Float64 CODEC(ZSTD(1)),
    currency      LowCardinality(String),
    version       UInt64,
    is_deleted    UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(ts)
ORDER BY (project_id, toDate(ts), conversion_id);

CREATE TABLE IF NOT EXISTS {db:Identifier}.attributions
(
    project_id    LowCardinality(String),
    model         LowCardinality(String),
    conversion_id String CODEC(LZ4),
    conversion_ts DateTime64(3, 'UTC') CODEC(T64, LZ4),
    kind          LowCardinality(String),
    name          LowCardinality(String),
    person_id     String CODEC(LZ4),
    visit_id      String CODEC(LZ4),
    visit_start   DateTime64(3, 'UTC') CODEC(T64, LZ4),
    source_type   LowCardinality(String),
    source        LowCardinality(String),
    medium        LowCardinality(String),
    campaign      LowCardinality(String),
    content       String CODEC(ZSTD(1)),
    term          String CODEC(ZSTD(1)),
    weight        Float64,
    value         Float64 CODEC(ZSTD(1)),
    currency      LowCardinality(String),
    version       UInt64,
    is_deleted    UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(conversion_ts)
ORDER BY (project_id, model, toDate(conversion_ts), conversion_id, visit_id);

CREATE TABLE IF NOT EXISTS {db:Identifier}.identities
(
    project_id LowCardinality(String),
    client_id  String CODEC(LZ4),
    person_id  String CODEC(LZ4),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, client_id);
