//! Secrets the service hands out or checks: argon2id password hashes, and
//! random bearer secrets (refresh tokens, one-time tokens, API keys) of which
//! only a SHA-256 is stored. SHA-256 suffices for those: they carry 256 bits
//! of entropy, so there is nothing to brute-force, and lookups stay indexed.

use std::{sync::LazyLock, time::Duration};

use anyhow::Context as _;
use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::UsersError;

/// Password hashes computed at once: about the number of cores. Each
/// argon2id hash holds 19 MiB and a blocking thread for tens of
/// milliseconds, so a flood of sign-ins must queue here, not spawn hundreds
/// of threads.
static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// How long a sign-in waits for a hashing slot before it is refused.
pub const HASHING_WAIT: Duration = Duration::from_secs(1);

/// Runs `work` on the blocking pool once a hashing slot is free, or fails
/// with [`UsersError::Busy`] after [`HASHING_WAIT`].
async fn hashing<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, UsersError> {
    let _permit = match tokio::time::timeout(HASHING_WAIT, HASHING.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            metrics::counter!("users_password_hashing_refused_total").increment(1);
            return Err(UsersError::Busy);
        }
    };
    Ok(tokio::task::spawn_blocking(work)
        .await
        .context("password hashing task failed")??)
}

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes).
/// Runs on the blocking pool: hashing takes tens of milliseconds of CPU.
pub async fn hash_password(password: String) -> Result<String, UsersError> {
    hashing(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
    })
    .await
}

/// Checks a password against a stored argon2 hash.
pub async fn verify_password(password: String, hash: String) -> Result<bool, UsersError> {
    hashing(move || {
        let parsed =
            PasswordHash::new(&hash).map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
}

/// A fresh secret: `prefix` followed by 32 random bytes, base64url.
pub fn new_secret(prefix: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("system random source failed"))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of a secret.
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_only_against_its_own_hash() {
        let hash = hash_password("correct horse battery".into())
            .await
            .expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(
            verify_password("correct horse battery".into(), hash.clone())
                .await
                .expect("verify")
        );
        assert!(
            !verify_password("wrong horse battery".into(), hash)
                .await
                .expect("verify")
        );
    }

    #[test]
    fn secrets_are_unique_and_hashed() {
        let a = new_secret("rt_").expect("random");
        let b = new_secret("rt_").expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with("rt_") && a.len() > 40);
        assert_eq!(digest(&a).len(), 32);
    }
}
