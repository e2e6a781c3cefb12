//! When requests are sent: at most `concurrency` in flight (a semaphore), and,
//! when a rate is given, start times spaced evenly or as a seeded Poisson
//! process. A run ends after `num_requests` or once `duration` has passed;
//! requests already in flight are awaited either way, so every sent request
//! ends up completed or failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::cli::Arrival;
use super::client::{Client, RequestRecord};
use super::workload::Prompt;

/// One run's pacing.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Cap on requests in flight (None = no cap).
    pub concurrency: Option<usize>,
    /// Requests per second (None = send as fast as the cap allows).
    pub rate: Option<f64>,
    pub arrival: Arrival,
    pub num_requests: usize,
    pub duration: Option<Duration>,
    pub seed: u64,
}

/// What a run produced.
pub struct RunOutput {
    pub records: Vec<RequestRecord>,
    /// From the first send to the last response.
    pub wall_s: f64,
}

/// Gaps between request starts for a rate.
struct Pacer {
    rate: Option<f64>,
    exp: Option<Exp<f64>>,
    rng: ChaCha8Rng,
}

impl Pacer {
    fn new(plan: &Plan) -> Pacer {
        // Exp::new fails only for a negative or NaN rate, which `rate` rejects.
        let rate = plan.rate.filter(|r| r.is_finite() && *r > 0.0);
        let exp = match (rate, plan.arrival) {
            (Some(r), Arrival::Poisson) => Exp::new(r).ok(),
            _ => None,
        };
        Pacer {
            rate,
            exp,
            rng: ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5eed_ba5e),
        }
    }

    fn next_gap(&mut self) -> Duration {
        match (self.rate, &self.exp) {
            (None, _) => Duration::ZERO,
            (Some(_), Some(exp)) => Duration::from_secs_f64(exp.sample(&mut self.rng)),
            (Some(r), None) => Duration::from_secs_f64(1.0 / r),
        }
    }
}

/// Send the prompts (cycling through them) according to the plan.
pub async fn run_plan(
    client: Arc<Client>,
    prompts: Arc<Vec<Prompt>>,
    plan: &Plan,
    bar: &ProgressBar,
) -> RunOutput {
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    // No cap is the same as a cap larger than the run.
    let permits = plan
        .concurrency
        .unwrap_or(plan.num_requests)
        .clamp(1, Semaphore::MAX_PERMITS);
    let sem = Arc::new(Semaphore::new(permits));
    let mut pacer = Pacer::new(plan);
    let mut tasks = JoinSet::new();
    let mut next_at = start;
    let mut records = Vec::with_capacity(plan.num_requests);
    if prompts.is_empty() {
        return RunOutput {
            records,
            wall_s: 0.0,
        };
    }
    for i in 0..plan.num_requests {
        // Arrival times are absolute (start + sum of gaps), so a slow loop does
        // not stretch the schedule.
        if i > 0 {
            next_at += pacer.next_gap();
        }
        if deadline.is_some_and(|d| next_at >= d) {
            break;
        }
        tokio::time::sleep_until(next_at.into()).await;
        let permit = match sem.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => break, // the semaphore is never closed; stop cleanly if it were
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // Reap finished requests as we go so the progress bar moves.
        while let Some(done) = tasks.try_join_next() {
            records.push(record_of(done));
        }
        let client = client.clone();
        let prompts = prompts.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let rec = client.send(&prompts[i % prompts.len()], start).await;
            drop(permit);
            bar.inc(1);
            rec
        });
    }
    while let Some(done) = tasks.join_next().await {
        records.push(record_of(done));
    }
    let wall_s = start.elapsed().as_secs_f64();
    records.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    RunOutput { records, wall_s }
}

/// A panicked request task still counts as a failed request.
fn record_of(done: Result<RequestRecord, tokio::task::JoinError>) -> RequestRecord {
    done.unwrap_or_else(|e| RequestRecord {
        error: Some(format!("task failed: {e}")),
        ..Default::default()
    })
}
