//! The SQS consumer: long polls the event queue, processes up to
//! `concurrency` messages at once, extends the visibility of slow ones, and
//! deletes a message only once its event is stored and counted.
//!
//! A message that cannot be counted (malformed, or naming no user) comes
//! back after a short delay (its receive count in seconds) and, after the
//! queue's `maxReceiveCount` receives, SQS moves it to the dead-letter
//! queue. When a store fails instead (MongoDB or PostgreSQL down), the
//! message waits longer (5 s doubling per receive, at most 15 minutes) and
//! the consumer stops receiving for a while, so an outage spends few
//! receives. Each failure is logged with its reason. On shutdown the consumer stops receiving while the
//! process drains, lets in-flight messages finish, and makes those still
//! running at the end of the grace period visible again at once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use chrono::Utc;
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::Instrument as _;

use agora_kit::{
    events::{Queue, QueueError, decode_envelope},
    shutdown::Shutdown,
};

use crate::store::{RecordError, Store};

/// Consumer settings (see `AnalyticsConfig`).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub concurrency: usize,
    pub visibility: Duration,
    pub wait: Duration,
    pub max_receives: u32,
}

pub struct Consumer {
    queue: Queue,
    store: Store,
    config: ConsumerConfig,
    /// No receiving before this: a store failed.
    paused_until: Mutex<Option<Instant>>,
}

impl Consumer {
    pub fn new(queue: Queue, store: Store, config: ConsumerConfig) -> Self {
        Self {
            queue,
            store,
            config,
            paused_until: Mutex::new(None),
        }
    }

    pub async fn run(self, shutdown: Shutdown) {
        // Processed messages are deleted in batches: one call per ten.
        let (deletes, pending) = tokio::sync::mpsc::channel(self.config.concurrency * 4);
        let deleter = tokio::spawn(delete_in_batches(self.queue.clone(), pending));
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let this = Arc::new(self);
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::ZERO;
        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                () = shutdown.draining() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let pause = this
                .paused_until
                .lock()
                .ok()
                .and_then(|p| *p)
                .map(|until| until.saturating_duration_since(Instant::now()))
                .filter(|d| !d.is_zero());
            if let Some(pause) = pause {
                drop(first);
                tokio::select! {
                    () = shutdown.draining() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            let room = (1 + permits.available_permits()).min(10) as i32;
            let received = tokio::select! {
                () = shutdown.draining() => break,
                r = this.receive(room) => r,
            };
            let messages = match received {
                Ok(m) => {
                    backoff = Duration::ZERO;
                    m
                }
                Err(e) => {
                    if matches!(e, QueueError::Missing) {
                        this.queue.forget().await;
                    }
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot receive events");
                    tokio::select! {
                        () = shutdown.draining() => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            let mut first = Some(first);
            for message in messages {
                let permit = match first.take() {
                    Some(p) => p,
                    None => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let this = this.clone();
                let shutdown = shutdown.clone();
                let deletes = deletes.clone();
                tasks.spawn(async move {
                    this.handle(message, shutdown, deletes).await;
                    drop(permit);
                });
            }
        }
        // Draining: what is in flight finishes; at the end of the grace
        // period each unfinished message is handed back (see `handle`).
        while tasks.join_next().await.is_some() {}
        drop(deletes);
        let _ = deleter.await;
    }

    async fn receive(&self, max: i32) -> Result<Vec<Message>, QueueError> {
        let url = self.queue.url().await?;
        let out = self
            .queue
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .wait_time_seconds(self.config.wait.as_secs() as i32)
            .visibility_timeout(self.config.visibility.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(QueueError::from_sdk)?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn handle(
        &self,
        message: Message,
        shutdown: Shutdown,
        deletes: tokio::sync::mpsc::Sender<String>,
    ) {
        let Some(receipt) = message.receipt_handle().map(str::to_owned) else {
            return;
        };
        let receives: u32 = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let attribute = |name: &str| {
            message
                .message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
                .unwrap_or_default()
                .to_owned()
        };
        let event_type = attribute("event_type");
        let span = tracing::info_span!(
            "process event",
            otel.kind = "consumer",
            messaging.system = "aws_sqs",
            messaging.operation = "process",
            messaging.destination.name = self.queue.name(),
            messaging.message.id = message.message_id().unwrap_or_default(),
            "event.id" = attribute("event_id"),
            "event.type" = event_type.as_str(),
        );
        agora_kit::trace::set_remote_parent(&span, &attribute("traceparent"));
        let body = message.body().unwrap_or_default();
        let work = async {
            let envelope = decode_envelope(body).map_err(RecordError::Invalid)?;
            let occurred = envelope.occurred_at;
            let counted = self.store.record(envelope).await?;
            if let Some(t) = occurred {
                let lag = Utc::now().timestamp_millis() as f64 / 1000.0
                    - (t.seconds as f64 + f64::from(t.nanos) / 1e9);
                metrics::histogram!("analytics_event_lag_seconds").record(lag.max(0.0));
            }
            Ok::<_, RecordError>(counted)
        }
        .instrument(span.clone());
        let keep_hidden = async {
            let mut tick = tokio::time::interval(self.config.visibility / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                self.set_visibility(&receipt, self.config.visibility).await;
            }
        };
        let outcome = tokio::select! {
            r = work => Some(r),
            () = keep_hidden => None,
            () = shutdown.stopping() => None,
        };
        match outcome {
            Some(Ok(counted)) => {
                let outcome = if counted { "counted" } else { "duplicate" };
                metrics::counter!("analytics_events_consumed_total", "outcome" => outcome)
                    .increment(1);
                // The deleter stops only after every handler ended.
                let _ = deletes.send(receipt).await;
            }
            Some(Err(e)) => {
                metrics::counter!("analytics_events_consumed_total", "outcome" => "failed")
                    .increment(1);
                let _entered = span.enter();
                tracing::warn!(
                    reason = %e,
                    receives,
                    max_receives = self.config.max_receives,
                    "event not processed; it returns, and moves to the dead-letter queue after the last receive"
                );
                let retry = match e {
                    RecordError::Invalid(_) => Duration::from_secs(u64::from(receives).min(60)),
                    // A store is failing: wait, and let others wait too.
                    _ => {
                        let backoff =
                            Duration::from_secs(5 << receives.min(8)).min(Duration::from_secs(900));
                        if let Ok(mut paused) = self.paused_until.lock() {
                            *paused = Some(Instant::now() + backoff.min(Duration::from_secs(30)));
                        }
                        backoff
                    }
                };
                self.set_visibility(&receipt, retry).await;
            }
            None => self.set_visibility(&receipt, Duration::ZERO).await,
        }
    }

    async fn set_visibility(&self, receipt: &str, after: Duration) {
        let Ok(url) = self.queue.url().await else {
            return;
        };
        if let Err(e) = self
            .queue
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(after.as_secs() as i32)
            .send()
            .await
        {
            tracing::debug!(error = %QueueError::from_sdk(e), "cannot change a message's visibility");
        }
    }
}

/// Deletes processed messages, up to ten per call, taking whatever is
/// waiting (a lone message goes at once).
async fn delete_in_batches(queue: Queue, mut pending: tokio::sync::mpsc::Receiver<String>) {
    let mut batch: Vec<String> = Vec::with_capacity(10);
    while let Some(first) = pending.recv().await {
        batch.push(first);
        while batch.len() < 10 {
            match pending.try_recv() {
                Ok(receipt) => batch.push(receipt),
                Err(_) => break,
            }
        }
        let entries = batch
            .drain(..)
            .enumerate()
            .filter_map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>();
        let Ok(url) = queue.url().await else {
            continue;
        };
        // A failed delete means one more delivery, which counts nothing.
        match queue
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) if !out.failed().is_empty() => tracing::warn!(
                failed = out.failed().len(),
                "cannot delete some processed messages; they will be seen again"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %QueueError::from_sdk(e),
                "cannot delete processed messages; they will be seen again"
            ),
        }
    }
}
