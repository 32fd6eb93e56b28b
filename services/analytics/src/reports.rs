//! Answers from the rollups (never from raw events).

use std::collections::BTreeMap;

use chrono::{Datelike as _, Duration, NaiveDate};
use sqlx::PgPool;
use uuid::Uuid;

/// One day's value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoint {
    pub date: NaiveDate,
    pub value: f64,
    pub dimensions: BTreeMap<String, String>,
}

/// `metric` per day from `from` to `to`, one series per dimension set seen,
/// days without data as zero.
pub async fn daily(
    pool: &PgPool,
    metric: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> sqlx::Result<Vec<SeriesPoint>> {
    type Dimensions = sqlx::types::Json<BTreeMap<String, String>>;
    let rows: Vec<(NaiveDate, Dimensions, f64)> = sqlx::query_as(
        "SELECT date, dimensions, sum(metric_value)::float8 FROM daily_metrics
         WHERE metric_name = $1 AND date BETWEEN $2 AND $3 GROUP BY date, dimensions",
    )
    .bind(metric)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut series: BTreeMap<BTreeMap<String, String>, BTreeMap<NaiveDate, f64>> = BTreeMap::new();
    for (date, dims, value) in rows {
        series.entry(dims.0).or_default().insert(date, value);
    }
    if series.is_empty() {
        series.insert(BTreeMap::new(), BTreeMap::new());
    }
    let mut points = Vec::new();
    for day in from.iter_days().take_while(|d| *d <= to) {
        for (dims, values) in &series {
            points.push(SeriesPoint {
                date: day,
                value: values.get(&day).copied().unwrap_or(0.0),
                dimensions: dims.clone(),
            });
        }
    }
    Ok(points)
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TopProduct {
    pub product_id: String,
    pub views: f64,
    pub units: f64,
    pub revenue: f64,
    pub currency: String,
}

/// Products ranked by views or by revenue (in each product's main
/// currency) since `since`.
pub async fn top_products(
    pool: &PgPool,
    since: NaiveDate,
    by_revenue: bool,
    limit: i64,
) -> sqlx::Result<Vec<TopProduct>> {
    sqlx::query_as(
        "WITH counts AS (
           SELECT dimensions->>'productId' AS product_id,
                  coalesce(sum(metric_value) FILTER (WHERE metric_name = 'product.views'), 0)::float8 AS views,
                  coalesce(sum(metric_value) FILTER (WHERE metric_name = 'product.units_committed'), 0)::float8 AS units
           FROM daily_metrics
           WHERE date >= $1 AND metric_name IN ('product.views', 'product.units_committed')
           GROUP BY 1),
         revenue AS (
           SELECT DISTINCT ON (product_id) product_id, currency, revenue FROM (
             SELECT dimensions->>'productId' AS product_id, dimensions->>'currency' AS currency,
                    sum(metric_value)::float8 AS revenue
             FROM daily_metrics WHERE date >= $1 AND metric_name = 'product.revenue' GROUP BY 1, 2) r
           ORDER BY product_id, revenue DESC, currency)
         SELECT c.product_id, c.views, c.units, coalesce(r.revenue, 0)::float8 AS revenue,
                coalesce(r.currency, '') AS currency
         FROM counts c LEFT JOIN revenue r USING (product_id)
         WHERE CASE WHEN $2 THEN coalesce(r.revenue, 0) > 0 ELSE c.views > 0 END
         ORDER BY CASE WHEN $2 THEN coalesce(r.revenue, 0) ELSE c.views END DESC, c.product_id
         LIMIT $3",
    )
    .bind(since)
    .bind(by_revenue)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Distinct users since `since` who viewed a product; of them, who also
/// reserved; of those, who also bought.
pub async fn funnel(pool: &PgPool, since: NaiveDate) -> sqlx::Result<[i64; 3]> {
    let (viewed, reserved, bought): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE v),
                count(*) FILTER (WHERE v AND r),
                count(*) FILTER (WHERE v AND r AND p)
         FROM (SELECT user_id, bool_or(product_views > 0) AS v, bool_or(reservations > 0) AS r,
                      bool_or(purchases > 0) AS p
               FROM user_behavior WHERE date >= $1 GROUP BY user_id) u",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok([viewed, reserved, bought])
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    pub week_start: NaiveDate,
    pub users: i64,
    /// Active users in week 0, 1… after signup, up to `today`'s week.
    pub active: Vec<i64>,
}

/// The Monday of `day`'s week.
pub fn week_start(day: NaiveDate) -> NaiveDate {
    day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
}

/// Signup cohorts of the `weeks` weeks ending with `today`'s.
pub async fn cohorts(pool: &PgPool, today: NaiveDate, weeks: i64) -> sqlx::Result<Vec<Cohort>> {
    let current = week_start(today);
    let first = current - Duration::weeks(weeks - 1);
    let sizes: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT date_trunc('week', signed_up_at AT TIME ZONE 'UTC')::date AS week, count(*)
         FROM user_signups WHERE signed_up_at >= $1::date GROUP BY 1",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    let active: Vec<(NaiveDate, i32, i64)> = sqlx::query_as(
        "SELECT s.week, ((date_trunc('week', b.date)::date - s.week) / 7)::int4 AS k,
                count(DISTINCT b.user_id)
         FROM (SELECT user_id, date_trunc('week', signed_up_at AT TIME ZONE 'UTC')::date AS week
               FROM user_signups WHERE signed_up_at >= $1::date) s
         JOIN user_behavior b ON b.user_id = s.user_id AND b.date >= s.week
         GROUP BY 1, 2",
    )
    .bind(first)
    .fetch_all(pool)
    .await?;
    Ok((0..weeks)
        .map(|i| {
            let week = first + Duration::weeks(i);
            let span = ((current - week).num_weeks() + 1) as usize;
            let mut counts = vec![0; span];
            for (w, k, n) in &active {
                if *w == week
                    && let Some(slot) = counts.get_mut(*k as usize)
                {
                    *slot = *n;
                }
            }
            Cohort {
                week_start: week,
                users: sizes
                    .iter()
                    .find(|(w, _)| *w == week)
                    .map_or(0, |(_, n)| *n),
                active: counts,
            }
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserDay {
    pub date: NaiveDate,
    pub page_views: i64,
    pub product_views: i64,
    pub searches: i64,
    pub reservations: i64,
    pub purchases: i64,
    pub messages: i64,
}

/// A user's signup time and active days since `since`, newest first.
pub async fn user_behavior(
    pool: &PgPool,
    user: Uuid,
    since: NaiveDate,
) -> sqlx::Result<(Option<chrono::DateTime<chrono::Utc>>, Vec<UserDay>)> {
    let signed_up: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT signed_up_at FROM user_signups WHERE user_id = $1")
            .bind(user)
            .fetch_optional(pool)
            .await?;
    let days = sqlx::query_as(
        "SELECT date, page_views, product_views, searches, reservations, purchases, messages
         FROM user_behavior WHERE user_id = $1 AND date >= $2 ORDER BY date DESC",
    )
    .bind(user)
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok((signed_up, days))
}

/// Units of `product` committed per day from `from` to `to`, zero-filled.
pub async fn daily_demand(
    pool: &PgPool,
    product: Uuid,
    from: NaiveDate,
    to: NaiveDate,
) -> sqlx::Result<Vec<f64>> {
    let rows: Vec<(NaiveDate, f64)> = sqlx::query_as(
        "SELECT date, sum(metric_value)::float8 FROM daily_metrics
         WHERE metric_name = 'product.units_committed' AND dimensions->>'productId' = $1
           AND date BETWEEN $2 AND $3 GROUP BY date",
    )
    .bind(product.to_string())
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let by_day: BTreeMap<NaiveDate, f64> = rows.into_iter().collect();
    Ok(from
        .iter_days()
        .take_while(|d| *d <= to)
        .map(|d| by_day.get(&d).copied().unwrap_or(0.0))
        .collect())
}
