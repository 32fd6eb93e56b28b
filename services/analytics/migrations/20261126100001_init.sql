-- Rollups of consumed events. Every table is updated by idempotent upserts:
-- an event counts once (processed_events), and the daily job rebuilds a
-- day from the raw events kept in MongoDB.

-- Events already counted, by id: a redelivered or resent event changes
-- nothing.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    event_type   text NOT NULL,
    occurred_on  date NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_events_day ON processed_events (occurred_on);

-- One value per day, metric and dimension set ('{}' for none), e.g.
-- ('2026-11-26', 'catalog', 'revenue', 2599, '{"currency": "EUR"}').
CREATE TABLE daily_metrics (
    date         date NOT NULL,
    service_name text NOT NULL,
    metric_name  text NOT NULL,
    metric_value double precision NOT NULL DEFAULT 0,
    dimensions   jsonb NOT NULL DEFAULT '{}',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (date, service_name, metric_name, dimensions)
);

CREATE INDEX daily_metrics_by_metric ON daily_metrics (metric_name, date);

-- One row per user and active day: the funnel, cohorts and a user's
-- behaviour read it.
CREATE TABLE user_behavior (
    user_id       uuid NOT NULL,
    date          date NOT NULL,
    page_views    bigint NOT NULL DEFAULT 0,
    product_views bigint NOT NULL DEFAULT 0,
    searches      bigint NOT NULL DEFAULT 0,
    reservations  bigint NOT NULL DEFAULT 0,
    purchases     bigint NOT NULL DEFAULT 0,
    messages      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, date)
);

CREATE INDEX user_behavior_by_date ON user_behavior (date);

-- When each user signed up: the cohorts.
CREATE TABLE user_signups (
    user_id      uuid PRIMARY KEY,
    signed_up_at timestamptz NOT NULL
);

CREATE INDEX user_signups_by_time ON user_signups (signed_up_at);

-- Scheduled job runs: one row per job and period claims the run, so among
-- all replicas each job runs once per period.
CREATE TABLE job_runs (
    job         text NOT NULL,
    period      date NOT NULL,
    runner      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (job, period)
);
