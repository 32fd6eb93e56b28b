//! Caller authentication for every component except the users service
//! itself: access tokens verified locally against the users service's JWKS
//! (cached; refetched when a token names an unknown key), and API keys
//! resolved by the users service.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::auth::{
    AccessClaims, Authenticator, Caller, Credential, Presented, TokenError, VerifyingKeys,
};
use agora_proto::users::v1::{
    AuthenticateApiKeyRequest, GetJwksRequest, users_service_client::UsersServiceClient,
};
use futures::future::BoxFuture;
use http::HeaderMap;
use jsonwebtoken::{DecodingKey, jwk::Jwk};
use tokio::sync::{Mutex, RwLock};
use tonic::Status;

use crate::{access::AccessPolicy, auth::AuthLayer, balance::Balanced};

/// A refetch on an unknown key id happens at most this often, so garbage
/// tokens cannot make the edge hammer the users service.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed fetch the next one waits this long, so an outage of the
/// users service is not met with a fetch per request.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub struct RemoteAuthenticator {
    users: Option<UsersServiceClient<Balanced>>,
    keys: RwLock<VerifyingKeys>,
    /// When the next fetch may happen.
    next_fetch: Mutex<Option<Instant>>,
    issuer: String,
    audience: String,
}

impl RemoteAuthenticator {
    pub fn new(users: Option<Balanced>, issuer: &str, audience: &str) -> Arc<Self> {
        Arc::new(Self {
            users: users.map(UsersServiceClient::new),
            keys: RwLock::new(VerifyingKeys::new(issuer, audience)),
            next_fetch: Mutex::new(None),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The verified caller, `None` without credentials, or 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, Status> {
        match Presented::from_headers(headers)? {
            None => Ok(None),
            Some(Presented::AccessToken(token)) => {
                let claims = self.verify(token).await?;
                Ok(Some(claims.into()))
            }
            Some(Presented::ApiKey(secret)) => {
                let Some(users) = self.users.clone() else {
                    return Err(Status::unavailable(
                        "API keys cannot be checked: no users service configured",
                    ));
                };
                let mut request = tonic::Request::new(AuthenticateApiKeyRequest {
                    secret: secret.to_owned(),
                });
                // Inside a served call, the check gets what is left of it.
                if let Some(left) = crate::deadline::remaining() {
                    request.set_timeout(left);
                }
                let key = users
                    .clone()
                    .authenticate_api_key(request)
                    .await?
                    .into_inner();
                Ok(Some(Caller {
                    user_id: key.user_id,
                    roles: key.roles,
                    credential: Credential::ApiKey {
                        key_id: key.key_id,
                        permissions: key.permissions,
                        rate_limit_per_minute: key.rate_limit_per_minute.max(0) as u32,
                    },
                }))
            }
        }
    }

    async fn verify(&self, token: &str) -> Result<AccessClaims, Status> {
        let unauthenticated = |e: TokenError| Status::unauthenticated(e.to_string());
        let kid = VerifyingKeys::kid_of(token)
            .map_err(unauthenticated)?
            .ok_or(TokenError::UnknownKey)
            .map_err(unauthenticated)?;
        if !self.keys.read().await.contains(&kid)
            && !self.refresh().await
            && self.keys.read().await.is_empty()
        {
            // Without any key the edge cannot tell good tokens from bad:
            // that is an outage, not the caller's fault.
            return Err(Status::unavailable(
                "access tokens cannot be verified right now; try again later",
            ));
        }
        self.keys
            .read()
            .await
            .verify(token)
            .map_err(unauthenticated)
    }

    /// Refetches the JWKS unless that happened within the last few seconds
    /// (one second after a failure). Returns whether keys were fetched.
    async fn refresh(&self) -> bool {
        let Some(users) = self.users.clone() else {
            return false;
        };
        let mut next = self.next_fetch.lock().await;
        if next.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let jwks = match users.clone().get_jwks(GetJwksRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(code = ?e.code(), error = %e.message(), "cannot fetch the JWKS from the users service");
                *next = Some(Instant::now() + RETRY_AFTER_FAILURE);
                return false;
            }
        };
        *next = Some(Instant::now() + MIN_REFRESH_INTERVAL);
        let mut keys = VerifyingKeys::new(&self.issuer, &self.audience);
        for k in jwks.keys {
            let jwk: Result<Jwk, _> = serde_json::from_value(serde_json::json!({
                "kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.r#use,
            }));
            match jwk
                .map_err(|e| e.to_string())
                .and_then(|j| DecodingKey::from_jwk(&j).map_err(|e| e.to_string()))
            {
                Ok(key) => keys.insert(k.kid, key),
                Err(e) => tracing::warn!(kid = %k.kid, error = %e, "skipping an unusable JWKS key"),
            }
        }
        *self.keys.write().await = keys;
        true
    }
}

impl Authenticator for RemoteAuthenticator {
    fn authenticate<'a>(
        &'a self,
        headers: &'a http::HeaderMap,
    ) -> BoxFuture<'a, Result<Option<Caller>, Status>> {
        Box::pin(RemoteAuthenticator::authenticate(self, headers))
    }
}

/// The authentication layer of a service that does not own credentials:
/// the contracts' access policy, with tokens verified against the users
/// service's public keys and API keys checked by it, through `users`.
pub fn service_auth(users: Balanced, issuer: &str, audience: &str) -> anyhow::Result<AuthLayer> {
    Ok(AuthLayer::new(
        AccessPolicy::from_contracts()?,
        RemoteAuthenticator::new(Some(users), issuer, audience),
    ))
}
