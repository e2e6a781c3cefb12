//! Black-box tests of the actor system through the `Engine` handle, against
//! the fake executor in `fake/` (no libtorch). Every generated token is
//! checked against an unbatched reference run, so batching, chunking,
//! preemption, prefix hits and worker restarts must all be invisible.

mod fake;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake::{decode, reference, Control, FakeExec, Fault};
use inferd_actors::executor::{ModelSpec, Quantization};
use inferd_actors::request::{Event, Finish, GenerateRequest, ReplicaStats, SubmitError, Usage};
use inferd_actors::sampler::SamplingParams;
use inferd_actors::{
    Engine, EngineConfig, ExecutorFactory, ModelDeployment, Priority, RequestHandle,
};

const MODEL: &str = "fake";
const BS: usize = 4;
/// Longest a test waits for one event or condition.
const PATIENCE: Duration = Duration::from_secs(20);

struct Setup {
    /// Model names, all deployed on every device.
    models: Vec<&'static str>,
    devices: Vec<String>,
    num_blocks: u64,
    max_num_seqs: usize,
    max_batched_tokens: usize,
    max_queue_requests: usize,
    max_queue_tokens: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            models: vec![MODEL],
            devices: vec!["cpu".into()],
            num_blocks: 1024,
            max_num_seqs: 16,
            max_batched_tokens: 64,
            max_queue_requests: 1000,
            max_queue_tokens: 100_000,
        }
    }
}

async fn start(s: Setup) -> (Engine, Arc<Control>) {
    let ctl = Arc::new(Control::default());
    let c = ctl.clone();
    let factory: ExecutorFactory<FakeExec> =
        Arc::new(move |_device: &str| Ok(FakeExec::new(c.clone())));
    let deployment = |name: &str| ModelDeployment {
        spec: ModelSpec {
            name: name.into(),
            version: "v1".into(),
            source: PathBuf::from("/nonexistent"),
            dtype: "f32".into(),
            kv_budget_bytes: s.num_blocks,
            block_size: BS,
            max_context: Some(512),
            quantization: Quantization::None,
        },
        devices: s.devices.clone(),
        max_num_seqs: s.max_num_seqs,
        max_batched_tokens: s.max_batched_tokens,
        enable_prefix_caching: true,
        max_queue_requests: s.max_queue_requests,
        max_queue_tokens: s.max_queue_tokens,
    };
    let config = EngineConfig {
        devices: s.devices.clone(),
        models: s.models.iter().map(|m| deployment(m)).collect(),
    };
    let engine = Engine::start(config, factory);
    engine.wait_ready(PATIENCE).await.expect("fake model loads");
    (engine, ctl)
}

/// Prompt ids are ASCII words (id % 10 == 5), so the detokenizer's prompt
/// context never changes the output text.
fn prompt(seed: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((seed * 7919 + i * 104_729) % 9) as u32 * 10 + 5)
        .collect()
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        model: MODEL.into(),
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        priority: Priority::Interactive,
        request_id: "test".into(),
        deadline: None,
        use_cache: false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum End {
    Done {
        finish: Finish,
        usage: Usage,
        seed: u64,
    },
    Error(String),
    Closed,
}

#[derive(Debug)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    end: End,
}

async fn collect(mut h: RequestHandle) -> Outcome {
    let mut out = Outcome {
        tokens: Vec::new(),
        text: String::new(),
        end: End::Closed,
    };
    loop {
        let ev = tokio::time::timeout(PATIENCE, h.events.recv())
            .await
            .expect("event within patience");
        match ev {
            Some(Event::Token { token, text, .. }) => {
                out.tokens.push(token);
                out.text.push_str(&text);
            }
            Some(Event::Done {
                finish,
                usage,
                seed,
                model,
                version,
            }) => {
                assert_eq!((model.as_str(), version.as_str()), (h.model.as_str(), "v1"));
                out.end = End::Done {
                    finish,
                    usage,
                    seed,
                };
                break;
            }
            Some(Event::Error { message }) => {
                out.end = End::Error(message);
                break;
            }
            None => break,
        }
    }
    assert!(
        h.events.recv().await.is_none(),
        "nothing after the last event"
    );
    out
}

/// Asserts a request finished by length with exactly its reference tokens.
fn assert_exact(o: &Outcome, prompt: &[u32], max_tokens: usize) {
    let want = reference(prompt, max_tokens);
    assert_eq!(o.tokens, want, "tokens");
    assert_eq!(o.text, decode(&want), "streamed text");
    match &o.end {
        End::Done { finish, usage, .. } => {
            assert_eq!(*finish, Finish::Length);
            assert_eq!(
                (usage.prompt_tokens, usage.completion_tokens),
                (prompt.len(), max_tokens)
            );
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

async fn stats(e: &Engine) -> ReplicaStats {
    e.stats().await.into_iter().next().expect("one replica")
}

/// Polls stats until `cond` holds.
async fn wait_stats(e: &Engine, cond: impl Fn(&ReplicaStats) -> bool) -> ReplicaStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = stats(e).await;
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn idle(s: &ReplicaStats) -> bool {
    s.running == 0 && s.waiting == 0 && s.free_blocks == s.num_blocks && s.kv_usage == 0.0
}

#[actix_rt::test]
async fn single_request_streams_tokens_then_done() {
    let (e, _) = start(Setup::default()).await;
    let p = prompt(1, 9);
    let mut req = request(p.clone(), 12);
    req.sampling.seed = Some(42);
    let o = collect(e.submit(req).await.unwrap()).await;
    assert_exact(&o, &p, 12);
    assert_eq!(
        o.end,
        End::Done {
            finish: Finish::Length,
            usage: Usage {
                prompt_tokens: 9,
                completion_tokens: 12,
                cached_tokens: 0
            },
            seed: 42,
        }
    );
    // The same prompt again is served from the prefix cache (2 full blocks).
    let o = collect(e.submit(request(p.clone(), 3)).await.unwrap()).await;
    assert_exact(&o, &p, 3);
    assert!(
        matches!(
            o.end,
            End::Done {
                usage: Usage {
                    cached_tokens: 8,
                    ..
                },
                ..
            }
        ),
        "{:?}",
        o.end
    );
    assert!(idle(&stats(&e).await));
    assert_eq!(e.models(), vec![MODEL.to_string()]);
    assert_eq!(e.model_limits(MODEL).map(|i| i.block_size), Some(BS));
}

#[actix_rt::test]
async fn concurrent_requests_get_exactly_their_solo_tokens() {
    let (e, _) = start(Setup {
        max_num_seqs: 8,
        max_batched_tokens: 24,
        ..Setup::default()
    })
    .await;
    let shared = prompt(99, 12);
    let mut cases = Vec::new();
    for i in 0..32u64 {
        let mut p = if i % 4 == 0 {
            shared.clone()
        } else {
            Vec::new()
        };
        p.extend(prompt(i, 1 + (i as usize * 7) % 40));
        cases.push((p, 1 + (i as usize * 5) % 30));
    }
    let mut handles = Vec::new();
    for (p, max) in &cases {
        handles.push(e.submit(request(p.clone(), *max)).await.unwrap());
    }
    for (h, (p, max)) in handles.into_iter().zip(&cases) {
        assert_exact(&collect(h).await, p, *max);
    }
    let s = wait_stats(&e, idle).await;
    assert!(
        s.prefix_hit_tokens > 0,
        "shared prefixes hit the cache: {s:?}"
    );
}

#[actix_rt::test]
async fn finish_reasons_eos_and_stop_string() {
    let (e, _) = start(Setup::default()).await;
    let p = prompt(3, 6);
    let full = reference(&p, 40);

    // A stop token id ends with Eos; the token is streamed, its text is not.
    let mut req = request(p.clone(), 40);
    req.stop_token_ids = vec![full[5]];
    let first = full.iter().position(|&t| t == full[5]).unwrap();
    let o = collect(e.submit(req).await.unwrap()).await;
    assert_eq!(o.tokens, full[..=first]);
    assert!(
        matches!(
            o.end,
            End::Done {
                finish: Finish::Eos,
                ..
            }
        ),
        "{:?}",
        o.end
    );
    assert_eq!(o.text, decode(&full[..first]));

    // ignore_eos keeps the model's EOS from ending it (the fake never emits
    // it, so this is a plain Length run).
    let mut req = request(p.clone(), 10);
    req.ignore_eos = true;
    assert_exact(&collect(e.submit(req).await.unwrap()).await, &p, 10);

    // A stop string (an ASCII word the run produces) ends with Stop and is
    // never streamed.
    let text = decode(&full);
    let word = full
        .iter()
        .skip(3)
        .find(|&&t| t % 10 >= 4)
        .map(|&t| decode(&[t]))
        .expect("an ASCII word");
    let at = text.find(&word).unwrap();
    let mut req = request(p.clone(), 40);
    req.stop = vec![word.clone()];
    let o = collect(e.submit(req).await.unwrap()).await;
    assert!(
        matches!(
            o.end,
            End::Done {
                finish: Finish::Stop,
                ..
            }
        ),
        "{:?}",
        o.end
    );
    assert_eq!(o.text, text[..at]);
    assert!(!o.text.contains(&word));
    assert!(idle(&wait_stats(&e, idle).await));
}

#[actix_rt::test]
async fn dropping_the_receiver_frees_the_blocks() {
    let (e, ctl) = start(Setup::default()).await;
    ctl.delay(2);
    let mut h = e.submit(request(prompt(4, 30), 400)).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(h.events.recv().await, Some(Event::Token { .. })));
    }
    assert!(stats(&e).await.free_blocks < stats(&e).await.num_blocks);
    let steps_before = stats(&e).await.steps;
    drop(h);
    let s = wait_stats(&e, idle).await;
    assert!(
        s.steps <= steps_before + 3,
        "freed within a few steps: {s:?}"
    );
}

#[actix_rt::test]
async fn cancelling_100_in_flight_requests_frees_the_kv() {
    let (e, ctl) = start(Setup {
        max_num_seqs: 128,
        max_batched_tokens: 512,
        num_blocks: 8000,
        ..Setup::default()
    })
    .await;
    ctl.delay(1);
    let mut handles = Vec::new();
    for i in 0..100 {
        handles.push(e.submit(request(prompt(i, 8), 200)).await.unwrap());
    }
    assert!(matches!(
        handles[99].events.recv().await,
        Some(Event::Token { .. })
    ));
    assert!(stats(&e).await.kv_usage > 0.0);
    for h in &handles {
        e.cancel(h.id);
    }
    for h in handles {
        let o = collect(h).await;
        assert_eq!(o.end, End::Error("cancelled".into()));
        assert!(o.tokens.len() < 200);
    }
    wait_stats(&e, idle).await;
}

#[actix_rt::test]
async fn a_burst_over_the_queue_bound_is_refused_at_once() {
    let (e, _) = start(Setup {
        max_queue_requests: 4,
        max_num_seqs: 2,
        ..Setup::default()
    })
    .await;
    let (mut accepted, mut refused) = (Vec::new(), 0);
    // No await yields to the batcher in between: the whole burst meets the
    // queue as it was before it.
    for i in 0..20 {
        match e.submit(request(prompt(i, 5), 6)).await {
            Ok(h) => accepted.push((h, prompt(i, 5))),
            Err(SubmitError::Overloaded {
                retry_after_secs, ..
            }) => {
                assert_eq!(retry_after_secs, 1);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted.len(), refused), (4, 16));
    for (h, p) in accepted {
        assert_exact(&collect(h).await, &p, 6);
    }
    // Drained: admitted again.
    let p = prompt(50, 5);
    assert_exact(
        &collect(e.submit(request(p.clone(), 2)).await.unwrap()).await,
        &p,
        2,
    );
}

#[actix_rt::test]
async fn the_token_bound_also_refuses() {
    let (e, ctl) = start(Setup {
        max_queue_tokens: 20,
        max_num_seqs: 1,
        ..Setup::default()
    })
    .await;
    ctl.delay(1);
    let a = e.submit(request(prompt(1, 15), 3)).await.unwrap();
    let refused = e.submit(request(prompt(2, 15), 3)).await;
    assert!(
        matches!(refused, Err(SubmitError::Overloaded { .. })),
        "{:?}",
        refused.err()
    );
    assert!(matches!(collect(a).await.end, End::Done { .. }));
}

#[actix_rt::test]
async fn unknown_model_and_invalid_lengths() {
    let (e, _) = start(Setup {
        num_blocks: 64,
        ..Setup::default()
    })
    .await;
    let mut req = request(prompt(1, 4), 4);
    req.model = "nope".into();
    assert_eq!(
        e.submit(req).await.err(),
        Some(SubmitError::UnknownModel("nope".into()))
    );
    // The pool holds 64 * 4 = 256 positions (context 512).
    match e.submit(request(prompt(1, 300), 4)).await.err() {
        Some(SubmitError::Invalid {
            field: "prompt",
            message,
        }) => {
            assert!(
                message.contains("300") && message.contains("257"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    match e.submit(request(prompt(1, 100), 200)).await.err() {
        Some(SubmitError::Invalid {
            field: "max_tokens",
            message,
        }) => {
            assert!(
                message.contains("100") && message.contains("200"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        e.submit(request(Vec::new(), 4)).await.err(),
        Some(SubmitError::Invalid {
            field: "prompt",
            ..
        })
    ));
}

#[actix_rt::test]
async fn batch_requests_wait_behind_interactive_ones() {
    let (e, ctl) = start(Setup {
        max_num_seqs: 1,
        ..Setup::default()
    })
    .await;
    ctl.delay(2);
    let mut blocker = e.submit(request(prompt(0, 4), 20)).await.unwrap();
    assert!(matches!(
        blocker.events.recv().await,
        Some(Event::Token { .. })
    ));
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, prio) in [
        Priority::Batch,
        Priority::Batch,
        Priority::Interactive,
        Priority::Interactive,
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = request(prompt(i as u64 + 1, 4), 3);
        req.priority = prio;
        let h = e.submit(req).await.unwrap();
        let order = order.clone();
        tasks.push(actix_rt::spawn(async move {
            let o = collect(h).await;
            assert!(matches!(o.end, End::Done { .. }));
            order.lock().push(prio);
        }));
    }
    collect(blocker).await;
    for t in tasks {
        t.await.unwrap();
    }
    use Priority::*;
    assert_eq!(*order.lock(), vec![Interactive, Interactive, Batch, Batch]);
}

/// Submits `n` requests, returns (prompt, max_tokens, handle) for each.
async fn submit_many(e: &Engine, n: u64, max_tokens: usize) -> Vec<(Vec<u32>, RequestHandle)> {
    let mut out = Vec::new();
    for i in 0..n {
        let p = prompt(i + 10, 3 + i as usize * 3);
        out.push((p.clone(), e.submit(request(p, max_tokens)).await.unwrap()));
    }
    out
}

/// Faults the 3rd step: exactly that step's requests fail, the rest are exact.
async fn fault_test(fault: Fault, restarts: u64) {
    let (e, ctl) = start(Setup {
        max_num_seqs: 2,
        max_batched_tokens: 16,
        ..Setup::default()
    })
    .await;
    ctl.arm(3, fault);
    let reqs = submit_many(&e, 6, 8).await;
    let ids: Vec<u64> = reqs.iter().map(|(_, h)| h.id.0).collect();
    let mut failed = Vec::new();
    for (p, h) in reqs {
        let id = h.id.0;
        let o = collect(h).await;
        match o.end {
            End::Error(msg) => {
                assert!(msg.contains("injected"), "{msg}");
                failed.push(id);
            }
            _ => assert_exact(&o, &p, 8),
        }
    }
    let faulted: Vec<u64> = ctl.faulted.lock().concat().iter().map(|s| s.0).collect();
    assert!(!faulted.is_empty() && faulted.iter().all(|id| ids.contains(id)));
    failed.sort();
    let mut want = faulted.clone();
    want.sort();
    assert_eq!(failed, want, "exactly the faulted step's requests fail");
    assert!(
        failed.len() < ids.len(),
        "some requests were waiting: they complete"
    );
    assert_eq!(e.worker_restarts(), restarts);
    assert_eq!(ctl.factory_calls.load(Ordering::SeqCst), 1 + restarts);
    // Later requests succeed.
    let later = submit_many(&e, 3, 5).await;
    for (p, h) in later {
        assert_exact(&collect(h).await, &p, 5);
    }
    wait_stats(&e, idle).await;
}

#[actix_rt::test]
async fn a_step_error_fails_exactly_its_requests() {
    fault_test(Fault::Error, 0).await;
}

#[actix_rt::test]
async fn a_fatal_error_restarts_the_worker() {
    fault_test(Fault::Fatal, 1).await;
}

#[actix_rt::test]
async fn a_panic_in_step_restarts_the_worker() {
    fault_test(Fault::Panic, 1).await;
}

#[actix_rt::test]
async fn preemption_under_a_tiny_pool_keeps_exact_tokens() {
    let (e, _) = start(Setup {
        num_blocks: 10,
        max_num_seqs: 8,
        max_batched_tokens: 32,
        ..Setup::default()
    })
    .await;
    let reqs = submit_many(&e, 8, 16).await;
    for (p, h) in reqs {
        assert_exact(&collect(h).await, &p, 16);
    }
    let s = wait_stats(&e, idle).await;
    assert!(
        s.preemptions > 0,
        "the pool was too small to avoid preemption: {s:?}"
    );
}

#[actix_rt::test]
async fn two_replicas_share_the_load() {
    let (e, _) = start(Setup {
        devices: vec!["cpu:0".into(), "cpu:1".into()],
        max_num_seqs: 2,
        ..Setup::default()
    })
    .await;
    let reqs = submit_many(&e, 8, 6).await;
    for (p, h) in reqs {
        assert_exact(&collect(h).await, &p, 6);
    }
    let stats = e.stats().await;
    assert_eq!(stats.len(), 2);
    assert!(
        stats.iter().all(|s| s.steps > 0),
        "both replicas served: {stats:?}"
    );
}

/// Two models share one device: a fatal fault in one replica's step fails
/// only that step's requests; the other replica's running sequences lose
/// their KV with the worker and must recompute on the new one, exactly.
#[actix_rt::test]
async fn a_restart_is_survived_by_the_other_model_on_the_device() {
    for fault in [Fault::Fatal, Fault::Panic] {
        let (e, ctl) = start(Setup {
            models: vec!["a", "b"],
            max_num_seqs: 4,
            ..Setup::default()
        })
        .await;
        ctl.delay(1);
        ctl.arm(5, fault);
        let mut reqs = Vec::new();
        for i in 0..8u64 {
            let p = prompt(i + 20, 5 + i as usize);
            let mut req = request(p.clone(), 12);
            req.model = if i % 2 == 0 { "a".into() } else { "b".into() };
            reqs.push((p, e.submit(req).await.unwrap()));
        }
        let mut failed = Vec::new();
        for (p, h) in reqs {
            let id = h.id.0;
            let o = collect(h).await;
            match o.end {
                End::Error(_) => failed.push(id),
                _ => assert_exact(&o, &p, 12),
            }
        }
        let mut want: Vec<u64> = ctl.faulted.lock().concat().iter().map(|s| s.0).collect();
        want.sort();
        failed.sort();
        assert!(!want.is_empty());
        assert_eq!(
            failed, want,
            "{fault:?}: exactly the faulted step's requests fail"
        );
        assert_eq!(e.worker_restarts(), 1, "{fault:?}");
        for s in e.stats().await {
            assert!(s.steps > 0);
        }
    }
}
