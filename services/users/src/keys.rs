//! The access-token signing key (Ed25519, `EdDSA`), the tokens it signs and
//! the JWKS that lets anyone verify them.

use std::path::PathBuf;

use agora_kit::auth::{ACCESS_TOKEN_ALG, AccessClaims, VerifyingKeys};
use agora_proto::users::v1::Jwk;
use anyhow::Context as _;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use sha2::{Digest, Sha256};

/// Where the signing key comes from.
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// A PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) given inline.
    Pem(String),
    /// A file holding such a PEM.
    File(PathBuf),
    /// A key generated at start: tokens stop verifying when the process restarts.
    #[default]
    Generated,
}

/// The signing key and what is derived from it.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    verifying: VerifyingKeys,
}

impl SigningKey {
    pub fn load(source: &KeySource, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let pkcs8 = match source {
            KeySource::Pem(pem) => {
                pem_to_der(pem).context("AGORA_JWT_PRIVATE_KEY is not a PKCS#8 Ed25519 PEM")?
            }
            KeySource::File(path) => {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!("AGORA_JWT_PRIVATE_KEY_FILE: cannot read {}", path.display())
                })?;
                pem_to_der(&pem).with_context(|| {
                    format!(
                        "AGORA_JWT_PRIVATE_KEY_FILE: {} is not a PKCS#8 Ed25519 PEM",
                        path.display()
                    )
                })?
            }
            KeySource::Generated => {
                tracing::warn!(
                    "no AGORA_JWT_PRIVATE_KEY configured: generated a signing key for this process only; \
                     tokens will not survive a restart and replicas will not share them"
                );
                let rng = aws_lc_rs::rand::SystemRandom::new();
                Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?
                    .as_ref()
                    .to_vec()
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| anyhow::anyhow!("the signing key is not usable Ed25519: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        // The key id is a digest of the public key, so every replica holding
        // the same key names it the same way.
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(&public)[..12]);
        let x = URL_SAFE_NO_PAD.encode(&public);
        let mut verifying = VerifyingKeys::new(issuer, audience);
        verifying.insert(kid.clone(), DecodingKey::from_ed_der(&public));
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            kid: kid.clone(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
        };
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(&pkcs8),
            jwk,
            verifying,
        })
    }

    pub fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let mut header = Header::new(ACCESS_TOKEN_ALG);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("cannot sign an access token")
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn verifying(&self) -> &VerifyingKeys {
        &self.verifying
    }
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let parsed = pem::parse(pem.trim())?;
    anyhow::ensure!(
        parsed.tag() == "PRIVATE KEY",
        "expected a PRIVATE KEY block, found {}",
        parsed.tag()
    );
    Ok(parsed.into_contents())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_kit::auth::TokenError;

    fn claims(exp_offset: i64) -> AccessClaims {
        let now = chrono::Utc::now().timestamp();
        AccessClaims {
            iss: "agora".into(),
            aud: "agora".into(),
            sub: "u1".into(),
            exp: now + exp_offset,
            iat: now,
            jti: "j1".into(),
            roles: vec!["customer".into()],
        }
    }

    #[test]
    fn signed_tokens_verify_with_the_same_key_only() {
        let key = SigningKey::load(&KeySource::Generated, "agora", "agora").expect("key");
        let other = SigningKey::load(&KeySource::Generated, "agora", "agora").expect("key");
        let token = key.sign(&claims(60)).expect("sign");
        assert_eq!(key.verifying().verify(&token).expect("valid").sub, "u1");
        assert_eq!(
            other.verifying().verify(&token),
            Err(TokenError::UnknownKey)
        );
        let expired = key.sign(&claims(-60)).expect("sign");
        assert_eq!(key.verifying().verify(&expired), Err(TokenError::Expired));
    }

    #[test]
    fn a_configured_pem_gives_a_stable_key_id() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
        let a = SigningKey::load(&KeySource::Pem(pem.clone()), "agora", "agora").expect("key");
        let b = SigningKey::load(&KeySource::Pem(pem), "agora", "agora").expect("key");
        assert_eq!(a.jwk().kid, b.jwk().kid);
        assert!(SigningKey::load(&KeySource::Pem("not a key".into()), "agora", "agora").is_err());
    }
}
