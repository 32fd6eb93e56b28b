//! The module table: which components exist, what each depends on, and how
//! a set of targets becomes one running process.
//!
//! Components are built once each, in dependency order; each binds its
//! listener in `build`, so `App::build` with port 0 gives tests real
//! addresses before anything serves. `all` runs every component, and the edge
//! still reaches services over gRPC on loopback, as in a cluster.

use std::{fmt, net::SocketAddr, str::FromStr};

use agora_catalog::CatalogComponent;
use agora_edge::EdgeComponent;
use agora_kit::{
    admin::{self, Readiness},
    shutdown::Shutdown,
};
use agora_users::UsersComponent;
use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinSet};

use crate::config::Config;

/// A component that can run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Users,
    Catalog,
    Edge,
}

/// The module table: each target, what it does, and what it needs first.
/// Infrastructure (the Postgres pool, admin server) is not a target.
pub const MODULES: &[(Target, &str, &[Target], &str)] = &[
    (
        Target::Users,
        "users",
        &[],
        "accounts, passwords, JWT/JWKS, roles, API keys (gRPC 3001; PostgreSQL)",
    ),
    (
        Target::Catalog,
        "catalog",
        &[],
        "products, categories, stock, reservations, search, recommendations (gRPC 3002; PostgreSQL, Redis)",
    ),
    (
        Target::Edge,
        "edge",
        &[],
        "REST/JSON → gRPC gateway, auth, OpenAPI, /health (HTTP 3000)",
    ),
];

impl Target {
    pub fn name(self) -> &'static str {
        MODULES.iter().find(|m| m.0 == self).map_or("?", |m| m.1)
    }

    /// The OpenTelemetry `service.name` of the component.
    pub fn service_name(self) -> &'static str {
        match self {
            Target::Users => agora_users::COMPONENT,
            Target::Catalog => agora_catalog::COMPONENT,
            Target::Edge => agora_edge::COMPONENT,
        }
    }

    pub fn deps(self) -> &'static [Target] {
        MODULES.iter().find(|m| m.0 == self).map_or(&[], |m| m.2)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A comma list of targets; `all` means every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

impl FromStr for Targets {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                out.extend(MODULES.iter().map(|m| m.0));
                continue;
            }
            let t = MODULES
                .iter()
                .find(|m| m.1 == name)
                .map(|m| m.0)
                .ok_or_else(|| {
                    let known: Vec<_> = MODULES.iter().map(|m| m.1).collect();
                    format!(
                        "unknown target {name:?}; known targets: all, {}",
                        known.join(", ")
                    )
                })?;
            out.push(t);
        }
        if out.is_empty() {
            return Err("name at least one target".into());
        }
        Ok(Targets(resolve(&out)))
    }
}

/// The targets plus their dependencies, each once, dependencies first.
pub fn resolve(targets: &[Target]) -> Vec<Target> {
    fn visit(t: Target, out: &mut Vec<Target>) {
        if out.contains(&t) {
            return;
        }
        for d in t.deps() {
            visit(*d, out);
        }
        out.push(t);
    }
    let mut out = Vec::new();
    for t in targets {
        visit(*t, &mut out);
    }
    // Services start before the edge, whatever order they were named in,
    // so the edge finds those of its own process where they listen.
    out.sort_by_key(|t| MODULES.iter().position(|m| m.0 == *t));
    out
}

enum Component {
    Users(UsersComponent),
    Catalog(CatalogComponent),
    Edge(EdgeComponent),
}

/// A process with its components built and listening, not yet serving.
pub struct App {
    components: Vec<(Target, Component)>,
    admin: TcpListener,
    config: Config,
}

impl App {
    pub async fn build(mut config: Config, targets: &Targets) -> anyhow::Result<Self> {
        let admin = TcpListener::bind(config.admin.addr)
            .await
            .with_context(|| format!("AGORA_ADMIN_ADDR: cannot listen on {}", config.admin.addr))?;
        let mut components = Vec::new();
        for target in &targets.0 {
            let component = match target {
                Target::Users => {
                    let users = UsersComponent::build(config.users.clone(), &config.database)
                        .await
                        .context("Failed to start the users service")?;
                    // In one process, others reach users where it really listens.
                    let url = format!("http://{}", loopback(users.local_addr()?));
                    if let Some(policy) = config.edge.upstreams.0.get_mut("users") {
                        policy.url = url.clone();
                    }
                    config.catalog.users_url = url;
                    Component::Users(users)
                }
                Target::Catalog => {
                    let catalog = CatalogComponent::build(config.catalog.clone(), &config.database)
                        .await
                        .context("Failed to start the catalog service")?;
                    if let Some(policy) = config.edge.upstreams.0.get_mut("catalog") {
                        policy.url = format!("http://{}", loopback(catalog.local_addr()?));
                    }
                    Component::Catalog(catalog)
                }
                Target::Edge => Component::Edge(
                    EdgeComponent::build(config.edge.clone())
                        .await
                        .context("Failed to start the edge")?,
                ),
            };
            tracing::info!(target = %target, addr = ?component_addr(&component), "component built");
            components.push((*target, component));
        }
        Ok(Self {
            components,
            admin,
            config,
        })
    }

    /// The bound address of a target's listener.
    pub fn addr(&self, target: Target) -> Option<SocketAddr> {
        self.components
            .iter()
            .find(|(t, _)| *t == target)
            .and_then(|(_, c)| component_addr(c))
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves every component until `stop` resolves, then drains and stops
    /// within the grace period. Any component failing stops the process.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let shutdown = Shutdown::new();
        let readiness = Readiness::default();
        let mut tasks = JoinSet::new();
        tasks.spawn({
            let (r, s) = (readiness.clone(), shutdown.clone());
            let admin = self.admin;
            async move { ("admin", admin::serve(admin, r, s).await) }
        });
        for (target, component) in self.components {
            let s = shutdown.clone();
            let name = target.name();
            match component {
                Component::Users(c) => tasks.spawn(async move { (name, c.run(s).await) }),
                Component::Catalog(c) => tasks.spawn(async move { (name, c.run(s).await) }),
                Component::Edge(c) => tasks.spawn(async move { (name, c.run(s).await) }),
            };
        }
        readiness.set(true);
        tracing::info!("agora is serving");

        let failure = tokio::select! {
            () = stop => None,
            Some(done) = tasks.join_next() => Some(describe(done)),
        };
        readiness.set(false);
        if let Some(err) = &failure {
            tracing::error!(
                error = format!("{err:#}"),
                "a component stopped; shutting down"
            );
        }
        // Drain: NOT_SERVING first, so balancers stop routing here.
        shutdown.begin(&self.config.shutdown).await;
        let grace = self.config.shutdown.grace_period;
        let finished = tokio::time::timeout(grace, async {
            while let Some(done) = tasks.join_next().await {
                if let (name, Err(e)) = describe_named(done) {
                    tracing::error!(
                        component = name,
                        error = format!("{e:#}"),
                        "component failed while stopping"
                    );
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period over; abandoning in-flight work"
            );
            tasks.abort_all();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

type Done = Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>;

fn describe(done: Done) -> anyhow::Error {
    match describe_named(done) {
        (name, Ok(())) => anyhow::anyhow!("{name} stopped unexpectedly"),
        (name, Err(e)) => e.context(format!("{name} failed")),
    }
}

fn describe_named(done: Done) -> (&'static str, anyhow::Result<()>) {
    match done {
        Ok((name, result)) => (name, result),
        Err(e) => (
            "component",
            Err(anyhow::anyhow!("task panicked or was cancelled: {e}")),
        ),
    }
}

fn component_addr(c: &Component) -> Option<SocketAddr> {
    match c {
        Component::Users(u) => u.local_addr().ok(),
        Component::Catalog(c) => c.local_addr().ok(),
        Component::Edge(e) => e.local_addr().ok(),
    }
}

/// A wildcard bind address is reached on loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_a_comma_list() {
        assert_eq!(
            "all".parse::<Targets>().expect("valid").0,
            vec![Target::Users, Target::Catalog, Target::Edge]
        );
        assert_eq!(
            "edge".parse::<Targets>().expect("valid").0,
            vec![Target::Edge]
        );
        assert_eq!(
            "users, edge".parse::<Targets>().expect("valid").0,
            vec![Target::Users, Target::Edge]
        );
        // The edge starts after the services of its process.
        assert_eq!(
            "edge,catalog".parse::<Targets>().expect("valid").0,
            vec![Target::Catalog, Target::Edge]
        );
        let err = "users,billing".parse::<Targets>().expect_err("unknown");
        assert!(
            err.contains("billing") && err.contains("known targets"),
            "{err}"
        );
    }
}
