//! Layered configuration: defaults in code < optional `agora.toml` <
//! environment variables. Every error names the setting that was wrong.

use std::{collections::HashMap, fmt::Display, path::Path, str::FromStr, time::Duration};

/// A configuration problem, naming the setting and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot be used.
    #[error("invalid configuration: {setting}: {reason}")]
    Invalid { setting: String, reason: String },
    /// The configuration file could not be read or parsed.
    #[error("invalid configuration file {path}: {reason}")]
    File { path: String, reason: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, reason: impl Display) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of environment variables. Components read their settings from
/// this rather than from the process, so tests can pass their own.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment made of the given pairs only.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `name`, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The names of every variable that is set, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.as_str())
    }

    /// Overrides `target` with `name` parsed as `T`, if `name` is set.
    pub fn parse_into<T>(&self, name: &str, target: &mut T) -> Result<(), ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        if let Some(raw) = self.get(name) {
            *target = raw
                .parse()
                .map_err(|e| ConfigError::invalid(name, format!("cannot parse {raw:?}: {e}")))?;
        }
        Ok(())
    }

    /// Overrides `target` with `name` read as a whole number of milliseconds.
    pub fn millis_into(&self, name: &str, target: &mut Duration) -> Result<(), ConfigError> {
        let mut ms = target.as_millis() as u64;
        self.parse_into(name, &mut ms)?;
        *target = Duration::from_millis(ms);
        Ok(())
    }

    /// Overrides `target` with `name` as a string, if set.
    pub fn string_into(&self, name: &str, target: &mut String) {
        if let Some(raw) = self.get(name) {
            raw.clone_into(target);
        }
    }
}

/// Reads and parses a TOML file into `T`. A missing file is an error only
/// when `required`; otherwise `T::default()` is returned.
pub fn load_toml<T>(path: &Path, required: bool) -> Result<T, ConfigError>
where
    T: serde::de::DeserializeOwned + Default,
{
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(T::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Serde helpers for durations written as whole milliseconds in `agora.toml`.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Serde helpers for durations written as whole seconds in `agora.toml`.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl Env {
    /// Overrides `target` with `name` read as a whole number of seconds.
    pub fn secs_into(&self, name: &str, target: &mut Duration) -> Result<(), ConfigError> {
        let mut s = target.as_secs();
        self.parse_into(name, &mut s)?;
        *target = Duration::from_secs(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_names_the_setting() {
        let env = Env::from_pairs([("AGORA_PORT", "eighty")]);
        let mut port = 80u16;
        let err = env
            .parse_into("AGORA_PORT", &mut port)
            .expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("AGORA_PORT"), "{text}");
        assert!(text.contains("eighty"), "{text}");
        assert_eq!(port, 80);
    }

    #[test]
    fn unset_and_empty_variables_keep_the_default() {
        let env = Env::from_pairs([("EMPTY", "")]);
        let mut d = Duration::from_secs(5);
        env.millis_into("EMPTY", &mut d).expect("empty is unset");
        env.millis_into("MISSING", &mut d)
            .expect("missing is unset");
        assert_eq!(d, Duration::from_secs(5));
        let env = Env::from_pairs([("DRAIN", "250")]);
        env.millis_into("DRAIN", &mut d).expect("valid");
        assert_eq!(d, Duration::from_millis(250));
    }
}
