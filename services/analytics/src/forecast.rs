//! Demand forecasts: Holt's linear trend method (level and trend), or
//! simple exponential smoothing (level only) when the series is too short
//! to tell a trend, with a 95% prediction interval.
//!
//! The smoothing parameters are the grid point (steps of 0.05) with the
//! smallest sum of squared one-step errors, the first one on ties, so the
//! same series always gives the same forecast.

/// Series shorter than this (counted from the first non-zero day) use
/// simple exponential smoothing.
pub const MIN_HOLT_POINTS: usize = 10;
/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub method: Method,
    pub alpha: f64,
    pub beta: f64,
    /// One point per future day, starting the day after the series.
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Holt,
    Simple,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Holt => "holt",
            Method::Simple => "simple",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Forecasts `horizon` days after `series` (daily values, oldest first).
/// Leading zero days (before the first demand) are not part of the fit.
pub fn forecast(series: &[f64], horizon: usize) -> Forecast {
    let start = series
        .iter()
        .position(|v| *v != 0.0)
        .unwrap_or(series.len());
    let series = &series[start..];
    if series.len() < MIN_HOLT_POINTS {
        let alpha = best(grid(), |a| simple(series, a).sse);
        let fit = simple(series, alpha);
        return Forecast {
            method: Method::Simple,
            alpha,
            beta: 0.0,
            points: (1..=horizon)
                .map(|h| {
                    interval(
                        fit.level,
                        fit.variance * (1.0 + (h as f64 - 1.0) * alpha * alpha),
                    )
                })
                .collect(),
        };
    }
    let pairs = grid().flat_map(|a| grid().map(move |b| (a, b)));
    let (alpha, beta) = best(pairs, |(a, b)| holt(series, a, b).sse);
    let fit = holt(series, alpha, beta);
    Forecast {
        method: Method::Holt,
        alpha,
        beta,
        points: (1..=horizon)
            .map(|h| {
                let spread: f64 = (1..h)
                    .map(|j| (alpha * (1.0 + j as f64 * beta)).powi(2))
                    .sum();
                interval(
                    fit.level + h as f64 * fit.trend,
                    fit.variance * (1.0 + spread),
                )
            })
            .collect(),
    }
}

/// 0.05, 0.10 … 0.95.
fn grid() -> impl Iterator<Item = f64> + Clone {
    (1..20).map(|i| f64::from(i) * 0.05)
}

/// The candidate with the smallest cost; the first one on ties.
fn best<T: Copy>(candidates: impl Iterator<Item = T>, cost: impl Fn(T) -> f64) -> T {
    let mut best: Option<(T, f64)> = None;
    for c in candidates {
        let e = cost(c);
        if best.is_none_or(|(_, b)| e < b - 1e-12) {
            best = Some((c, e));
        }
    }
    best.map(|(c, _)| c)
        .expect("the parameter grid is not empty")
}

fn interval(value: f64, variance: f64) -> Point {
    let half = Z95 * variance.max(0.0).sqrt();
    Point {
        value: value.max(0.0),
        lower: (value - half).max(0.0),
        upper: (value + half).max(0.0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    level: f64,
    trend: f64,
    sse: f64,
    /// Mean squared one-step error.
    variance: f64,
}

/// Simple exponential smoothing with `alpha`.
fn simple(series: &[f64], alpha: f64) -> Fit {
    let Some((&first, rest)) = series.split_first() else {
        return Fit {
            level: 0.0,
            trend: 0.0,
            sse: 0.0,
            variance: 0.0,
        };
    };
    let mut level = first;
    let mut sse = 0.0;
    for &y in rest {
        let err = y - level;
        sse += err * err;
        level += alpha * err;
    }
    Fit {
        level,
        trend: 0.0,
        sse,
        variance: if rest.is_empty() {
            0.0
        } else {
            sse / rest.len() as f64
        },
    }
}

/// Holt's linear trend with `alpha` (level) and `beta` (trend); needs two
/// points or more.
fn holt(series: &[f64], alpha: f64, beta: f64) -> Fit {
    let mut level = series[0];
    let mut trend = series[1] - series[0];
    let mut sse = 0.0;
    for &y in &series[1..] {
        let predicted = level + trend;
        let err = y - predicted;
        sse += err * err;
        let previous = level;
        level = alpha * y + (1.0 - alpha) * predicted;
        trend = beta * (level - previous) + (1.0 - beta) * trend;
    }
    Fit {
        level,
        trend,
        sse,
        variance: sse / (series.len() - 1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_straight_line_continues_exactly_with_no_spread() {
        let series: Vec<f64> = (0..20).map(|t| 10.0 + 2.0 * f64::from(t)).collect();
        let f = forecast(&series, 3);
        assert_eq!(f.method, Method::Holt);
        let values: Vec<f64> = f.points.iter().map(|p| p.value).collect();
        assert!(
            close(values[0], 50.0) && close(values[1], 52.0) && close(values[2], 54.0),
            "{values:?}"
        );
        assert!(
            f.points
                .iter()
                .all(|p| close(p.lower, p.value) && close(p.upper, p.value))
        );
    }

    #[test]
    fn a_short_series_uses_simple_smoothing_and_a_flat_one_stays_flat() {
        let f = forecast(&[0.0, 0.0, 5.0, 5.0, 5.0, 5.0], 4);
        assert_eq!(f.method, Method::Simple);
        assert_eq!(f.points.len(), 4);
        assert!(
            f.points
                .iter()
                .all(|p| close(p.value, 5.0) && close(p.upper, 5.0))
        );
        // No demand at all: nothing expected.
        let f = forecast(&[0.0; 30], 2);
        assert!(f.points.iter().all(|p| p.value == 0.0 && p.upper == 0.0));
    }

    #[test]
    fn smoothing_matches_hand_computed_values() {
        // Simple, alpha 0.5 over 2, 4, 6: levels 2 → 3 → 4.5, errors 2 and
        // 3, mean squared error 6.5.
        let fit = simple(&[2.0, 4.0, 6.0], 0.5);
        assert!(close(fit.level, 4.5) && close(fit.sse, 13.0) && close(fit.variance, 6.5));
        // Holt, alpha 0.5, beta 0.5 over 1, 3, 4: start level 1, trend 2;
        // at 3: predicted 3, no error, level 3, trend 2; at 4: predicted 5,
        // error -1, level 4.5, trend 1.75.
        let fit = holt(&[1.0, 3.0, 4.0], 0.5, 0.5);
        assert!(close(fit.level, 4.5) && close(fit.trend, 1.75) && close(fit.sse, 1.0));
        // The interval widens with the horizon: h = 2 adds alpha²(1+beta)².
        let p = interval(10.0, 4.0);
        assert!(close(p.upper - p.value, Z95 * 2.0));
    }

    #[test]
    fn the_fit_is_deterministic_and_the_interval_widens_and_stays_non_negative() {
        let series: Vec<f64> = (0..40)
            .map(|t| 20.0 + f64::from(t % 7) * 3.0 - f64::from(t) * 0.2)
            .collect();
        let a = forecast(&series, 14);
        assert_eq!(a, forecast(&series, 14));
        assert_eq!(a.method, Method::Holt);
        for w in a.points.windows(2) {
            assert!(w[1].upper - w[1].lower >= w[0].upper - w[0].lower - 1e-9);
        }
        assert!(
            a.points
                .iter()
                .all(|p| p.lower >= 0.0 && p.lower <= p.value && p.value <= p.upper)
        );
    }
}
