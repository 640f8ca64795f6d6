//! One process's life as the orchestrator sees it, and the retry policy between attempts.
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// seen → matched → injecting → traced | failed(reason) | excluded(reason).
/// `awaiting_tracer` sits between injecting and traced: the code ran (or a worker was forked from a
/// traced master) and the tracer has not connected yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum State {
    Seen,
    Matched,
    Injecting,
    AwaitingTracer,
    Traced,
    Failed(String),
    Excluded(String),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Seen => "seen",
            State::Matched => "matched",
            State::Injecting => "injecting",
            State::AwaitingTracer => "awaiting_tracer",
            State::Traced => "traced",
            State::Failed(_) => "failed",
            State::Excluded(_) => "excluded",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            State::Failed(r) | State::Excluded(r) => Some(r),
            _ => None,
        }
    }
}

/// How the tracer got into a traced process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Injected,
    /// Forked from a traced master (gunicorn `register_at_fork`, uWSGI `post_fork_hook`).
    Inherited,
}

/// Retries after a failed injection: exponential from `first`, at most `attempts` in all.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
    /// Interpreter still starting: poll this often, for at most `not_ready_for`.
    pub not_ready_every: Duration,
    pub not_ready_for: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
            attempts: 5,
            not_ready_every: Duration::from_millis(50),
            not_ready_for: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `failures + 1`, or `None` when out of attempts.
    pub fn backoff(&self, failures: u32) -> Option<Duration> {
        if failures >= self.attempts {
            return None;
        }
        let exp = self
            .first
            .saturating_mul(1u32 << failures.min(16).saturating_sub(1));
        Some(exp.min(self.max))
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stops() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (0..6).map(|f| p.backoff(f)).collect();
        assert_eq!(waits[0], Some(Duration::from_secs(1)));
        assert_eq!(waits[1], Some(Duration::from_secs(1)));
        assert_eq!(waits[2], Some(Duration::from_secs(2)));
        assert_eq!(waits[4], Some(Duration::from_secs(8)));
        assert_eq!(waits[5], None);
    }
}
