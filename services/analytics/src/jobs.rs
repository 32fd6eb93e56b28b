//! Scheduled jobs. Every analytics replica runs the scheduler; a job runs on
//! one of them per period: a run is claimed by inserting its
//! `(job, period)` row in `job_runs`, which only one replica can do. A
//! failed run (or one whose replica died, after an hour) is claimed again
//! at a later check. Every job is idempotent, so a run repeated after a
//! crash changes nothing.
//!
//! - `daily_rollup`: rebuilds the two previous days from the raw events
//!   (late events, and anything the live path missed).
//! - `retention`: deletes raw events and processed event ids older than
//!   the raw retention (the TTL index expires raw events too; this is the
//!   backstop for stores without one).
//!
//! Each service's outbox relay prunes its own sent rows (analytics cannot
//! reach other services' tables).

use std::time::Duration;

use chrono::{NaiveDate, Utc};

use agora_kit::{events::Queue, shutdown::Shutdown};

use crate::store::{RecordError, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    DailyRollup,
    Retention,
}

impl Job {
    pub const ALL: [Job; 2] = [Job::DailyRollup, Job::Retention];

    pub fn name(self) -> &'static str {
        match self {
            Job::DailyRollup => "daily_rollup",
            Job::Retention => "retention",
        }
    }
}

pub struct Scheduler {
    pub store: Store,
    /// How often due jobs are looked for.
    pub check_every: Duration,
    /// How long raw events are kept.
    pub retention: Duration,
    /// This replica's name in `job_runs`.
    pub runner: String,
    /// The event queue, for the dead-letter depth gauge.
    pub queue: Option<Queue>,
}

impl Scheduler {
    pub async fn run(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.draining() => return,
                _ = tick.tick() => {}
            }
            let today = Utc::now().date_naive();
            for job in Job::ALL {
                if let Err(e) = self.run_once(job, today).await {
                    tracing::warn!(job = job.name(), error = %e, "scheduled job failed; it runs again at a later check");
                }
            }
            self.record_dead_letters().await;
        }
    }

    /// Runs `job` for `period` unless a replica claimed it; returns whether
    /// this replica ran it.
    pub async fn run_once(&self, job: Job, period: NaiveDate) -> Result<bool, RecordError> {
        let claimed = sqlx::query(
            "INSERT INTO job_runs (job, period, runner) VALUES ($1, $2, $3)
             ON CONFLICT (job, period) DO UPDATE SET runner = EXCLUDED.runner, started_at = now(), error = NULL
             WHERE job_runs.finished_at IS NULL
               AND (job_runs.error IS NOT NULL OR job_runs.started_at < now() - interval '1 hour')",
        )
        .bind(job.name())
        .bind(period)
        .bind(&self.runner)
        .execute(&self.store.pool)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let outcome = match job {
            Job::DailyRollup => {
                let mut events = 0;
                for back in [2, 1] {
                    events += self
                        .store
                        .rebuild_day(period - chrono::Duration::days(back))
                        .await?;
                }
                Ok(format!("{events} events recounted"))
            }
            Job::Retention => self
                .store
                .prune(self.retention)
                .await
                .map(|(raw, ids)| format!("{raw} raw events and {ids} event ids deleted")),
        };
        match outcome {
            Ok(summary) => {
                sqlx::query(
                    "UPDATE job_runs SET finished_at = now() WHERE job = $1 AND period = $2",
                )
                .bind(job.name())
                .bind(period)
                .execute(&self.store.pool)
                .await?;
                metrics::counter!("analytics_job_runs_total", "job" => job.name(), "outcome" => "done")
                    .increment(1);
                tracing::info!(
                    job = job.name(),
                    %period,
                    runner = %self.runner,
                    summary,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "scheduled job ran"
                );
                Ok(true)
            }
            Err(e) => {
                metrics::counter!("analytics_job_runs_total", "job" => job.name(), "outcome" => "failed")
                    .increment(1);
                sqlx::query("UPDATE job_runs SET error = $3 WHERE job = $1 AND period = $2")
                    .bind(job.name())
                    .bind(period)
                    .bind(e.to_string())
                    .execute(&self.store.pool)
                    .await?;
                Err(e)
            }
        }
    }

    /// `analytics_dead_letter_messages`: messages waiting in the DLQ.
    async fn record_dead_letters(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Ok(url) = queue.dead_letter_url().await else {
            return;
        };
        let depth = queue
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok()
            .and_then(|out| {
                out.attributes()?
                    .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)?
                    .parse::<f64>()
                    .ok()
            });
        if let Some(depth) = depth {
            metrics::gauge!("analytics_dead_letter_messages").set(depth);
        }
    }
}

/// Rebuilds every day from `from` to `to` from the raw events, calling
/// `progress` with the days done. Days older than the raw retention are
/// refused: their raw events are gone, and rebuilding would erase them.
pub async fn backfill(
    store: &Store,
    from: NaiveDate,
    to: NaiveDate,
    retention: Duration,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<usize> {
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let oldest = Utc::now().date_naive()
        - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
        + chrono::Duration::days(1);
    anyhow::ensure!(
        from >= oldest,
        "--from {from} is older than the raw event retention (the oldest day kept is {oldest})"
    );
    let mut events = 0;
    let mut done = 0;
    for day in from.iter_days().take_while(|d| *d <= to) {
        events += store.rebuild_day(day).await?;
        done += 1;
        progress(done, events);
    }
    Ok(events)
}
