//! The process configuration: defaults < `agora.toml` < environment.

use std::path::Path;

use agora_analytics::AnalyticsConfig;
use agora_catalog::CatalogConfig;
use agora_chat::ChatConfig;
use agora_edge::EdgeConfig;
use agora_kit::{
    admin::AdminConfig,
    config::{ConfigError, Env, load_toml},
    db::DatabaseConfig,
    events::EventsConfig,
    shutdown::ShutdownConfig,
};
use agora_users::UsersConfig;
use serde::{Deserialize, Serialize};

/// Every component's settings; `agora.toml` uses these section names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub admin: AdminConfig,
    pub shutdown: ShutdownConfig,
    pub database: DatabaseConfig,
    pub events: EventsConfig,
    pub users: UsersConfig,
    pub catalog: CatalogConfig,
    pub chat: ChatConfig,
    pub analytics: AnalyticsConfig,
    pub edge: EdgeConfig,
}

impl Config {
    /// Loads `path` (required only when named explicitly) and applies `env`.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Self, ConfigError> {
        let mut config: Config = match path {
            Some(p) => load_toml(p, true)?,
            None => load_toml(Path::new("agora.toml"), false)?,
        };
        config.admin.apply_env(env)?;
        config.shutdown.apply_env(env)?;
        config.database.apply_env(env)?;
        config.events.apply_env(env)?;
        config.users.apply_env(env)?;
        config.catalog.apply_env(env)?;
        config.chat.apply_env(env)?;
        config.analytics.apply_env(env)?;
        config.edge.apply_env(env)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agora.example.toml");
        let example = Config::load(Some(&path), &Env::default()).expect("the example parses");
        let defaults = Config::load(Some(Path::new("/nonexistent/agora.toml")), &Env::default());
        assert!(defaults.is_err(), "a named file must exist");
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&example).expect("serializes"),
            toml::to_string(&defaults).expect("serializes"),
            "agora.example.toml documents the defaults"
        );
    }

    #[test]
    fn environment_overrides_the_file_and_errors_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("agora-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("agora.toml");
        std::fs::write(
            &file,
            "[edge]\naddr = \"127.0.0.1:4000\"\nbody_limit_bytes = 2048\n",
        )
        .expect("write");
        let env = Env::from_pairs([("AGORA_EDGE_ADDR", "127.0.0.1:5000")]);
        let config = Config::load(Some(&file), &env).expect("valid");
        assert_eq!(config.edge.addr.port(), 5000);
        assert_eq!(config.edge.body_limit_bytes, 2048);

        let err = Config::load(
            Some(&file),
            &Env::from_pairs([("USER_SERVICE_URL", "not a url")]),
        )
        .expect_err("bad url");
        assert!(err.to_string().contains("USER_SERVICE_URL"), "{err}");

        std::fs::write(&file, "[edge]\nadress = \"x\"\n").expect("write");
        let err = Config::load(Some(&file), &Env::default()).expect_err("unknown key");
        assert!(err.to_string().contains("adress"), "{err}");
    }
}
