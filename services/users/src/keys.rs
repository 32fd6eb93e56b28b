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
    /// The signing key's public half first, then retired keys.
    jwks: Vec<Jwk>,
    verifying: VerifyingKeys,
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte
/// key follows it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

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
        let mut verifying = VerifyingKeys::new(issuer, audience);
        let jwk = publish(pair.public_key().as_ref(), &mut verifying);
        Ok(Self {
            kid: jwk.kid.clone(),
            encoding: EncodingKey::from_ed_der(&pkcs8),
            jwks: vec![jwk],
            verifying,
        })
    }

    /// Keeps accepting and publishing retired keys, given as PEM
    /// `PUBLIC KEY` blocks, so tokens signed before a key rotation stay
    /// valid until they expire.
    pub fn with_retired(mut self, pem_text: &str) -> anyhow::Result<Self> {
        let blocks = pem::parse_many(pem_text)?;
        anyhow::ensure!(!blocks.is_empty(), "no PEM PUBLIC KEY blocks found");
        for block in blocks {
            anyhow::ensure!(
                block.tag() == "PUBLIC KEY",
                "expected PUBLIC KEY blocks, found {}",
                block.tag()
            );
            let der = block.contents();
            let raw = der
                .strip_prefix(&ED25519_SPKI_PREFIX)
                .filter(|k| k.len() == 32)
                .ok_or_else(|| anyhow::anyhow!("a PUBLIC KEY block is not an Ed25519 key"))?;
            let jwk = publish(raw, &mut self.verifying);
            if self.jwks.iter().all(|k| k.kid != jwk.kid) {
                self.jwks.push(jwk);
            }
        }
        Ok(self)
    }

    pub fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        let mut header = Header::new(ACCESS_TOKEN_ALG);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("cannot sign an access token")
    }

    /// The signing key's JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwks[0]
    }

    /// Every key that verifies tokens: the signing key, then retired keys.
    pub fn jwks(&self) -> &[Jwk] {
        &self.jwks
    }

    pub fn verifying(&self) -> &VerifyingKeys {
        &self.verifying
    }
}

/// Makes a public key verify tokens and returns its JWK. The key id is a
/// digest of the key, so every replica names the same key the same way.
fn publish(public: &[u8], verifying: &mut VerifyingKeys) -> Jwk {
    let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]);
    verifying.insert(kid.clone(), DecodingKey::from_ed_der(public));
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(public),
        kid,
        alg: "EdDSA".into(),
        r#use: "sig".into(),
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
    fn retired_keys_still_verify_and_are_published() {
        let old = SigningKey::load(&KeySource::Generated, "agora", "agora").expect("key");
        let token = old.sign(&claims(60)).expect("sign");
        let raw = URL_SAFE_NO_PAD.decode(&old.jwk().x).expect("x");
        let spki = [ED25519_SPKI_PREFIX.as_slice(), raw.as_slice()].concat();
        let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
        let new = SigningKey::load(&KeySource::Generated, "agora", "agora").expect("key");
        assert_eq!(new.verifying().verify(&token), Err(TokenError::UnknownKey));
        let new = new.with_retired(&pem).expect("retired key");
        assert_eq!(
            new.verifying().verify(&token).expect("still valid").sub,
            "u1"
        );
        assert_eq!(new.jwks().len(), 2);
        assert_eq!(new.jwks()[1].kid, old.jwk().kid);
        assert!(
            SigningKey::load(&KeySource::Generated, "agora", "agora")
                .expect("key")
                .with_retired("junk")
                .is_err()
        );
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
