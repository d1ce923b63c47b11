//! The retransmission timer of a transfer: RFC 6298 smoothing (SRTT, RTTVAR) over
//! ACK round trips, Karn's rule (the caller feeds only samples of packets sent once),
//! exponential backoff on timeout, clamped between a floor of a few milliseconds and
//! the transfer's negotiated or configured timeout.
//!
//! Classic TFTP servers wait a fixed second (or more) per loss; on a LAN the round
//! trip is well under a millisecond, so a timer that follows the measured RTT
//! recovers from a lost packet hundreds of times sooner.

use std::time::Duration;

/// The lowest floor accepted for the timer (`[tftp] min_timeout`).
pub const MIN_RTO: Duration = Duration::from_millis(1);

/// Clock granularity term of RFC 6298 (G).
const GRANULARITY: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The timer without backoff.
    base_rto: Duration,
    /// The timer in force (base, doubled per consecutive timeout).
    rto: Duration,
    min: Duration,
    max: Duration,
}

impl RttEstimator {
    /// `initial` is used until the first sample; the timer stays within `min..=max`
    /// (`max` also caps the backoff).
    pub fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        let min = min.max(MIN_RTO);
        let max = max.max(min);
        let initial = initial.clamp(min, max);
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            base_rto: initial,
            rto: initial,
            min,
            max,
        }
    }

    /// Feeds one round-trip sample (of a packet that was sent exactly once).
    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.base_rto = (srtt + (self.rttvar * 4).max(GRANULARITY)).clamp(self.min, self.max);
        // A fresh measurement ends any backoff (RFC 6298 §5.7).
        self.rto = self.base_rto;
    }

    /// A timeout fired: double the timer, up to the maximum.
    pub fn backoff(&mut self) {
        self.rto = (self.rto * 2).min(self.max);
    }

    /// The timer to arm now.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Whether backoff has reached the ceiling (only retransmissions at the full
    /// timeout count against the retry budget; the ramp up to it is free).
    pub fn at_max(&self) -> bool {
        self.rto >= self.max
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_samples_and_backs_off() {
        let min = Duration::from_millis(10);
        let mut e = RttEstimator::new(Duration::from_secs(1), min, Duration::from_secs(1));
        assert_eq!(e.rto(), Duration::from_secs(1));
        e.sample(Duration::from_micros(200));
        assert_eq!(e.rto(), min, "a LAN round trip is floored at the minimum");
        for _ in 0..20 {
            e.sample(Duration::from_millis(40));
        }
        let rto = e.rto();
        assert!(
            rto >= Duration::from_millis(40) && rto < Duration::from_millis(200),
            "{rto:?}"
        );
        e.backoff();
        assert_eq!(e.rto(), rto * 2);
        for _ in 0..10 {
            e.backoff();
        }
        assert_eq!(e.rto(), Duration::from_secs(1));
        assert!(e.at_max());
        e.sample(Duration::from_millis(40));
        assert!(e.rto() < Duration::from_millis(200));
    }

    #[test]
    fn never_exceeds_the_negotiated_timeout() {
        let mut e = RttEstimator::new(
            Duration::from_secs(3),
            Duration::from_millis(10),
            Duration::from_secs(2),
        );
        assert_eq!(e.rto(), Duration::from_secs(2));
        e.sample(Duration::from_secs(10));
        assert_eq!(e.rto(), Duration::from_secs(2));
    }
}
