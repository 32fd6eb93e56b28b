//! `Idempotency-Key` on POST and PATCH: the edge keeps the first complete
//! answer for 24 hours (in Redis, scoped to the caller) and replays it to a
//! retry with the same key, so a client that lost an answer can safely send
//! the request again.
//!
//! - The first request claims the key (`SET NX`) with a short lease, runs,
//!   and stores its answer. Answers that say "try again" (5xx, 429) are not
//!   kept: the key is released so the retry runs.
//! - A retry while the first is still running is refused with 409 and
//!   `Retry-After`; the same key with another method, path or body is
//!   refused with 422.
//! - Without Redis, requests run without this protection (and a warning is
//!   logged once per outage); the catalog's own reservation keys still hold.

use agora_kit::redis::traced;
use std::{sync::Arc, time::Duration};

use agora_kit::redis::SharedRedis;
use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use base64::Engine as _;
use bytes::Bytes;
use fred::prelude::{Expiration, KeysInterface as _, SetOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long an answer is kept for replay.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The longest accepted key.
pub const MAX_KEY_LEN: usize = 255;

pub struct IdempotencyStore {
    redis: Option<Arc<SharedRedis>>,
    prefix: String,
}

/// What a stored key holds: the request's fingerprint and, once the first
/// request finished, its answer.
#[derive(Serialize, Deserialize)]
struct Record {
    /// SHA-256 of method, path, query and body, hex.
    f: String,
    /// The answer's status; absent while the first request runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u16>,
    /// The answer's body, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    b: String,
}

/// What to do with a request that carries a key.
pub enum Begin {
    /// Run it, then hand the answer to [`Claim::finish`].
    Run(Claim),
    /// Answer with this stored response.
    Replay(Response),
    /// The first request with this key is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// Redis is unreachable: run without protection.
    Unprotected,
}

/// A claimed key.
pub struct Claim {
    key: String,
    fingerprint: String,
}

impl IdempotencyStore {
    pub fn new(redis: Option<Arc<SharedRedis>>, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}idem:"),
        }
    }

    /// Claims `key` for a request of `scope` (the caller), or says why not.
    /// `lease` bounds how long a claim outlives a request that never
    /// finished (the edge died mid-call).
    pub async fn begin(
        &self,
        scope: &str,
        key: &str,
        request: (&http::Method, &http::Uri, &[u8]),
        lease: Duration,
    ) -> Begin {
        let Some(redis) = &self.redis else {
            return Begin::Unprotected;
        };
        let Some(client) = redis.client() else {
            return Begin::Unprotected;
        };
        let (method, uri, body) = request;
        let mut hash = Sha256::new();
        hash.update(method.as_str());
        hash.update([0]);
        hash.update(uri.path());
        hash.update([0]);
        hash.update(uri.query().unwrap_or(""));
        hash.update([0]);
        hash.update(body);
        let fingerprint = hex(&hash.finalize());
        let mut key_hash = Sha256::new();
        key_hash.update(key);
        let redis_key = format!("{}{scope}:{}", self.prefix, hex(&key_hash.finalize()));
        let pending = Record {
            f: fingerprint.clone(),
            s: None,
            b: String::new(),
        };
        let pending = match serde_json::to_string(&pending) {
            Ok(p) => p,
            Err(_) => return Begin::Unprotected,
        };
        let claimed = traced(
            "SET",
            client.set::<Option<String>, _, _>(
                &redis_key,
                pending,
                Some(Expiration::PX(lease.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            ),
        )
        .await;
        match claimed {
            Ok(Some(_)) => {
                return Begin::Run(Claim {
                    key: redis_key,
                    fingerprint,
                });
            }
            Ok(None) => {}
            Err(e) => {
                failed(redis, "idempotency_claim", &e);
                return Begin::Unprotected;
            }
        }
        let stored = match traced("GET", client.get::<Option<String>, _>(&redis_key)).await {
            Ok(Some(s)) => s,
            // Released between the two commands (the first answer was not
            // kept): the client's next retry claims it.
            Ok(None) => return Begin::InProgress,
            Err(e) => {
                failed(redis, "idempotency_get", &e);
                return Begin::Unprotected;
            }
        };
        let Ok(record) = serde_json::from_str::<Record>(&stored) else {
            return Begin::Unprotected;
        };
        if record.f != fingerprint {
            return Begin::Mismatch;
        }
        let Some(status) = record.s else {
            return Begin::InProgress;
        };
        let body = base64::engine::general_purpose::STANDARD
            .decode(record.b)
            .unwrap_or_default();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Begin::Replay(resp)
    }

    /// Keeps `status` and `body` for replay, or releases the key when the
    /// answer invites a retry.
    pub async fn finish(&self, claim: Claim, status: StatusCode, body: &Bytes) {
        let Some(redis) = &self.redis else { return };
        let client = redis.always();
        let retry_invited = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        let result = if retry_invited {
            traced("DEL", client.del::<i64, _>(&claim.key))
                .await
                .map(drop)
        } else {
            let record = Record {
                f: claim.fingerprint,
                s: Some(status.as_u16()),
                b: base64::engine::general_purpose::STANDARD.encode(body),
            };
            let Ok(record) = serde_json::to_string(&record) else {
                return;
            };
            traced(
                "SET",
                client.set::<(), _, _>(
                    &claim.key,
                    record,
                    Some(Expiration::PX(RETENTION.as_millis() as i64)),
                    None,
                    false,
                ),
            )
            .await
        };
        if let Err(e) = result {
            failed(redis, "idempotency_store", &e);
        }
    }
}

fn failed(redis: &SharedRedis, op: &'static str, e: &fred::error::Error) {
    metrics::counter!("agora_edge_redis_errors_total", "op" => op).increment(1);
    redis.failed(op, e);
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
