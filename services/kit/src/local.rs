//! Calls between components of one process, without the network.
//!
//! With several targets in one process (`--target all`, or the edge beside
//! a service), a call from the edge to the catalog would otherwise go
//! through HTTP/2 framing, HPACK and the loopback TCP stack twice, only to
//! arrive in the same process. Each gRPC server registers its service stack
//! (the same layers its listener uses: deadline, metrics, access policy)
//! under its listening address; an [`EndpointClient`] whose address is
//! served here hands the request straight to that stack, in the caller's
//! task, as grpc-java's in-process transport does.
//!
//! Everything above the transport is unchanged: the caller still encodes a
//! gRPC request with its headers (`grpc-timeout`, credentials), balancing,
//! retries, breakers and the service's metrics still apply. A server leaves
//! the registry when it stops accepting calls, so later calls go to the
//! network and fail (or are retried elsewhere) as with a closed listener.
//!
//! [`EndpointClient`]: crate::h2client::EndpointClient

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tonic::body::Body;
use tower::util::BoxCloneSyncService;

/// A served stack, callable in process.
pub type LocalService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

struct Entry {
    id: u64,
    addr: SocketAddr,
    service: LocalService,
}

static SERVERS: RwLock<Vec<Entry>> = RwLock::new(Vec::new());
/// How many servers are registered: lets callers skip the lock when none is.
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Keeps a server registered until dropped.
#[must_use = "the server leaves the registry when this is dropped"]
pub struct Registration {
    id: u64,
}

/// Registers `service` as what this process serves on `addr` (a listener's
/// own address).
pub fn register(addr: SocketAddr, service: LocalService) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut servers = SERVERS.write().unwrap_or_else(|e| e.into_inner());
    servers.push(Entry { id, addr, service });
    COUNT.store(servers.len(), Ordering::Release);
    Registration { id }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut servers = SERVERS.write().unwrap_or_else(|e| e.into_inner());
        servers.retain(|e| e.id != self.id);
        COUNT.store(servers.len(), Ordering::Release);
    }
}

/// The stack this process serves at `addr`, if any. A listener on the
/// unspecified address (`0.0.0.0`, `[::]`) serves the loopback addresses of
/// its port.
pub fn lookup(addr: SocketAddr) -> Option<LocalService> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return None;
    }
    let servers = SERVERS.read().unwrap_or_else(|e| e.into_inner());
    servers
        .iter()
        .find(|e| serves(e.addr, addr))
        .map(|e| e.service.clone())
}

fn serves(listener: SocketAddr, target: SocketAddr) -> bool {
    listener.port() == target.port()
        && (listener.ip() == target.ip()
            || (listener.ip().is_unspecified() && target.ip().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_serves_loopback_only() {
        let any: SocketAddr = "0.0.0.0:3002".parse().expect("address");
        assert!(serves(any, "127.0.0.1:3002".parse().expect("address")));
        assert!(serves(
            "[::]:3002".parse().expect("address"),
            "[::1]:3002".parse().expect("address")
        ));
        assert!(!serves(any, "10.1.2.3:3002".parse().expect("address")));
        assert!(!serves(any, "127.0.0.1:3003".parse().expect("address")));
        let own: SocketAddr = "127.0.0.1:3002".parse().expect("address");
        assert!(serves(own, own));
        assert!(!serves(own, "127.0.0.2:3002".parse().expect("address")));
    }
}
