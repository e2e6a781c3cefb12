//! Tunables of the batch service, with the defaults a server uses. Tests
//! shrink them (few active jobs, short backoff) to exercise the limits fast.

use std::time::Duration;

/// At most this many request lines per job.
pub const DEFAULT_MAX_LINES: usize = 50_000;
/// At most this many unfinished jobs per process; more is refused with 429.
pub const DEFAULT_MAX_ACTIVE_JOBS: usize = 64;
/// Largest accepted JSONL body; actix answers 413 beyond it.
pub const DEFAULT_MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

/// How a line answered 429/503 (the engine shedding batch work under
/// interactive load) is retried before its last answer is recorded.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Executions of one line at most (1 = no retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// The backoff doubles up to this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // About five minutes of waiting in all before a line is given up.
        RetryPolicy {
            max_attempts: 40,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Lines executing at once in this process, over all jobs (at least 1).
    pub concurrency: usize,
    pub max_active_jobs: usize,
    pub max_lines: usize,
    pub retry: RetryPolicy,
}

impl BatchOptions {
    /// The defaults with the given concurrency.
    pub fn with_concurrency(concurrency: usize) -> Self {
        BatchOptions {
            concurrency: concurrency.max(1),
            max_active_jobs: DEFAULT_MAX_ACTIVE_JOBS,
            max_lines: DEFAULT_MAX_LINES,
            retry: RetryPolicy::default(),
        }
    }
}
