//! Values that validate themselves at the boundary: SKUs, names, money,
//! quantities, slugs. Money is integer minor units, never floats.

use uuid::Uuid;

use crate::error::CatalogError;

pub fn parse_id(field: &'static str, raw: &str) -> Result<Uuid, CatalogError> {
    Ok(agora_kit::proto::parse_id(field, raw)?)
}

/// A stock keeping unit: 1 to 64 of A-Z, 0-9, `-`, `_` (upper-cased).
#[derive(Debug, Clone)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, CatalogError> {
        let sku = raw.trim().to_ascii_uppercase();
        if sku.is_empty() || sku.len() > 64 {
            return Err(CatalogError::invalid(
                "product.sku",
                "must be 1 to 64 characters",
            ));
        }
        if !sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CatalogError::invalid(
                "product.sku",
                "may contain only letters, digits, '-' and '_'",
            ));
        }
        Ok(Self(sku))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Trimmed text of bounded length without control characters.
pub fn text(
    field: &'static str,
    raw: &str,
    min: usize,
    max: usize,
) -> Result<String, CatalogError> {
    let t = raw.trim();
    let n = t.chars().count();
    if n < min {
        return Err(CatalogError::invalid(
            field,
            if min == 1 {
                "is required".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if n > max {
        return Err(CatalogError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(CatalogError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(t.to_owned())
}

/// An amount of an ISO 4217 currency in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub currency: String,
    pub amount_minor: i64,
}

impl Money {
    pub fn parse(currency: &str, amount_minor: i64) -> Result<Self, CatalogError> {
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(CatalogError::invalid(
                "product.price.currency",
                "must be a three-letter ISO 4217 code like EUR",
            ));
        }
        if amount_minor < 0 {
            return Err(CatalogError::invalid(
                "product.price.amount_minor",
                "must not be negative",
            ));
        }
        Ok(Self {
            currency: currency.to_owned(),
            amount_minor,
        })
    }
}

/// Units of one product in one request: 1 to 10,000.
pub fn quantity(field: &'static str, q: i32) -> Result<i32, CatalogError> {
    if !(1..=10_000).contains(&q) {
        return Err(CatalogError::invalid(field, "must be between 1 and 10000"));
    }
    Ok(q)
}

/// A category slug: 1 to 64 of a-z, 0-9 and `-`.
pub fn slug(raw: &str) -> Result<String, CatalogError> {
    let s = raw.trim();
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(CatalogError::invalid(
            "category.slug",
            "must be 1 to 64 of a-z, 0-9 and '-'",
        ));
    }
    Ok(s.to_owned())
}

/// The etag clients see for a product version.
pub fn etag(version: i64) -> String {
    format!("v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_upper_cased_and_restricted() {
        assert_eq!(Sku::parse(" lamp-01 ").expect("valid").as_str(), "LAMP-01");
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("lamp 01").is_err());
    }

    #[test]
    fn money_needs_a_currency_code_and_no_negative_amounts() {
        assert!(Money::parse("EUR", 2599).is_ok());
        assert!(Money::parse("eur", 1).is_err());
        assert!(Money::parse("EURO", 1).is_err());
        assert!(Money::parse("EUR", -1).is_err());
    }

    #[test]
    fn quantities_and_slugs_are_bounded() {
        assert!(quantity("q", 0).is_err());
        assert!(quantity("q", 10_001).is_err());
        assert_eq!(quantity("q", 3).expect("valid"), 3);
        assert!(slug("Lighting").is_err());
        assert_eq!(slug("desk-lamps").expect("valid"), "desk-lamps");
    }
}
