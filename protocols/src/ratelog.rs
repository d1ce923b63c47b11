//! Rate-limited logging for bad input: a flood of malformed packets must not become
//! a flood of log lines. Each call site keeps a [`RateLimit`]; at most one line per
//! interval is logged, with the count of the ones suppressed since.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Returns `Some(suppressed)` when a line may be logged now.
    pub fn check(&self) -> Option<u64> {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        match g.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = g.1;
                *g = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// `warn!` at most once per second per call site, with the number suppressed.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::ratelog::RateLimit = $crate::ratelog::RateLimit::new(std::time::Duration::from_secs(1));
        if let Some(suppressed) = LIMIT.check() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}
