//! The module table: which components exist, what each depends on, and how
//! a set of targets becomes one running process.
//!
//! Components are built once each, each after the modules it calls; each
//! binds its listener in `build`, so `App::build` with port 0 gives tests
//! real addresses before anything serves. Callers in the same process are
//! wired to where their callees listen, and call them in process (see
//! `agora_kit::local`).

use std::{fmt, net::SocketAddr, str::FromStr};

use futures::future::BoxFuture;

use agora_analytics::AnalyticsComponent;
use agora_catalog::CatalogComponent;
use agora_chat::ChatComponent;
use agora_edge::EdgeComponent;
use agora_kit::{
    admin::{self, Readiness},
    shutdown::Shutdown,
};
use agora_users::UsersComponent;
use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinSet};

use crate::config::Config;

/// A component that is built and listening, not yet serving.
pub struct Built {
    addr: SocketAddr,
    run: Box<dyn FnOnce(Shutdown) -> BoxFuture<'static, anyhow::Result<()>> + Send>,
}

impl Built {
    fn new<F>(addr: SocketAddr, run: impl FnOnce(Shutdown) -> F + Send + 'static) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            addr,
            run: Box::new(move |s| Box::pin(run(s))),
        }
    }
}

type Build = for<'a> fn(&'a Config) -> BoxFuture<'a, anyhow::Result<Built>>;

/// One component of the mesh: everything the process needs to know of it.
pub struct Module {
    /// Its `--target` name.
    pub name: &'static str,
    /// Its `service.name` in traces.
    pub service_name: &'static str,
    /// The modules it calls. In one process they start first, and it is
    /// wired to where they listen.
    pub calls: &'static [&'static str],
    pub about: &'static str,
    /// Its PostgreSQL schema and migrations, if it has one (`agora
    /// migrate` applies each).
    pub database: Option<agora_kit::db::ServiceDatabase>,
    /// Builds it from the configuration (binds its listener).
    build: Build,
    /// Points its callers' settings at `url`, where it listens in this
    /// process; `None` for a module nobody calls.
    wire: Option<fn(&mut Config, &str)>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Module {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The module table. Adding a component is one entry here. Infrastructure
/// (the PostgreSQL pools, the admin server) is not a module.
pub static MODULES: &[Module] = &[
    Module {
        name: "users",
        service_name: agora_users::COMPONENT,
        calls: &[],
        about: "accounts, passwords, JWT/JWKS, roles, API keys (gRPC 3001; PostgreSQL)",
        database: Some(agora_users::DATABASE),
        build: |c| {
            Box::pin(async move {
                let users = UsersComponent::build(c.users.clone(), &c.database, &c.events)
                    .await
                    .context("Failed to start the users service")?;
                Ok(Built::new(users.local_addr()?, |s| users.run(s)))
            })
        },
        wire: Some(|c, url| {
            c.edge.set_upstream_url("users", url);
            c.catalog.users_url = url.to_owned();
            c.chat.users_url = url.to_owned();
            c.analytics.users_url = url.to_owned();
        }),
    },
    Module {
        name: "catalog",
        service_name: agora_catalog::COMPONENT,
        calls: &["users"],
        about: "products, categories, stock, reservations, search, recommendations (gRPC 3002; PostgreSQL, Redis)",
        database: Some(agora_catalog::DATABASE),
        build: |c| {
            Box::pin(async move {
                let catalog = CatalogComponent::build(c.catalog.clone(), &c.database, &c.events)
                    .await
                    .context("Failed to start the catalog service")?;
                Ok(Built::new(catalog.local_addr()?, |s| catalog.run(s)))
            })
        },
        wire: Some(|c, url| c.edge.set_upstream_url("catalog", url)),
    },
    Module {
        name: "chat",
        service_name: agora_chat::COMPONENT,
        calls: &["users"],
        about: "rooms, encrypted messages, live streams, notifications (gRPC 3003; MongoDB, Redis)",
        database: None,
        build: |c| {
            Box::pin(async move {
                let chat = ChatComponent::build(c.chat.clone(), &c.events)
                    .await
                    .context("Failed to start the chat service")?;
                Ok(Built::new(chat.local_addr()?, |s| chat.run(s)))
            })
        },
        wire: Some(|c, url| c.edge.set_upstream_url("chat", url)),
    },
    Module {
        name: "analytics",
        service_name: agora_analytics::COMPONENT,
        calls: &["users"],
        about: "events from SQS, rollups, reports, forecasts, scheduled jobs (gRPC 8000; MongoDB, PostgreSQL, SQS)",
        database: Some(agora_analytics::DATABASE),
        build: |c| {
            Box::pin(async move {
                let analytics =
                    AnalyticsComponent::build(c.analytics.clone(), &c.database, &c.events)
                        .await
                        .context("Failed to start the analytics service")?;
                Ok(Built::new(analytics.local_addr()?, |s| analytics.run(s)))
            })
        },
        wire: Some(|c, url| c.edge.set_upstream_url("analytics", url)),
    },
    Module {
        name: "edge",
        service_name: agora_edge::COMPONENT,
        calls: &["users", "catalog", "chat", "analytics"],
        about: "REST/JSON → gRPC gateway, auth, OpenAPI, /health (HTTP 3000)",
        database: None,
        build: |c| {
            Box::pin(async move {
                let edge = EdgeComponent::build(c.edge.clone())
                    .await
                    .context("Failed to start the edge")?;
                Ok(Built::new(edge.local_addr()?, |s| edge.run(s)))
            })
        },
        wire: None,
    },
];

/// The modules a process runs, in start order: each after the modules it
/// calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets(pub Vec<&'static Module>);

impl FromStr for Targets {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut named: Vec<&'static Module> = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                named.extend(MODULES.iter());
                continue;
            }
            let module = MODULES.iter().find(|m| m.name == name).ok_or_else(|| {
                let known: Vec<_> = MODULES.iter().map(|m| m.name).collect();
                format!(
                    "unknown target {name:?}; known targets: all, {}",
                    known.join(", ")
                )
            })?;
            named.push(module);
        }
        if named.is_empty() {
            return Err("name at least one target".into());
        }
        Ok(Targets(start_order(&named)))
    }
}

/// `named`, each once, every module after those it calls (among `named`);
/// otherwise in table order.
fn start_order(named: &[&'static Module]) -> Vec<&'static Module> {
    let selected: Vec<&'static Module> = MODULES
        .iter()
        .filter(|m| named.iter().any(|n| n.name == m.name))
        .collect();
    let mut order: Vec<&'static Module> = Vec::with_capacity(selected.len());
    while order.len() < selected.len() {
        let ready = selected.iter().find(|m| {
            !order.contains(m)
                && m.calls.iter().all(|c| {
                    order.iter().any(|o| o.name == *c) || !selected.iter().any(|s| s.name == *c)
                })
        });
        match ready {
            Some(m) => order.push(m),
            // A cycle in the table (a test rules it out): keep table order.
            None => return selected,
        }
    }
    order
}

/// A process with its components built and listening, not yet serving.
pub struct App {
    components: Vec<(&'static Module, Built)>,
    admin: TcpListener,
    config: Config,
}

impl App {
    pub async fn build(mut config: Config, targets: &Targets) -> anyhow::Result<Self> {
        let admin = TcpListener::bind(config.admin.addr)
            .await
            .with_context(|| format!("AGORA_ADMIN_ADDR: cannot listen on {}", config.admin.addr))?;
        let mut components = Vec::new();
        for module in &targets.0 {
            let built = (module.build)(&config).await?;
            // In one process, the modules that call this one reach it
            // where it really listens.
            if let Some(wire) = module.wire {
                wire(&mut config, &format!("http://{}", loopback(built.addr)));
            }
            tracing::info!(target = module.name, addr = %built.addr, "component built");
            components.push((*module, built));
        }
        Ok(Self {
            components,
            admin,
            config,
        })
    }

    /// The bound address of a target's listener.
    pub fn addr(&self, target: &str) -> Option<SocketAddr> {
        self.components
            .iter()
            .find(|(m, _)| m.name == target)
            .map(|(_, built)| built.addr)
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
        for (module, built) in self.components {
            let run = (built.run)(shutdown.clone());
            let name = module.name;
            tasks.spawn(async move { (name, run.await) });
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

    fn names(t: &Targets) -> Vec<&'static str> {
        t.0.iter().map(|m| m.name).collect()
    }

    #[test]
    fn targets_parse_as_a_comma_list_and_start_after_what_they_call() {
        let parse = |s: &str| names(&s.parse::<Targets>().expect("valid"));
        assert_eq!(
            parse("all"),
            ["users", "catalog", "chat", "analytics", "edge"]
        );
        assert_eq!(parse("edge"), ["edge"]);
        assert_eq!(parse("users, edge"), ["users", "edge"]);
        // Named in any order, the edge starts after the services it calls.
        assert_eq!(parse("edge,catalog"), ["catalog", "edge"]);
        assert_eq!(parse("edge,users,catalog"), ["users", "catalog", "edge"]);
        let err = "users,billing".parse::<Targets>().expect_err("unknown");
        assert!(
            err.contains("billing") && err.contains("known targets"),
            "{err}"
        );
    }

    #[test]
    fn the_module_table_is_consistent() {
        for m in MODULES {
            for called in m.calls {
                let callee = MODULES.iter().find(|c| c.name == *called);
                assert!(callee.is_some(), "{} calls unknown {called}", m.name);
                assert!(
                    callee.is_some_and(|c| c.wire.is_some()),
                    "{called} is called by {} but wires no address",
                    m.name
                );
            }
        }
        // Acyclic: every module finds its place after what it calls.
        let all: Vec<&'static Module> = MODULES.iter().collect();
        let order = start_order(&all);
        for (i, m) in order.iter().enumerate() {
            for called in m.calls {
                let j = order.iter().position(|o| o.name == *called);
                assert!(
                    j.is_some_and(|j| j < i),
                    "{} starts before {called}",
                    m.name
                );
            }
        }
    }
}
