//! A circuit breaker for one upstream.
//!
//! Closed, it lets every call through and counts consecutive failed calls;
//! at the threshold it opens. Open, it refuses calls at once (the caller
//! answers 503 with `Retry-After`) until the reset time has passed; then it
//! half-opens and lets exactly one probe through. The probe's success closes
//! it, its failure opens it again for another reset period. State changes
//! are logged once each and exported as `agora_upstream_breaker_state`
//! (0 closed, 1 open, 2 half-open).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

pub struct CircuitBreaker {
    name: String,
    threshold: u32,
    reset: Duration,
    state: Mutex<State>,
    gauge: metrics::Gauge,
}

/// What the breaker decided about a call.
#[must_use]
pub enum Admission<'a> {
    /// Go ahead; report the outcome on the permit.
    Allowed(Permit<'a>),
    /// Refused; the breaker may let calls through after this long.
    Refused { retry_after: Duration },
}

/// A call the breaker let through. Dropped without an outcome (the caller
/// went away), it neither opens nor closes the breaker, but frees the
/// half-open probe slot.
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl CircuitBreaker {
    /// `threshold` consecutive failures open it (0 disables it); it stays
    /// open for `reset`.
    pub fn new(name: &str, threshold: u32, reset: Duration) -> Self {
        let gauge = metrics::gauge!("agora_upstream_breaker_state", "upstream" => name.to_owned());
        gauge.set(0.0);
        Self {
            name: name.to_owned(),
            threshold,
            reset,
            state: Mutex::new(State::Closed { failures: 0 }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self) -> Admission<'_> {
        if self.threshold == 0 {
            return Admission::Allowed(Permit::new(self, false));
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Allowed(Permit::new(self, false)),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Admission::Refused {
                        retry_after: until - now,
                    };
                }
                self.enter(&mut state, State::HalfOpen { probing: true });
                Admission::Allowed(Permit::new(self, true))
            }
            State::HalfOpen { probing: true } => Admission::Refused {
                retry_after: Duration::from_secs(1),
            },
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Admission::Allowed(Permit::new(self, true))
            }
        }
    }

    /// Whether the breaker is open now (for health reports).
    pub fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open { until } if Instant::now() < until)
    }

    fn record(&self, probe: bool, outcome: Option<bool>) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.lock();
        match (*state, outcome) {
            (State::HalfOpen { .. }, None) if probe => {
                *state = State::HalfOpen { probing: false };
            }
            (_, None) => {}
            (State::Closed { failures }, Some(false)) => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.open(&mut state);
                } else {
                    *state = State::Closed { failures };
                }
            }
            (State::Closed { failures }, Some(true)) if failures != 0 => {
                *state = State::Closed { failures: 0 };
            }
            (State::HalfOpen { .. }, Some(true)) if probe => {
                self.enter(&mut state, State::Closed { failures: 0 });
            }
            (State::HalfOpen { .. }, Some(false)) if probe => self.open(&mut state),
            // Outcomes of calls admitted before the breaker opened change
            // nothing: the probe decides.
            _ => {}
        }
    }

    fn open(&self, state: &mut State) {
        self.enter(
            state,
            State::Open {
                until: Instant::now() + self.reset,
            },
        );
    }

    fn enter(&self, state: &mut State, next: State) {
        let (label, value) = match next {
            State::Closed { .. } => ("closed", 0.0),
            State::Open { .. } => ("open", 1.0),
            State::HalfOpen { .. } => ("half-open", 2.0),
        };
        *state = next;
        self.gauge.set(value);
        if label == "open" {
            tracing::warn!(upstream = %self.name, reset_ms = self.reset.as_millis() as u64, "circuit breaker open");
        } else {
            tracing::info!(upstream = %self.name, state = label, "circuit breaker");
        }
    }
}

impl<'a> Permit<'a> {
    fn new(breaker: &'a CircuitBreaker, probe: bool) -> Self {
        Self {
            breaker,
            probe,
            done: false,
        }
    }

    /// Reports the call's outcome (after its retries).
    pub fn finish(mut self, success: bool) {
        self.done = true;
        self.breaker.record(self.probe, Some(success));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(b: &CircuitBreaker) -> Permit<'_> {
        match b.admit() {
            Admission::Allowed(p) => p,
            Admission::Refused { .. } => panic!("expected the call to be let through"),
        }
    }

    #[test]
    fn opens_after_the_threshold_then_probes_once_and_closes() {
        let b = CircuitBreaker::new("t", 3, Duration::from_millis(50));
        allowed(&b).finish(false);
        allowed(&b).finish(true);
        for _ in 0..2 {
            allowed(&b).finish(false);
        }
        assert!(!b.is_open(), "a success in between resets the count");
        allowed(&b).finish(false);
        assert!(b.is_open());
        let Admission::Refused { retry_after } = b.admit() else {
            panic!("open refuses")
        };
        assert!(retry_after <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        let probe = allowed(&b);
        assert!(
            matches!(b.admit(), Admission::Refused { .. }),
            "one probe at a time"
        );
        probe.finish(true);
        allowed(&b).finish(true);
        assert!(!b.is_open());
    }

    #[test]
    fn a_failed_probe_opens_again_and_an_abandoned_one_frees_the_slot() {
        let b = CircuitBreaker::new("t", 1, Duration::from_millis(20));
        allowed(&b).finish(false);
        std::thread::sleep(Duration::from_millis(30));
        drop(allowed(&b));
        allowed(&b).finish(false);
        assert!(b.is_open());
    }
}
