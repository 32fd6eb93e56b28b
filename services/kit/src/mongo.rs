//! MongoDB connections, made the same way by every service that keeps
//! documents: the database named in `MONGODB_URI` (or `agora`), short
//! timeouts so a missing server fails fast, errors that name the setting.

use std::time::Duration;

use mongodb::{Client, Database, options::ClientOptions};

use crate::config::ConfigError;

/// The database used when `MONGODB_URI` names none.
pub const DEFAULT_DATABASE: &str = "agora";

/// Checks that `uri` looks like a MongoDB connection string.
pub fn validate_uri(uri: &str) -> Result<(), ConfigError> {
    if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "MONGODB_URI",
            "must start with mongodb:// or mongodb+srv://",
        ))
    }
}

/// The database of `uri`, with a client that names `app` to the server.
/// Nothing is sent yet: the first operation connects.
pub async fn database(uri: &str, app: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| anyhow::anyhow!("MONGODB_URI: not a MongoDB URI: {e}"))?;
    options.app_name = Some(app.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(2));
    let name = options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
    let client = Client::with_options(options)
        .map_err(|e| anyhow::anyhow!("MONGODB_URI: cannot make a client: {e}"))?;
    Ok(client.database(&name))
}
