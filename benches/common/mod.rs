//! Helpers the benchmark programs share (not every program uses each).
#![allow(dead_code)]

use std::process::Child;

use anyhow::bail;
use serde_json::Value;

/// A numeric setting from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// POSTs JSON, failing on any status but success.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {body}");
    }
    Ok(body)
}

/// Waits (up to a minute) until the edge at `edge` answers `/health`.
pub async fn wait_healthy(edge: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http
        .get(format!("{edge}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if std::time::Instant::now() > deadline {
            bail!("agora did not become healthy");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}
