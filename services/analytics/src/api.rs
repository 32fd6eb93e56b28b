//! The gRPC service: client event ingestion and the reports.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use agora_kit::proto::or_default;
use agora_kit::{auth::Caller, error::Error, events::Envelope, proto::timestamp};
use agora_proto::{
    analytics::v1::{self as pb, analytics_service_server::AnalyticsService as Api},
    events::v1 as ev,
};

use crate::{
    forecast, reports,
    rollup::CLIENT_EVENT_TYPES,
    store::{RecordError, Store},
};

/// The most events one IngestEvents call carries.
pub const MAX_BATCH: usize = 100;
/// The largest `properties` of one event, as JSON.
pub const MAX_PROPERTIES_BYTES: usize = 4096;
/// The longest session id.
const MAX_SESSION_ID: usize = 128;
/// Client-made ids are namespaced by user, so no one can claim another
/// user's event id.
const CLIENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6167_6f72_615f_6576_656e_7473_0000_0001);

#[derive(Clone)]
pub struct AnalyticsService {
    store: Store,
}

impl AnalyticsService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn internal(e: impl Into<anyhow::Error>) -> Status {
    Error::Internal(e.into()).into()
}

fn record_error(e: RecordError) -> Status {
    match e {
        RecordError::Invalid(reason) => Error::invalid("events", reason).into(),
        other => internal(other),
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn parse_date(field: &'static str, raw: &str) -> Result<Option<NaiveDate>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| Error::invalid(field, "must be a date like 2026-11-30").into())
}

/// One client event, checked; an error names the item and what is wrong.
fn client_event(
    i: usize,
    e: pb::Event,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<Envelope, Status> {
    let bad = |reason: String| -> Status {
        Error::invalid("events", format!("item {i}: {reason}")).into()
    };
    if !CLIENT_EVENT_TYPES.contains(&e.r#type.as_str()) {
        return Err(bad(format!(
            "type {:?} is not one of {}",
            e.r#type,
            CLIENT_EVENT_TYPES.join(", ")
        )));
    }
    if e.session_id.chars().count() > MAX_SESSION_ID {
        return Err(bad(format!(
            "sessionId is longer than {MAX_SESSION_ID} characters"
        )));
    }
    let properties = e.properties.unwrap_or_default();
    let size = serde_json::to_vec(&struct_json(&properties)).map_or(0, |v| v.len());
    if size > MAX_PROPERTIES_BYTES {
        return Err(bad(format!(
            "properties are {size} bytes as JSON, more than {MAX_PROPERTIES_BYTES}"
        )));
    }
    let text = |name: &str| match properties.fields.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let needed = match e.r#type.as_str() {
        "product_view" | "add_to_cart" => Some("productId"),
        "search" => Some("query"),
        "page_view" => Some("path"),
        _ => None,
    };
    if let Some(name) = needed {
        let Some(value) = text(name) else {
            return Err(bad(format!(
                "a {} needs the string property {name}",
                e.r#type
            )));
        };
        if name == "productId" && Uuid::parse_str(&value).is_err() {
            return Err(bad("properties.productId must be a UUID".into()));
        }
    }
    let occurred = match &e.occurred_at {
        None => now,
        Some(t) => DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .filter(|t| *t >= now - Duration::days(1) && *t <= now + Duration::minutes(5))
            .ok_or_else(|| {
                bad(
                    "occurredAt must be within the last day (and not over five minutes ahead)"
                        .into(),
                )
            })?,
    };
    let id = if e.id.is_empty() {
        Uuid::now_v7()
    } else {
        let client = Uuid::parse_str(&e.id).map_err(|_| bad("id must be a UUID".into()))?;
        Uuid::new_v5(
            &CLIENT_ID_NAMESPACE,
            format!("{}/{client}", caller.user_id).as_bytes(),
        )
    };
    Ok(Envelope {
        id: id.to_string(),
        r#type: format!("analytics.{}", e.r#type),
        source: "analytics".into(),
        occurred_at: Some(timestamp(occurred)),
        traceparent: agora_kit::trace::current_traceparent().unwrap_or_default(),
        schema_version: agora_kit::events::SCHEMA_VERSION,
        aggregate_id: caller.user_id.clone(),
        payload: Some(agora_kit::events::Payload::ClientEvent(ev::ClientEvent {
            r#type: e.r#type,
            user_id: caller.user_id.clone(),
            session_id: e.session_id,
            properties: Some(properties),
        })),
    })
}

fn struct_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
    }
}

#[tonic::async_trait]
impl Api for AnalyticsService {
    async fn ingest_events(
        &self,
        req: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        if Uuid::parse_str(&caller.user_id).is_err() {
            return Err(
                Error::PermissionDenied("events are reported by signed-in users".into()).into(),
            );
        }
        let events = req.into_inner().events;
        let now = Utc::now();
        // Every event is checked before any is kept: a batch is taken whole
        // or refused whole.
        let envelopes = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| client_event(i, e, &caller, now))
            .collect::<Result<Vec<_>, _>>()?;
        let mut accepted = 0;
        for envelope in envelopes {
            if self.store.record(envelope).await.map_err(record_error)? {
                accepted += 1;
            }
        }
        metrics::counter!("analytics_client_events_total").increment(accepted as u64);
        Ok(Response::new(pb::IngestEventsResponse { accepted }))
    }

    async fn get_daily_metrics(
        &self,
        req: Request<pb::GetDailyMetricsRequest>,
    ) -> Result<Response<pb::GetDailyMetricsResponse>, Status> {
        let r = req.into_inner();
        let to = parse_date("to", &r.to)?.unwrap_or_else(today);
        let from = parse_date("from", &r.from)?.unwrap_or(to - Duration::days(29));
        if from > to {
            return Err(Error::invalid("from", "must not be after to").into());
        }
        if (to - from).num_days() > 366 {
            return Err(Error::invalid("to", "must be at most 366 days after from").into());
        }
        let points = reports::daily(&self.store.pool, &r.metric, from, to)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::GetDailyMetricsResponse {
            metric: r.metric,
            points: points
                .into_iter()
                .map(|p| pb::MetricPoint {
                    date: p.date.to_string(),
                    value: p.value,
                    dimensions: p.dimensions.into_iter().collect::<HashMap<_, _>>(),
                })
                .collect(),
        }))
    }

    async fn get_top_products(
        &self,
        req: Request<pb::GetTopProductsRequest>,
    ) -> Result<Response<pb::GetTopProductsResponse>, Status> {
        let r = req.into_inner();
        let days = or_default(r.days, 7);
        let by_revenue = match r.by.as_str() {
            "" | "views" => false,
            "revenue" => true,
            other => {
                return Err(Error::invalid(
                    "by",
                    format!("{other:?} is not one of views, revenue"),
                )
                .into());
            }
        };
        let limit = or_default(r.limit, 10);
        let since = today() - Duration::days(days - 1);
        let rows = reports::top_products(&self.store.pool, since, by_revenue, limit)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::GetTopProductsResponse {
            products: rows
                .into_iter()
                .map(|p| pb::TopProduct {
                    product_id: p.product_id,
                    views: p.views as i64,
                    units_sold: p.units as i64,
                    revenue_minor: p.revenue as i64,
                    currency: p.currency,
                })
                .collect(),
        }))
    }

    async fn get_funnel(
        &self,
        req: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let days = or_default(req.into_inner().days, 30);
        let counts = reports::funnel(&self.store.pool, today() - Duration::days(days - 1))
            .await
            .map_err(internal)?;
        let first = counts[0];
        Ok(Response::new(pb::GetFunnelResponse {
            steps: ["viewed", "reserved", "purchased"]
                .into_iter()
                .zip(counts)
                .map(|(name, users)| pb::FunnelStep {
                    name: name.into(),
                    users,
                    ratio: if first == 0 {
                        0.0
                    } else {
                        users as f64 / first as f64
                    },
                })
                .collect(),
        }))
    }

    async fn get_cohorts(
        &self,
        req: Request<pb::GetCohortsRequest>,
    ) -> Result<Response<pb::GetCohortsResponse>, Status> {
        let weeks = or_default(req.into_inner().weeks, 8);
        let cohorts = reports::cohorts(&self.store.pool, today(), weeks)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::GetCohortsResponse {
            cohorts: cohorts
                .into_iter()
                .map(|c| pb::Cohort {
                    week_start: c.week_start.to_string(),
                    users: c.users,
                    active: c.active,
                })
                .collect(),
        }))
    }

    async fn get_user_behavior(
        &self,
        req: Request<pb::GetUserBehaviorRequest>,
    ) -> Result<Response<pb::GetUserBehaviorResponse>, Status> {
        let r = req.into_inner();
        let user = agora_kit::proto::parse_id("user_id", &r.user_id)?;
        let days = or_default(r.days, 30);
        let (signed_up, rows) =
            reports::user_behavior(&self.store.pool, user, today() - Duration::days(days - 1))
                .await
                .map_err(internal)?;
        Ok(Response::new(pb::GetUserBehaviorResponse {
            user_id: user.to_string(),
            signed_up_at: signed_up.map(timestamp),
            days: rows
                .into_iter()
                .map(|d| pb::UserDay {
                    date: d.date.to_string(),
                    page_views: d.page_views,
                    product_views: d.product_views,
                    searches: d.searches,
                    reservations: d.reservations,
                    purchases: d.purchases,
                    messages: d.messages,
                })
                .collect(),
        }))
    }

    async fn forecast_demand(
        &self,
        req: Request<pb::ForecastDemandRequest>,
    ) -> Result<Response<pb::ForecastDemandResponse>, Status> {
        let r = req.into_inner();
        let product = agora_kit::proto::parse_id("product_id", &r.product_id)?;
        let horizon = or_default(r.days, 14);
        let history_days = or_default(r.history_days, 90);
        // Whole days only: today is not over yet.
        let last = today() - Duration::days(1);
        let first = last - Duration::days(history_days - 1);
        let history = reports::daily_demand(&self.store.pool, product, first, last)
            .await
            .map_err(internal)?;
        let f = forecast::forecast(&history, horizon as usize);
        Ok(Response::new(pb::ForecastDemandResponse {
            product_id: product.to_string(),
            method: f.method.as_str().into(),
            alpha: f.alpha,
            beta: f.beta,
            history,
            forecast: f
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| pb::ForecastPoint {
                    date: (last + Duration::days(i as i64 + 1)).to_string(),
                    value: p.value,
                    lower: p.lower,
                    upper: p.upper,
                })
                .collect(),
        }))
    }
}
