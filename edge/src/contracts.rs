//! Where the edge's contracts come from, and the route table and OpenAPI
//! document built from them.
//!
//! Three sources, in order of precedence, lowest first:
//! 1. the contracts the binary was built with (`agora.*`);
//! 2. descriptor set files (`buf build -o contracts.binpb`, or `protoc
//!    --include_imports --descriptor_set_out`), given by
//!    `AGORA_EDGE_DESCRIPTOR_SETS` or `agora serve --descriptor-set`;
//! 3. the server reflection of each upstream that has it switched on
//!    (`AGORA_EDGE_<NAME>_REFLECTION=true`).
//!
//! A service found in a later source replaces the same service from an
//! earlier one, so a service that gained methods is served in full without
//! a new edge. Files and reflection are read again every refresh interval;
//! when what they hold changed, the route table and the OpenAPI document are
//! rebuilt and swapped in whole, between requests.

use std::{path::PathBuf, sync::Arc, time::Duration};

use agora_kit::config::{ConfigError, Env};
use anyhow::Context as _;
use arc_swap::ArcSwap;
use prost_reflect::DescriptorPool;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    openapi,
    routes::{RouteTable, Transcoding},
    upstream::{Upstreams, UpstreamsConfig, setting},
};

/// `[edge.contracts]`: which contracts the edge serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContractsConfig {
    /// Serve the contracts the binary was built with
    /// (`AGORA_EDGE_EMBEDDED_CONTRACTS`, default true).
    pub embedded: bool,
    /// Encoded `FileDescriptorSet` files whose annotated services the edge
    /// serves too (`AGORA_EDGE_DESCRIPTOR_SETS`, a comma list of paths;
    /// `agora serve --descriptor-set PATH` adds one).
    pub descriptor_sets: Vec<PathBuf>,
    /// How often descriptor set files and upstreams' reflection are read
    /// again, in seconds (`AGORA_EDGE_CONTRACTS_REFRESH_SECS`, default 60;
    /// 0: only at start). While an upstream's reflection has not answered
    /// yet, it is asked again every few seconds.
    #[serde(with = "agora_kit::config::secs")]
    pub refresh: Duration,
}

impl Default for ContractsConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            descriptor_sets: Vec::new(),
            refresh: Duration::from_secs(60),
        }
    }
}

impl ContractsConfig {
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        env.parse_into("AGORA_EDGE_EMBEDDED_CONTRACTS", &mut self.embedded)?;
        if let Some(list) = env.get("AGORA_EDGE_DESCRIPTOR_SETS") {
            self.descriptor_sets = list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        env.secs_into("AGORA_EDGE_CONTRACTS_REFRESH_SECS", &mut self.refresh)
    }
}

/// How often an upstream whose reflection has not answered is asked again.
const RETRY_UNREAD: Duration = Duration::from_secs(3);

/// The longest the edge waits for one upstream's reflection.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The route table and OpenAPI document of one version of the contracts.
pub struct Contract {
    pub routes: RouteTable,
    /// The OpenAPI document, rendered once.
    pub openapi: bytes::Bytes,
    /// A digest of every source's descriptors: equal digests, equal
    /// contracts.
    digest: [u8; 32],
    /// Upstreams with reflection on that did not answer.
    pub unread: Vec<String>,
}

/// The contracts in force, swapped whole on refresh.
pub type Current = Arc<ArcSwap<Contract>>;

/// Reads the sources and builds contracts from them.
pub struct Loader {
    config: ContractsConfig,
    upstreams: UpstreamsConfig,
    transcoding: Transcoding,
}

/// The descriptors of one source, as read.
struct Source {
    /// Where they came from, for messages.
    name: String,
    /// The upstream serving every service found here (reflection).
    upstream: Option<String>,
    /// Serve only Agora's own packages from here (the built-in set also
    /// holds the well-known types and the options' definitions).
    only_agora: bool,
    bytes: bytes::Bytes,
}

impl Loader {
    pub fn new(
        config: ContractsConfig,
        upstreams: UpstreamsConfig,
        transcoding: Transcoding,
    ) -> Self {
        Self {
            config,
            upstreams,
            transcoding,
        }
    }

    pub fn refresh_interval(&self) -> Option<Duration> {
        let dynamic = !self.config.descriptor_sets.is_empty()
            || self.upstreams.0.values().any(|p| p.reflection);
        (dynamic && !self.config.refresh.is_zero()).then_some(self.config.refresh)
    }

    /// Builds contracts from the embedded ones and the files, and from the
    /// reflection of `upstreams` when given. A bad file or a binding that
    /// no upstream serves is an error; an upstream whose reflection does not
    /// answer is left out and listed in [`Contract::unread`].
    pub async fn load(&self, upstreams: Option<&Upstreams>) -> anyhow::Result<Contract> {
        let mut sources = Vec::new();
        if self.config.embedded {
            sources.push(Source {
                name: "the built-in contracts".into(),
                upstream: None,
                only_agora: true,
                bytes: bytes::Bytes::from_static(agora_proto::FILE_DESCRIPTOR_SET),
            });
        }
        for path in &self.config.descriptor_sets {
            let bytes = tokio::fs::read(path).await.with_context(|| {
                format!(
                    "cannot read the descriptor set {} (AGORA_EDGE_DESCRIPTOR_SETS, \
                     --descriptor-set)",
                    path.display()
                )
            })?;
            sources.push(Source {
                name: path.display().to_string(),
                upstream: None,
                only_agora: false,
                bytes: bytes.into(),
            });
        }
        let mut unread = Vec::new();
        if let Some(upstreams) = upstreams {
            let reflecting = self.upstreams.0.iter().filter(|(_, p)| p.reflection);
            let fetches = reflecting.filter_map(|(name, _)| {
                let upstream = upstreams.get(name)?;
                let channel = upstream.channel.clone();
                Some(async move {
                    (
                        name,
                        crate::reflection::fetch(channel, REFLECTION_TIMEOUT).await,
                    )
                })
            });
            for (name, fetched) in futures::future::join_all(fetches).await {
                match fetched {
                    Ok(bytes) => sources.push(Source {
                        name: format!("the server reflection of upstream {name}"),
                        upstream: Some(name.clone()),
                        only_agora: false,
                        bytes: bytes.into(),
                    }),
                    Err(e) => {
                        tracing::warn!(
                            upstream = %name,
                            error = %e,
                            "cannot read the upstream's contracts by server reflection; \
                             its routes wait until it answers"
                        );
                        unread.push(name.clone());
                    }
                }
            }
        } else {
            unread.extend(
                self.upstreams
                    .0
                    .iter()
                    .filter(|(_, p)| p.reflection)
                    .map(|(n, _)| n.clone()),
            );
        }
        self.build(&sources, unread)
    }

    fn build(&self, sources: &[Source], unread: Vec<String>) -> anyhow::Result<Contract> {
        let mut digest = Sha256::new();
        let mut tables = Vec::with_capacity(sources.len());
        for source in sources {
            digest.update((source.bytes.len() as u64).to_le_bytes());
            digest.update(&source.bytes);
            let pool = DescriptorPool::decode(source.bytes.clone())
                .with_context(|| format!("{}: not a valid descriptor set", source.name))?;
            let table = RouteTable::from_services(&pool, |service| {
                let package = service.package_name();
                if source.only_agora && !package.starts_with("agora.") {
                    return None;
                }
                // Configuration first, then Agora's own naming
                // (agora.<upstream>.v1), then the upstream whose reflection
                // described the service.
                let upstream = self
                    .upstreams
                    .serving(package)
                    .map(str::to_owned)
                    .or_else(|| builtin_upstream(package))
                    .or_else(|| source.upstream.clone());
                Some(match upstream {
                    Some(name) if self.upstreams.0.contains_key(&name) => Ok(name.into()),
                    Some(name) => Err(format!(
                        "its upstream {name:?} is not configured: set {}",
                        setting(&name, "_URL")
                    )),
                    None => Err(format!(
                        "no upstream serves package {package} (from {}): list it in \
                         AGORA_EDGE_<NAME>_PACKAGES of the upstream that does",
                        source.name
                    )),
                })
            })
            .with_context(|| format!("{}: cannot build routes", source.name))?;
            tables.push(table);
        }
        let routes = RouteTable::merge(tables)
            .context("the contracts bind one path twice")?
            .with_transcoding(self.transcoding);
        let openapi = serde_json::to_vec(&openapi::document(&routes))
            .context("cannot render the OpenAPI document")?
            .into();
        Ok(Contract {
            routes,
            openapi,
            digest: digest.finalize().into(),
            unread,
        })
    }
}

/// `agora.users.v1` → `users`: the upstream serving one of Agora's own
/// packages.
fn builtin_upstream(package: &str) -> Option<String> {
    let mut parts = package.split('.');
    (parts.next() == Some("agora"))
        .then(|| parts.next())
        .flatten()
        .map(str::to_owned)
}

/// Keeps `current` up to date with the sources until `shutdown`.
pub async fn refresh(
    loader: Arc<Loader>,
    current: Current,
    upstreams: Upstreams,
    shutdown: agora_kit::shutdown::Shutdown,
) {
    let Some(every) = loader.refresh_interval() else {
        return;
    };
    loop {
        let wait = if current.load().unread.is_empty() {
            every
        } else {
            every.min(RETRY_UNREAD)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.stopping() => return,
        }
        match loader.load(Some(&upstreams)).await {
            Ok(next) => {
                let before = current.load();
                if next.digest == before.digest && next.unread == before.unread {
                    continue;
                }
                tracing::info!(
                    routes = next.routes.routes().len(),
                    unread = ?next.unread,
                    "contracts changed; routes and the OpenAPI document rebuilt"
                );
                crate::validate::forget_rules();
                metrics::counter!("agora_edge_contract_reloads_total", "result" => "changed")
                    .increment(1);
                current.store(Arc::new(next));
            }
            Err(e) => {
                metrics::counter!("agora_edge_contract_reloads_total", "result" => "failed")
                    .increment(1);
                tracing::error!(
                    error = format!("{e:#}"),
                    "cannot rebuild the contracts; the edge keeps serving the last good ones"
                );
            }
        }
    }
}
