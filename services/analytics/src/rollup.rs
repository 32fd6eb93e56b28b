//! What one event adds to the rollups: metric increments, a user's day,
//! a signup. Pure: the live path applies one event's effects, the daily job
//! sums a whole day's.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use agora_kit::events::{Envelope, Payload};

/// The metrics the daily report serves, and what each counts.
pub const DAILY_METRICS: &[(&str, &str)] = &[
    ("signups", "accounts registered"),
    ("active_users", "distinct users with any activity"),
    ("page_views", "pages viewed"),
    ("product_views", "product pages viewed"),
    ("searches", "searches made"),
    ("reservations_created", "reservations made"),
    ("reservations_committed", "reservations bought"),
    ("units_committed", "units sold"),
    ("revenue", "revenue in minor units, one series per currency"),
    ("messages_sent", "chat messages posted"),
];

/// Client event types IngestEvents accepts.
pub const CLIENT_EVENT_TYPES: &[&str] = &[
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "click",
];

/// One metric increment of one day.
#[derive(Debug, Clone, PartialEq)]
pub struct Increment {
    pub service: &'static str,
    pub metric: &'static str,
    /// Sorted `name → value` pairs; empty for none.
    pub dimensions: BTreeMap<&'static str, String>,
    pub value: f64,
}

impl Increment {
    fn plain(service: &'static str, metric: &'static str, value: f64) -> Self {
        Self {
            service,
            metric,
            dimensions: BTreeMap::new(),
            value,
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.insert(name, value.into());
        self
    }

    /// The dimensions as the JSON object stored in `daily_metrics`.
    pub fn dimensions_json(&self) -> String {
        serde_json::to_string(&self.dimensions).unwrap_or_else(|_| "{}".into())
    }
}

/// A user's activity counts for one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behavior {
    pub page_views: i64,
    pub product_views: i64,
    pub searches: i64,
    pub reservations: i64,
    pub purchases: i64,
    pub messages: i64,
}

impl Behavior {
    pub fn add(&mut self, other: &Behavior) {
        self.page_views += other.page_views;
        self.product_views += other.product_views;
        self.searches += other.searches;
        self.reservations += other.reservations;
        self.purchases += other.purchases;
        self.messages += other.messages;
    }
}

/// Everything one event changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    pub id: Uuid,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub increments: Vec<Increment>,
    pub behavior: Option<(Uuid, Behavior)>,
    pub signup: Option<Uuid>,
}

impl Effects {
    pub fn day(&self) -> NaiveDate {
        self.occurred_at.date_naive()
    }
}

/// The effects of `envelope`; an error names what makes it unusable.
pub fn effects(envelope: &Envelope) -> Result<Effects, String> {
    let id =
        Uuid::parse_str(&envelope.id).map_err(|_| format!("id {:?} is not a UUID", envelope.id))?;
    let occurred_at = envelope
        .occurred_at
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .ok_or("occurredAt is missing or out of range")?;
    let mut fx = Effects {
        id,
        event_type: envelope.r#type.clone(),
        occurred_at,
        increments: Vec::new(),
        behavior: None,
        signup: None,
    };
    let Some(payload) = &envelope.payload else {
        return Err(format!("event {} has no payload", envelope.r#type));
    };
    let user = |raw: &str, what: &str| {
        Uuid::parse_str(raw).map_err(|_| format!("{what} {raw:?} is not a UUID"))
    };
    match payload {
        Payload::UserRegistered(e) => {
            fx.increments
                .push(Increment::plain("users", "signups", 1.0));
            fx.signup = Some(user(&e.user_id, "userId")?);
        }
        Payload::ClientEvent(e) => {
            let mut b = Behavior::default();
            let source = "analytics";
            fx.increments.push(
                Increment::plain(source, "client_events", 1.0).with("type", e.r#type.clone()),
            );
            match e.r#type.as_str() {
                "page_view" => {
                    b.page_views = 1;
                    fx.increments
                        .push(Increment::plain(source, "page_views", 1.0));
                }
                "product_view" => {
                    b.product_views = 1;
                    let product =
                        property(e, "productId").ok_or("a product_view needs productId")?;
                    fx.increments
                        .push(Increment::plain(source, "product_views", 1.0));
                    fx.increments.push(
                        Increment::plain(source, "product.views", 1.0).with("productId", product),
                    );
                }
                "search" => {
                    b.searches = 1;
                    fx.increments
                        .push(Increment::plain(source, "searches", 1.0));
                }
                _ => {}
            }
            fx.behavior = Some((user(&e.user_id, "userId")?, b));
        }
        Payload::ReservationCreated(r) => {
            fx.increments
                .push(Increment::plain("catalog", "reservations_created", 1.0));
            if let Ok(owner) = Uuid::parse_str(&r.owner_id) {
                fx.behavior = Some((
                    owner,
                    Behavior {
                        reservations: 1,
                        ..Behavior::default()
                    },
                ));
            }
        }
        Payload::ReservationCommitted(r) => {
            fx.increments
                .push(Increment::plain("catalog", "reservations_committed", 1.0));
            for item in &r.items {
                let units = f64::from(item.quantity);
                fx.increments
                    .push(Increment::plain("catalog", "units_committed", units));
                fx.increments.push(
                    Increment::plain("catalog", "product.units_committed", units)
                        .with("productId", item.product_id.clone()),
                );
                if let Some(price) = &item.unit_price {
                    let amount = units * price.amount_minor as f64;
                    fx.increments.push(
                        Increment::plain("catalog", "revenue", amount)
                            .with("currency", price.currency.clone()),
                    );
                    fx.increments.push(
                        Increment::plain("catalog", "product.revenue", amount)
                            .with("productId", item.product_id.clone())
                            .with("currency", price.currency.clone()),
                    );
                }
            }
            if let Ok(owner) = Uuid::parse_str(&r.owner_id) {
                fx.behavior = Some((
                    owner,
                    Behavior {
                        purchases: 1,
                        ..Behavior::default()
                    },
                ));
            }
        }
        Payload::MessageSent(m) => {
            fx.increments
                .push(Increment::plain("chat", "messages_sent", 1.0));
            fx.behavior = Some((
                user(&m.sender_id, "senderId")?,
                Behavior {
                    messages: 1,
                    ..Behavior::default()
                },
            ));
        }
        Payload::ReservationReleased(_) => {
            fx.increments
                .push(Increment::plain("catalog", "reservations_released", 1.0))
        }
        Payload::ReservationExpired(_) => {
            fx.increments
                .push(Increment::plain("catalog", "reservations_expired", 1.0))
        }
        // Kept raw; no report reads them yet.
        _ => {}
    }
    Ok(fx)
}

fn property(e: &agora_proto::events::v1::ClientEvent, name: &str) -> Option<String> {
    use prost_types::value::Kind;
    match e.properties.as_ref()?.fields.get(name)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// Sums increments with the same metric and dimensions (one upsert each).
pub fn merge(increments: impl IntoIterator<Item = Increment>) -> Vec<Increment> {
    let mut merged: Vec<Increment> = Vec::new();
    for inc in increments {
        match merged.iter_mut().find(|m| {
            m.metric == inc.metric && m.service == inc.service && m.dimensions == inc.dimensions
        }) {
            Some(m) => m.value += inc.value,
            None => merged.push(inc),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::events::v1 as ev;

    #[test]
    fn the_contract_lists_exactly_the_daily_metrics_there_are() {
        // The contract's `in` rule refuses other names before a request
        // reaches the service, so it must name every metric and no other.
        use agora_proto::rules;
        let request = agora_proto::message("agora.analytics.v1.GetDailyMetricsRequest")
            .expect("in the contracts");
        let metric = request.get_field_by_name("metric").expect("field");
        let rules = rules::field_rules(&metric).expect("rules");
        let string = rules::type_rules(&rules, "string").expect("string rules");
        let listed = rules::rule(&string, "in").expect("in");
        let mut listed: Vec<&str> = listed
            .as_list()
            .expect("a list")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let mut known: Vec<&str> = DAILY_METRICS.iter().map(|(m, _)| *m).collect();
        listed.sort_unstable();
        known.sort_unstable();
        assert_eq!(listed, known);
    }

    fn envelope(payload: Payload) -> Envelope {
        Envelope {
            id: Uuid::now_v7().to_string(),
            r#type: "catalog.reservation_committed".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 0,
            }),
            payload: Some(payload),
            ..Envelope::default()
        }
    }

    #[test]
    fn a_purchase_counts_units_and_revenue_per_currency_and_product() {
        let owner = Uuid::now_v7();
        let item = |p: &str, q, amount| ev::ReservationItem {
            product_id: p.into(),
            quantity: q,
            unit_price: Some(ev::Money {
                currency: "EUR".into(),
                amount_minor: amount,
            }),
        };
        let fx = effects(&envelope(Payload::ReservationCommitted(
            ev::ReservationChanged {
                reservation_id: "r".into(),
                owner_id: owner.to_string(),
                items: vec![item("a", 2, 500), item("b", 1, 1000)],
            },
        )))
        .expect("usable");
        let merged = merge(fx.increments.clone());
        let total = |metric: &str| -> f64 {
            merged
                .iter()
                .filter(|i| i.metric == metric)
                .map(|i| i.value)
                .sum()
        };
        assert_eq!(total("units_committed"), 3.0);
        assert_eq!(total("revenue"), 2000.0);
        assert_eq!(total("reservations_committed"), 1.0);
        assert_eq!(
            merged
                .iter()
                .filter(|i| i.metric == "units_committed")
                .count(),
            1
        );
        assert_eq!(
            merged
                .iter()
                .filter(|i| i.metric == "product.revenue")
                .count(),
            2
        );
        assert_eq!(fx.behavior.map(|(u, b)| (u, b.purchases)), Some((owner, 1)));
    }

    #[test]
    fn unusable_events_are_refused_with_the_reason() {
        let mut bad = envelope(Payload::UserRegistered(ev::UserRegistered {
            user_id: "nope".into(),
            ..Default::default()
        }));
        assert!(effects(&bad).expect_err("bad user").contains("userId"));
        bad.occurred_at = None;
        assert!(effects(&bad).expect_err("no time").contains("occurredAt"));
    }
}
