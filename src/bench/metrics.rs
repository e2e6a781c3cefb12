//! From per-request records to a run's numbers: counts, request and token
//! throughput, latency distributions (TTFT, TPOT, inter-token latency,
//! end-to-end) summarised as mean, median, p90 and p99, and goodput, the rate
//! of requests that met every SLO. Latencies are reported in milliseconds.

use super::cli::Slo;
use super::client::RequestRecord;

/// Percentile `p` (0..=100) of sorted values, by linear interpolation between
/// closest ranks (numpy's default), so p50 of [1, 2] is 1.5. Empty input gives 0.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// A latency distribution in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarise values given in seconds.
    pub fn of_seconds(values: &[f64]) -> Summary {
        let mut ms: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|v| v * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        if ms.is_empty() {
            return Summary::default();
        }
        Summary {
            count: ms.len(),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            median: percentile(&ms, 50.0),
            p90: percentile(&ms, 90.0),
            p99: percentile(&ms, 99.0),
            min: ms[0],
            max: ms[ms.len() - 1],
        }
    }
}

/// Time per output token after the first: (e2e - ttft) / (tokens - 1); None
/// for one-token answers, where it is undefined.
pub fn tpot_s(r: &RequestRecord) -> Option<f64> {
    (r.ok && r.output_tokens > 1).then(|| (r.e2e_s - r.ttft_s) / (r.output_tokens - 1) as f64)
}

/// Whether a successful request met every SLO that is set.
pub fn meets(r: &RequestRecord, slo: &Slo) -> bool {
    let within = |limit: Option<f64>, v_s: Option<f64>| match (limit, v_s) {
        (None, _) => true,
        (Some(ms), Some(v)) => v * 1e3 <= ms,
        // A TPOT limit with no TPOT (one token) is not held against the request.
        (Some(_), None) => true,
    };
    r.ok && within(slo.ttft_ms, Some(r.ttft_s))
        && within(slo.tpot_ms, tpot_s(r))
        && within(slo.e2e_ms, Some(r.e2e_s))
}

/// One run's numbers, as written to the JSON.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunStats {
    /// Concurrency cap of the run, if any.
    pub concurrency: Option<usize>,
    /// Request rate of the run, if any.
    pub request_rate: Option<f64>,
    pub duration_s: f64,
    pub sent: usize,
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// Completed requests per second.
    pub request_throughput: f64,
    pub input_token_throughput: f64,
    pub output_token_throughput: f64,
    /// Whether every completed request's token counts came from server usage.
    pub usage_reported: bool,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2e_ms: Summary,
    /// Requests that met every SLO (None without SLOs).
    pub good_requests: Option<usize>,
    /// good_requests per second.
    pub goodput: Option<f64>,
    /// First few distinct error messages.
    pub errors: Vec<String>,
}

/// Compute a run's numbers from its records.
pub fn compute(
    records: &[RequestRecord],
    wall_s: f64,
    concurrency: Option<usize>,
    request_rate: Option<f64>,
    slo: Option<&Slo>,
) -> RunStats {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
    let per_s = |n: f64| if wall_s > 0.0 { n / wall_s } else { 0.0 };
    let total_in: usize = ok.iter().map(|r| r.input_tokens).sum();
    let total_out: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft_s).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| r.e2e_s).collect();
    let tpot: Vec<f64> = ok.iter().filter_map(|r| tpot_s(r)).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    let good = slo.map(|s| ok.iter().filter(|r| meets(r, s)).count());
    let mut errors: Vec<String> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        if errors.len() < 5 && !errors.contains(e) {
            errors.push(e.clone());
        }
    }
    RunStats {
        concurrency,
        request_rate,
        duration_s: wall_s,
        sent: records.len(),
        completed: ok.len(),
        failed: records.len() - ok.len(),
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: per_s(ok.len() as f64),
        input_token_throughput: per_s(total_in as f64),
        output_token_throughput: per_s(total_out as f64),
        usage_reported: !ok.is_empty() && ok.iter().all(|r| r.usage_reported),
        ttft_ms: Summary::of_seconds(&ttft),
        tpot_ms: Summary::of_seconds(&tpot),
        itl_ms: Summary::of_seconds(&itl),
        e2e_ms: Summary::of_seconds(&e2e),
        good_requests: good,
        goodput: good.map(|g| per_s(g as f64)),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
