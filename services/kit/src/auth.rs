//! Who is calling: access-token claims, the verified [`Caller`], the metadata
//! names that carry credentials between the edge and services, and the
//! authentication layer each service puts in front of its handlers.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use crate::access::{AccessPolicy, authorize};

/// Header/metadata carrying an API key secret.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Metadata the edge adds with the verified caller's user id (informational:
/// services authenticate the credential themselves).
pub const CALLER_ID_HEADER: &str = "x-agora-user-id";
/// The only signing algorithm accepted for access tokens.
pub const ACCESS_TOKEN_ALG: Algorithm = Algorithm::EdDSA;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// Roles held when the token was issued, lower case.
    pub roles: Vec<String>,
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A verified access token.
    AccessToken,
    /// An API key with its own permissions and rate limit.
    ApiKey {
        key_id: String,
        permissions: Vec<String>,
        /// Calls per minute the key may make; 0 means the edge's default
        /// for signed-in users.
        rate_limit_per_minute: u32,
    },
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub roles: Vec<String>,
    pub credential: Credential,
}

impl Caller {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The caller attached by the authentication layer, for handlers.
    pub fn from_request<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("this method needs credentials"))
    }
}

/// Why an access token was refused. The text is safe to show to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token must be signed with EdDSA")]
    WrongAlgorithm,
    #[error("the access token's signing key is unknown")]
    UnknownKey,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is invalid")]
    Invalid,
}

/// Public keys that verify access tokens, by key id.
#[derive(Clone, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, DecodingKey>,
    issuer: String,
    audience: String,
}

impl VerifyingKeys {
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            keys: HashMap::new(),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub fn insert(&mut self, kid: impl Into<String>, key: DecodingKey) {
        self.keys.insert(kid.into(), key);
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key id a token names, if its header is readable.
    pub fn kid_of(token: &str) -> Result<Option<String>, TokenError> {
        jsonwebtoken::decode_header(token)
            .map(|h| h.kid)
            .map_err(|_| TokenError::Malformed)
    }

    /// Verifies signature, algorithm, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != ACCESS_TOKEN_ALG {
            return Err(TokenError::WrongAlgorithm);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(ACCESS_TOKEN_ALG);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => TokenError::Malformed,
                    _ => TokenError::Invalid,
                }
            })
    }
}

/// The bearer token of an `authorization` header value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The credential a request presents, read from its headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `authorization: Bearer <token>`.
    AccessToken(&'a str),
    /// `x-api-key: <secret>`.
    ApiKey(&'a str),
}

impl<'a> Presented<'a> {
    /// The request's credential, `None` without one, or Unauthenticated
    /// when a header is present but unusable.
    pub fn from_headers(headers: &'a http::HeaderMap) -> Result<Option<Self>, Status> {
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            return value
                .to_str()
                .ok()
                .and_then(bearer)
                .map(|t| Some(Self::AccessToken(t)))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "the authorization header must be `Bearer <access token>`",
                    )
                });
        }
        if let Some(value) = headers.get(API_KEY_HEADER) {
            return value
                .to_str()
                .map(|k| Some(Self::ApiKey(k)))
                .map_err(|_| Status::unauthenticated("the API key is invalid"));
        }
        Ok(None)
    }
}

impl From<AccessClaims> for Caller {
    fn from(claims: AccessClaims) -> Self {
        Caller {
            user_id: claims.sub,
            roles: claims.roles,
            credential: Credential::AccessToken,
        }
    }
}

/// Turns request credentials into a [`Caller`]. `Ok(None)` means the request
/// carried no credentials; bad credentials are an error.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, Status>>;
}

// === impl AuthLayer ===

/// Authenticates and authorizes each call against the contracts' access
/// policy before it reaches a handler, which finds the [`Caller`] in the
/// request extensions. Public methods get a caller too when the request
/// carries valid credentials (to personalise), and none otherwise.
#[derive(Clone)]
pub struct AuthLayer {
    policy: AccessPolicy,
    authenticator: Arc<dyn Authenticator>,
}

impl AuthLayer {
    pub fn new(policy: AccessPolicy, authenticator: Arc<dyn Authenticator>) -> Self {
        Self {
            policy,
            authenticator,
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is the one that was not polled ready: swap so the ready
        // service handles this request (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            if let Some(access) = layer.policy.get(req.uri().path()) {
                let caller = match layer.authenticator.authenticate(req.headers()).await {
                    Ok(caller) => caller,
                    // Public methods serve anonymous callers; a stale token
                    // sent along (say, to refresh) must not block them.
                    Err(_) if access.public => None,
                    Err(status) => return Ok(status.into_http()),
                };
                if let Err(status) = authorize(access, caller.as_ref()) {
                    return Ok(status.into_http());
                }
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
