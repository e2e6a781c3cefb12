//! What a replica served recently, for `/stats` and the console's live page:
//! totals since start, and latency percentiles (TTFT, inter-token, end to
//! end) over a sliding window. Prometheus has the same figures as
//! histograms; this is the cheap answer for a page that polls once a second
//! without a Prometheus server.
//!
//! Each window keeps at most [`MAX_SAMPLES`] of its newest samples younger
//! than [`WINDOW`], so its memory is bounded however fast tokens come.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the percentiles look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Samples kept per window (the newest win).
pub const MAX_SAMPLES: usize = 4096;

/// Samples of one latency, newest last.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, f64)>,
}

impl Window {
    pub fn record(&mut self, at: Instant, value: f64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, value));
    }

    fn expire(&mut self, now: Instant) {
        while self.samples.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW) {
            self.samples.pop_front();
        }
    }

    /// The `q` quantiles (0..=1) of the samples still in the window, by
    /// nearest rank; `None` each when the window is empty.
    pub fn quantiles<const N: usize>(&mut self, now: Instant, q: [f64; N]) -> [Option<f64>; N] {
        self.expire(now);
        let mut v: Vec<f64> = self.samples.iter().map(|(_, x)| *x).collect();
        v.sort_by(f64::total_cmp);
        q.map(|q| {
            if v.is_empty() {
                return None;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            Some(v[rank - 1])
        })
    }
}

/// p50 and p99 of one latency, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// One replica's recent history.
#[derive(Debug, Default)]
pub struct Recent {
    pub requests_total: u64,
    pub errors_total: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    ttft: Window,
    itl: Window,
    e2e: Window,
}

/// A snapshot of [`Recent`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecentStats {
    pub requests_total: u64,
    pub errors_total: u64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    pub ttft: Percentiles,
    pub itl: Percentiles,
    pub e2e: Percentiles,
}

impl Recent {
    pub fn first_token(&mut self, ttft: Duration) {
        self.ttft.record(Instant::now(), ttft.as_secs_f64());
    }

    pub fn next_token(&mut self, gap: Duration) {
        self.itl.record(Instant::now(), gap.as_secs_f64());
    }

    pub fn finished(&mut self, e2e: Duration, prompt: usize, generated: usize) {
        self.requests_total += 1;
        self.prompt_tokens_total += prompt as u64;
        self.generation_tokens_total += generated as u64;
        self.e2e.record(Instant::now(), e2e.as_secs_f64());
    }

    pub fn failed(&mut self, prompt: usize, generated: usize) {
        self.errors_total += 1;
        self.prompt_tokens_total += prompt as u64;
        self.generation_tokens_total += generated as u64;
    }

    pub fn snapshot(&mut self, now: Instant) -> RecentStats {
        let pct = |w: &mut Window| {
            let [p50, p99] = w.quantiles(now, [0.5, 0.99]);
            Percentiles { p50, p99 }
        };
        RecentStats {
            requests_total: self.requests_total,
            errors_total: self.errors_total,
            prompt_tokens_total: self.prompt_tokens_total,
            generation_tokens_total: self.generation_tokens_total,
            ttft: pct(&mut self.ttft),
            itl: pct(&mut self.itl),
            e2e: pct(&mut self.e2e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank_and_none_when_empty() {
        let mut w = Window::default();
        let now = Instant::now();
        assert_eq!(w.quantiles(now, [0.5, 0.99]), [None, None]);
        for x in 1..=100 {
            w.record(now, x as f64);
        }
        assert_eq!(w.quantiles(now, [0.5, 0.99, 1.0]), [Some(50.0), Some(99.0), Some(100.0)]);
    }

    #[test]
    fn old_samples_leave_the_window_and_memory_is_bounded() {
        let mut w = Window::default();
        let t0 = Instant::now();
        w.record(t0, 1000.0);
        let later = t0 + WINDOW + Duration::from_secs(1);
        w.record(later, 1.0);
        assert_eq!(w.quantiles(later, [1.0]), [Some(1.0)], "the old sample expired");
        for i in 0..(MAX_SAMPLES + 10) {
            w.record(later, i as f64);
        }
        assert_eq!(w.samples.len(), MAX_SAMPLES);
        assert_eq!(w.quantiles(later, [0.0]), [Some(10.0)], "the oldest were dropped");
    }

    #[test]
    fn totals_count_results_and_failures() {
        let mut r = Recent::default();
        r.first_token(Duration::from_millis(100));
        r.next_token(Duration::from_millis(20));
        r.finished(Duration::from_secs(1), 10, 5);
        r.failed(3, 1);
        let s = r.snapshot(Instant::now());
        assert_eq!((s.requests_total, s.errors_total, s.prompt_tokens_total, s.generation_tokens_total), (1, 1, 13, 6));
        assert_eq!(s.ttft.p50, Some(0.1));
        assert_eq!(s.itl.p99, Some(0.02));
        assert_eq!(s.e2e.p50, Some(1.0));
    }
}
