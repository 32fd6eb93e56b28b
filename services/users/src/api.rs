//! The gRPC surface: proto ⇄ domain. No SQL here; the store owns it.

use agora_kit::proto::{from_timestamp, page_size, parse_id, timestamp};
use std::sync::Arc;

use agora_kit::auth::{AccessClaims, Caller};
use agora_proto::users::v1::{self as pb, users_service_server::UsersService as UsersApi};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    UsersConfig,
    credentials::{ApiKeyRow, Purpose, Rotation},
    domain::{DisplayName, Email, NewPassword, Role, parse_permissions, parse_roles},
    error::UsersError,
    keys::SigningKey,
    secrets,
    store::{Store, UserRow},
};

/// Implements `agora.users.v1.UsersService`.
#[derive(Clone)]
pub struct UsersService {
    store: Store,
    keys: Arc<SigningKey>,
    config: Arc<UsersConfig>,
    /// A hash of a random password, checked when the email is unknown.
    decoy_hash: Arc<str>,
}

type Answer<T> = Result<Response<T>, Status>;

impl UsersService {
    pub async fn new(
        store: Store,
        keys: Arc<SigningKey>,
        config: Arc<UsersConfig>,
    ) -> anyhow::Result<Self> {
        let decoy = secrets::hash_password(secrets::new_secret("")?).await?;
        Ok(Self {
            store,
            keys,
            config,
            decoy_hash: decoy.into(),
        })
    }

    /// A new session: an access token and the first refresh token of a family.
    async fn open_session(&self, user: &UserRow) -> Result<pb::TokenPair, UsersError> {
        self.token_pair(user, Uuid::new_v4(), None).await
    }

    /// Signs an access token; stores the refresh token unless `rotated` says
    /// the store already did (rotation writes it in its own transaction).
    async fn token_pair(
        &self,
        user: &UserRow,
        family: Uuid,
        rotated: Option<String>,
    ) -> Result<pb::TokenPair, UsersError> {
        let now = Utc::now();
        let ttl = self.config.access_token_ttl;
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.id.to_string(),
            exp: now.timestamp() + ttl.as_secs() as i64,
            iat: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            roles: user.roles.clone(),
        };
        let access_token = self.keys.sign(&claims)?;
        let refresh_token = match rotated {
            Some(token) => token,
            None => {
                let token = secrets::new_secret("rt_")?;
                self.store
                    .insert_refresh_token(
                        &secrets::digest(&token),
                        family,
                        user.id,
                        self.refresh_expiry(),
                    )
                    .await?;
                token
            }
        };
        Ok(pb::TokenPair {
            access_token,
            token_type: "Bearer".into(),
            expires_in: ttl.as_secs() as i32,
            refresh_token,
        })
    }

    fn refresh_expiry(&self) -> DateTime<Utc> {
        Utc::now() + self.config.refresh_token_ttl
    }

    async fn issue_verification(&self, user: &UserRow) -> Result<DateTime<Utc>, UsersError> {
        let secret = secrets::new_secret("ev_")?;
        let expires = Utc::now() + self.config.verification_token_ttl;
        self.store
            .issue_one_time_token(
                user,
                Purpose::EmailVerification,
                &secrets::digest(&secret),
                &secret,
                expires,
            )
            .await?;
        Ok(expires)
    }

    /// The calling user's id, from the credential the auth layer verified.
    fn caller_id<T>(req: &Request<T>) -> Result<Uuid, Status> {
        let caller = Caller::from_request(req)?;
        Uuid::parse_str(&caller.user_id)
            .map_err(|_| Status::unauthenticated("the credential names no valid user"))
    }

    /// The calling user, who must still be active.
    async fn active_caller<T>(&self, req: &Request<T>) -> Result<UserRow, Status> {
        let id = Self::caller_id(req)?;
        match self.store.user(id).await? {
            Some(user) if user.active => Ok(user),
            Some(_) => Err(UsersError::Deactivated.into()),
            None => Err(Status::unauthenticated(
                "the credential's user no longer exists",
            )),
        }
    }
}

fn user_pb(row: &UserRow) -> pb::User {
    pb::User {
        id: row.id.to_string(),
        email: row.email.clone(),
        display_name: row.display_name.clone(),
        roles: row
            .roles()
            .into_iter()
            .map(|r| r.to_proto() as i32)
            .collect(),
        email_verified: row.email_verified,
        active: row.active,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

fn api_key_pb(row: &ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id.to_string(),
        name: row.name.clone(),
        prefix: row.prefix.clone(),
        permissions: row.permissions.clone(),
        rate_limit_per_minute: row.rate_limit_per_minute,
        expire_time: row.expires_at.map(timestamp),
        create_time: Some(timestamp(row.created_at)),
        last_use_time: row.last_used_at.map(timestamp),
    }
}

/// Page tokens are opaque to clients: base64url of `created_at|id`.
fn encode_page_token(row: &UserRow) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", row.created_at.timestamp_micros(), row.id))
}

fn decode_page_token(token: &str) -> Result<(DateTime<Utc>, Uuid), UsersError> {
    let invalid = || UsersError::invalid("page_token", "is not a token from a previous page");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (micros, id) = raw.split_once('|').ok_or_else(invalid)?;
    let ts = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(invalid)?;
    Ok((ts, Uuid::parse_str(id).map_err(|_| invalid())?))
}

#[tonic::async_trait]
impl UsersApi for UsersService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Answer<pb::RegisterResponse> {
        let req = req.into_inner();
        let email = Email::parse(&req.email)?;
        let name = DisplayName::parse("display_name", &req.display_name)?;
        let password = NewPassword::parse("password", req.password)?;
        let hash = secrets::hash_password(password.expose().to_owned()).await?;
        let user = self
            .store
            .create_user(
                email.as_str(),
                email.normalized(),
                name.as_str(),
                &hash,
                &[Role::Customer],
                false,
            )
            .await?;
        self.issue_verification(&user).await?;
        tracing::info!(user_id = %user.id, "account registered");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Answer<pb::LoginResponse> {
        let req = req.into_inner();
        let email = Email::parse(&req.email).map_err(|_| UsersError::InvalidCredentials)?;
        let user = self.store.user_by_email(email.normalized()).await?;
        // Hash even for unknown emails, so timing does not reveal accounts.
        let (hash, user) = match user {
            Some(u) => (u.password_hash.clone(), Some(u)),
            None => (self.decoy_hash.to_string(), None),
        };
        let ok = secrets::verify_password(req.password, hash).await?;
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(UsersError::InvalidCredentials.into()),
        };
        if !user.active {
            return Err(UsersError::Deactivated.into());
        }
        let tokens = self.open_session(&user).await?;
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(tokens),
            user: Some(user_pb(&user)),
        }))
    }

    async fn refresh_token(
        &self,
        req: Request<pb::RefreshTokenRequest>,
    ) -> Answer<pb::RefreshTokenResponse> {
        let presented = req.into_inner().refresh_token;
        let next = secrets::new_secret("rt_").map_err(UsersError::from)?;
        let rotation = self
            .store
            .rotate_refresh_token(
                &secrets::digest(&presented),
                &secrets::digest(&next),
                self.refresh_expiry(),
            )
            .await?;
        match rotation {
            Rotation::Rotated(user) => {
                let tokens = self.token_pair(&user, Uuid::nil(), Some(next)).await?;
                Ok(Response::new(pb::RefreshTokenResponse {
                    tokens: Some(tokens),
                }))
            }
            Rotation::Reused => {
                tracing::warn!("refresh token reused: its session was revoked");
                Err(UsersError::InvalidToken(
                    "the refresh token was already used; the session has been revoked",
                )
                .into())
            }
            Rotation::Invalid => {
                Err(UsersError::InvalidToken("the refresh token is invalid or expired").into())
            }
        }
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Answer<pb::LogoutResponse> {
        let presented = req.into_inner().refresh_token;
        // Logging out twice is not an error: the session is over either way.
        self.store
            .revoke_family_of(&secrets::digest(&presented))
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_me(&self, req: Request<pb::GetMeRequest>) -> Answer<pb::GetMeResponse> {
        let user = self.active_caller(&req).await?;
        Ok(Response::new(pb::GetMeResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn update_me(&self, req: Request<pb::UpdateMeRequest>) -> Answer<pb::UpdateMeResponse> {
        let me = self.active_caller(&req).await?;
        let req = req.into_inner();
        let patch = req.user.unwrap_or_default();
        let mut paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        // Without a mask, the fields present in the body are updated; with
        // none present, nothing changes.
        if paths.is_empty() && !patch.display_name.is_empty() {
            paths.push("display_name".to_owned());
        }
        let mut name = None;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    name = Some(DisplayName::parse(
                        "user.display_name",
                        &patch.display_name,
                    )?)
                }
                other => {
                    return Err(UsersError::invalid(
                        "update_mask",
                        format!("{other:?} cannot be updated here; only display_name can"),
                    )
                    .into());
                }
            }
        }
        let user = match name {
            Some(name) => self
                .store
                .update_display_name(me.id, name.as_str())
                .await?
                .ok_or(UsersError::Deactivated)?,
            None => me,
        };
        Ok(Response::new(pb::UpdateMeResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Answer<pb::ListUsersResponse> {
        let req = req.into_inner();
        let size = page_size(req.page_size, 50);
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&req.page_token)?)
        };
        // Fetch one extra row to know whether another page follows.
        let mut rows = self.store.list_users(i64::from(size) + 1, after).await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = if more {
            rows.last().map(encode_page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListUsersResponse {
            users: rows.iter().map(user_pb).collect(),
            next_page_token,
        }))
    }

    async fn lookup_users(
        &self,
        req: Request<pb::LookupUsersRequest>,
    ) -> Answer<pb::LookupUsersResponse> {
        let req = req.into_inner();
        if req.ids.is_empty() || req.ids.len() > 100 {
            return Err(UsersError::invalid("ids", "name 1 to 100 users").into());
        }
        let ids = req
            .ids
            .iter()
            .map(|id| parse_id("ids", id))
            .collect::<Result<Vec<_>, _>>()?;
        let users = self.store.profiles(&ids).await?;
        Ok(Response::new(pb::LookupUsersResponse {
            users: users
                .into_iter()
                .map(|(id, display_name)| pb::UserProfile {
                    id: id.to_string(),
                    display_name,
                })
                .collect(),
        }))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Answer<pb::GetUserResponse> {
        let id = parse_id("id", &req.get_ref().id)?;
        let user = self
            .store
            .user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn set_user_roles(
        &self,
        req: Request<pb::SetUserRolesRequest>,
    ) -> Answer<pb::SetUserRolesResponse> {
        let caller = Self::caller_id(&req)?;
        let req = req.into_inner();
        let id = parse_id("id", &req.id)?;
        let roles = parse_roles(&req.roles)?;
        if id == caller && !roles.contains(&Role::Admin) {
            return Err(UsersError::PermissionDenied(
                "administrators cannot remove their own admin role",
            )
            .into());
        }
        let user = self
            .store
            .set_roles(id, &roles)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn deactivate_user(
        &self,
        req: Request<pb::DeactivateUserRequest>,
    ) -> Answer<pb::DeactivateUserResponse> {
        let caller = Self::caller_id(&req)?;
        let id = parse_id("id", &req.get_ref().id)?;
        if id == caller {
            return Err(UsersError::PermissionDenied(
                "administrators cannot deactivate themselves",
            )
            .into());
        }
        let user = self
            .store
            .deactivate(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        tracing::info!(user_id = %user.id, "account deactivated");
        Ok(Response::new(pb::DeactivateUserResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn request_email_verification(
        &self,
        req: Request<pb::RequestEmailVerificationRequest>,
    ) -> Answer<pb::RequestEmailVerificationResponse> {
        let me = self.active_caller(&req).await?;
        if me.email_verified {
            return Err(Status::already_exists(
                "the email address is already verified",
            ));
        }
        let expires = self.issue_verification(&me).await?;
        Ok(Response::new(pb::RequestEmailVerificationResponse {
            expire_time: Some(timestamp(expires)),
        }))
    }

    async fn verify_email(
        &self,
        req: Request<pb::VerifyEmailRequest>,
    ) -> Answer<pb::VerifyEmailResponse> {
        let token = req.into_inner().token;
        let user = self
            .store
            .verify_email(&secrets::digest(&token))
            .await?
            .ok_or_else(|| UsersError::invalid("token", "is invalid, expired or already used"))?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn request_password_reset(
        &self,
        req: Request<pb::RequestPasswordResetRequest>,
    ) -> Answer<pb::RequestPasswordResetResponse> {
        let email = Email::parse(&req.into_inner().email)?;
        if let Some(user) = self
            .store
            .user_by_email(email.normalized())
            .await?
            .filter(|u| u.active)
        {
            let secret = secrets::new_secret("pr_").map_err(UsersError::from)?;
            let expires = Utc::now() + self.config.password_reset_token_ttl;
            self.store
                .issue_one_time_token(
                    &user,
                    Purpose::PasswordReset,
                    &secrets::digest(&secret),
                    &secret,
                    expires,
                )
                .await?;
        }
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Answer<pb::ResetPasswordResponse> {
        let req = req.into_inner();
        let password = NewPassword::parse("new_password", req.new_password)?;
        let hash = secrets::hash_password(password.expose().to_owned()).await?;
        if !self
            .store
            .reset_password(&secrets::digest(&req.token), &hash)
            .await?
        {
            return Err(UsersError::invalid("token", "is invalid, expired or already used").into());
        }
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Answer<pb::CreateApiKeyResponse> {
        let me = self.active_caller(&req).await?;
        let req = req.into_inner();
        let name = DisplayName::parse("name", &req.name)?;
        let permissions = parse_permissions(&req.permissions)?;
        let rate = match req.rate_limit_per_minute {
            0 => 600,
            n @ 1..=100_000 => n,
            _ => {
                return Err(UsersError::invalid(
                    "rate_limit_per_minute",
                    "must be between 1 and 100000",
                )
                .into());
            }
        };
        let expires = req
            .expire_time
            .as_ref()
            .map(|t| from_timestamp("expire_time", t))
            .transpose()?;
        if expires.is_some_and(|e| e <= Utc::now()) {
            return Err(UsersError::invalid("expire_time", "must be in the future").into());
        }
        let secret = secrets::new_secret("agk_").map_err(UsersError::from)?;
        let prefix: String = secret.chars().take(12).collect();
        let key = self
            .store
            .create_api_key(
                me.id,
                name.as_str(),
                &prefix,
                &secrets::digest(&secret),
                &permissions,
                rate,
                expires,
            )
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key_pb(&key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Answer<pb::ListApiKeysResponse> {
        let me = self.active_caller(&req).await?;
        let keys = self.store.list_api_keys(me.id).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(api_key_pb).collect(),
        }))
    }

    async fn delete_api_key(
        &self,
        req: Request<pb::DeleteApiKeyRequest>,
    ) -> Answer<pb::DeleteApiKeyResponse> {
        let me = self.active_caller(&req).await?;
        let id = parse_id("id", &req.get_ref().id)?;
        if !self.store.revoke_api_key(me.id, id).await? {
            return Err(UsersError::NotFound("API key").into());
        }
        Ok(Response::new(pb::DeleteApiKeyResponse {}))
    }

    async fn get_jwks(&self, _req: Request<pb::GetJwksRequest>) -> Answer<pb::GetJwksResponse> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.keys.jwks().to_vec(),
        }))
    }

    async fn authenticate_api_key(
        &self,
        req: Request<pb::AuthenticateApiKeyRequest>,
    ) -> Answer<pb::AuthenticateApiKeyResponse> {
        let (key, user) = authenticate_key(&self.store, &req.into_inner().secret).await?;
        Ok(Response::new(pb::AuthenticateApiKeyResponse {
            user_id: user.id.to_string(),
            roles: user.roles,
            permissions: key.permissions,
            key_id: key.id.to_string(),
            rate_limit_per_minute: key.rate_limit_per_minute,
        }))
    }
}

/// Resolves an API key secret to its live key and active owner, or
/// Unauthenticated.
pub async fn authenticate_key(store: &Store, secret: &str) -> Result<(ApiKeyRow, UserRow), Status> {
    if secret.is_empty() {
        return Err(Status::unauthenticated("the API key is empty"));
    }
    store
        .authenticate_api_key(&secrets::digest(secret))
        .await?
        .ok_or_else(|| Status::unauthenticated("the API key is invalid, revoked or expired"))
}
