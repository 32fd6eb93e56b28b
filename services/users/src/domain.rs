//! Values that validate themselves at the boundary. Inside the service these
//! types are trusted: an `Email` is always well formed and lower-cased.

use agora_proto::users::v1 as pb;

use crate::error::UsersError;

/// A syntactically valid email address, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    original: String,
    normalized: String,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, UsersError> {
        let original = raw.trim();
        let invalid = || UsersError::invalid("email", "must be an address like name@example.com");
        if original.is_empty() {
            return Err(UsersError::invalid("email", "is required"));
        }
        if original.len() > 254
            || original
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid());
        }
        let (local, domain) = original.rsplit_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || local.len() > 64
            || domain.len() < 3
            || !domain.contains('.')
            || domain.contains('@')
        {
            return Err(invalid());
        }
        if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
            return Err(invalid());
        }
        Ok(Self {
            original: original.to_owned(),
            normalized: original.to_lowercase(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }

    pub fn normalized(&self) -> &str {
        &self.normalized
    }
}

/// A password acceptable for a new account: 10 to 256 characters.
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(field: &'static str, raw: String) -> Result<Self, UsersError> {
        let n = raw.chars().count();
        if n < 10 {
            return Err(UsersError::invalid(field, "must be at least 10 characters"));
        }
        if n > 256 {
            return Err(UsersError::invalid(field, "must be at most 256 characters"));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, UsersError> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(UsersError::invalid(field, "is required"));
        }
        if name.chars().count() > 100 {
            return Err(UsersError::invalid(field, "must be at most 100 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(UsersError::invalid(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A platform role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Customer,
    Staff,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }

    /// Reads a stored role name; unknown names are skipped by callers.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Role::Customer),
            "staff" => Some(Role::Staff),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn from_proto(value: i32) -> Result<Self, UsersError> {
        match pb::Role::try_from(value) {
            Ok(pb::Role::Customer) => Ok(Role::Customer),
            Ok(pb::Role::Staff) => Ok(Role::Staff),
            Ok(pb::Role::Admin) => Ok(Role::Admin),
            _ => Err(UsersError::invalid(
                "roles",
                "each role must be ROLE_CUSTOMER, ROLE_STAFF or ROLE_ADMIN",
            )),
        }
    }

    pub fn to_proto(self) -> pb::Role {
        match self {
            Role::Customer => pb::Role::Customer,
            Role::Staff => pb::Role::Staff,
            Role::Admin => pb::Role::Admin,
        }
    }
}

/// A non-empty set of roles, sorted and without repeats.
pub fn parse_roles(values: &[i32]) -> Result<Vec<Role>, UsersError> {
    let mut roles = values
        .iter()
        .map(|v| Role::from_proto(*v))
        .collect::<Result<Vec<_>, _>>()?;
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(UsersError::invalid("roles", "must name at least one role"));
    }
    Ok(roles)
}

/// API key permissions: `*` or `area.action` names in lower case.
pub fn parse_permissions(values: &[String]) -> Result<Vec<String>, UsersError> {
    if values.is_empty() {
        return Err(UsersError::invalid(
            "permissions",
            "must name at least one permission, such as \"users.read\" or \"*\"",
        ));
    }
    let valid = |p: &str| {
        p == "*"
            || p.split_once('.').is_some_and(|(a, b)| {
                let part = |s: &str| {
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                };
                part(a) && part(b)
            })
    };
    let mut out = Vec::with_capacity(values.len());
    for p in values {
        if !valid(p) {
            return Err(UsersError::invalid(
                "permissions",
                format!("{p:?} is not a permission name like \"users.read\""),
            ));
        }
        out.push(p.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_compared_in_lower_case() {
        let e = Email::parse("  Ana@Example.COM ").expect("valid");
        assert_eq!(e.as_str(), "Ana@Example.COM");
        assert_eq!(e.normalized(), "ana@example.com");
        for bad in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "a b@example.com",
            "ana@.example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn short_passwords_and_blank_names_are_rejected() {
        assert!(NewPassword::parse("password", "short".into()).is_err());
        assert!(NewPassword::parse("password", "correct horse battery".into()).is_ok());
        assert!(DisplayName::parse("display_name", "   ").is_err());
        assert_eq!(
            DisplayName::parse("display_name", " Ana ")
                .expect("valid")
                .as_str(),
            "Ana"
        );
    }

    #[test]
    fn roles_must_be_known_and_not_empty() {
        assert!(parse_roles(&[]).is_err());
        assert!(parse_roles(&[0]).is_err());
        assert_eq!(
            parse_roles(&[3, 1, 3]).expect("valid"),
            vec![Role::Customer, Role::Admin]
        );
    }

    #[test]
    fn permissions_are_dotted_names_or_star() {
        assert!(parse_permissions(&["users.read".into(), "*".into()]).is_ok());
        assert!(parse_permissions(&["Users.Read".into()]).is_err());
        assert!(parse_permissions(&[]).is_err());
    }
}
