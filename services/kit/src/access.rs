//! The access policy of every RPC method, read once from the contracts'
//! `agora.api.v1.access` options. The edge and each service check callers
//! against the same table, so the policy is written only in the `.proto`.

use std::{collections::HashMap, sync::Arc};

use agora_proto::api::v1::Access;
use prost_reflect::{DescriptorPool, Value};
use tonic::Status;

use crate::auth::{Caller, Credential};

/// The full name of the method option holding an [`Access`].
pub const ACCESS_EXTENSION: &str = "agora.api.v1.access";

/// Access rules keyed by gRPC path (`/agora.users.v1.UsersService/GetMe`).
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    methods: Arc<HashMap<String, Access>>,
}

impl AccessPolicy {
    /// Reads the rules of every method of `pool`. A method with no option
    /// gets the default: any authenticated caller.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let ext = pool.get_extension_by_name(ACCESS_EXTENSION);
        let mut methods = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let access = ext
                    .as_ref()
                    .and_then(|ext| method_access(&method.options(), ext))
                    .unwrap_or_default();
                methods.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    access,
                );
            }
        }
        Self {
            methods: Arc::new(methods),
        }
    }

    /// The policy of the embedded contracts.
    pub fn from_contracts() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(agora_proto::FILE_DESCRIPTOR_SET)?;
        Ok(Self::from_pool(&pool))
    }

    /// The rule for a gRPC path; `None` for methods outside the contracts
    /// (health, reflection), which need no credentials.
    pub fn get(&self, path: &str) -> Option<&Access> {
        self.methods.get(path)
    }
}

fn method_access(
    options: &prost_reflect::DynamicMessage,
    ext: &prost_reflect::ExtensionDescriptor,
) -> Option<Access> {
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(m) => m.transcode_to::<Access>().ok(),
        _ => None,
    }
}

/// Decides whether `caller` may call a method with rule `access`.
pub fn authorize(access: &Access, caller: Option<&Caller>) -> Result<(), Status> {
    if access.public {
        return Ok(());
    }
    let Some(caller) = caller else {
        return Err(Status::unauthenticated(
            "this method needs credentials: send `authorization: Bearer <access token>` or `x-api-key`",
        ));
    };
    if !access.roles.is_empty() && !access.roles.iter().any(|r| caller.has_role(r)) {
        return Err(Status::permission_denied(format!(
            "this method needs the role {}",
            access.roles.join(" or ")
        )));
    }
    if let Credential::ApiKey { permissions, .. } = &caller.credential {
        let allowed = permissions
            .iter()
            .any(|p| p == "*" || (!access.permission.is_empty() && *p == access.permission));
        if !allowed {
            let needed = if access.permission.is_empty() {
                "*"
            } else {
                access.permission.as_str()
            };
            return Err(Status::permission_denied(format!(
                "the API key lacks the permission {needed:?}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[&str]) -> Caller {
        Caller {
            user_id: "u1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            credential: Credential::AccessToken,
        }
    }

    fn key(permissions: &[&str]) -> Caller {
        Caller {
            user_id: "u1".into(),
            roles: vec!["customer".into()],
            credential: Credential::ApiKey {
                key_id: "k1".into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                rate_limit_per_minute: 0,
            },
        }
    }

    #[test]
    fn contracts_mark_public_and_admin_methods() {
        let policy = AccessPolicy::from_contracts().expect("contracts decode");
        let login = policy
            .get("/agora.users.v1.UsersService/Login")
            .expect("login has a rule");
        assert!(login.public);
        let list = policy
            .get("/agora.users.v1.UsersService/ListUsers")
            .expect("list has a rule");
        assert_eq!(list.roles, vec!["admin".to_string()]);
        assert!(policy.get("/grpc.health.v1.Health/Check").is_none());
    }

    #[test]
    fn roles_and_key_permissions_are_enforced() {
        let admin_only = Access {
            public: false,
            roles: vec!["admin".into()],
            permission: "users.admin".into(),
        };
        assert_eq!(
            authorize(&admin_only, None).expect_err("anonymous").code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            authorize(&admin_only, Some(&user(&["customer"])))
                .expect_err("customer")
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(authorize(&admin_only, Some(&user(&["admin"]))).is_ok());

        let read = Access {
            public: false,
            roles: vec![],
            permission: "users.read".into(),
        };
        assert!(authorize(&read, Some(&key(&["users.read"]))).is_ok());
        assert!(authorize(&read, Some(&key(&["*"]))).is_ok());
        assert_eq!(
            authorize(&read, Some(&key(&["users.write"])))
                .expect_err("wrong permission")
                .code(),
            tonic::Code::PermissionDenied
        );
    }
}
