//! Graceful shutdown. On SIGTERM (or Ctrl-C) the server starts draining:
//! readiness answers 503 so load balancers stop sending traffic, every new
//! request other than the probes and metrics gets 503 "shutting down" with
//! Retry-After, and the requests already running (streams included) get up
//! to the grace period to finish. Then the HTTP server stops and the process
//! exits 0. Unfinished batch-job lines are not lost: the job store resumes
//! them at the next start.
//!
//! [`Drain`] is the plain state: a flag and a count of requests in flight,
//! each held by a [`Running`] guard that the access middleware keeps until
//! the response body is sent or dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One request in flight; dropping it ends it.
#[derive(Debug)]
pub struct Running(Arc<Drain>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Stop taking work (readiness 503, new requests 503).
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Count a request in, unless draining.
    pub fn enter(self: &Arc<Self>) -> Option<Running> {
        if self.is_draining() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        // A drain that began between the check and the increment still sees
        // this request counted, so it waits for it: nothing slips through.
        Some(Running(self.clone()))
    }

    /// Wait until no request is in flight or `grace` has passed; true when
    /// everything finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_work_and_waits_for_running() {
        let d = Drain::new();
        let a = d.enter().expect("open before drain");
        let b = d.enter().expect("open before drain");
        d.begin();
        assert!(d.enter().is_none(), "a draining server takes no new request");
        assert_eq!(d.in_flight(), 2);
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.wait_idle(Duration::from_secs(5)).await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one request still runs");
        drop(b);
        assert!(waiter.await.unwrap(), "idle once both ended");
    }

    #[tokio::test]
    async fn the_grace_period_bounds_the_wait() {
        let d = Drain::new();
        let _stuck = d.enter().unwrap();
        d.begin();
        let t0 = std::time::Instant::now();
        assert!(!d.wait_idle(Duration::from_millis(50)).await);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
