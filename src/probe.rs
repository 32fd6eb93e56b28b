//! `agora probe`: one plain-HTTP GET, for container health checks where the
//! image has no shell or curl.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The status code `url` (`http://host:port/path`) answers, within `limit`.
pub async fn get(url: &str, limit: Duration) -> anyhow::Result<u16> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url:?} names no host");
    }
    tokio::time::timeout(limit, async {
        let mut stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        // The status line is all that is needed.
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = std::str::from_utf8(&head[..read]).unwrap_or_default();
        line.strip_prefix("HTTP/1.")
            .and_then(|l| l.get(2..5))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("{url} did not answer HTTP"))
    })
    .await
    .with_context(|| format!("{url} did not answer within {limit:?}"))?
}
