//! The engine's acceptance tests, black-box through `Engine` with the real
//! executor (`TchExecutor`) and SmolLM2-135M in f32 on the CPU: continuous
//! batching gives each request the tokens it gets alone, prefix caching
//! prefills only the suffix without changing the output, preemption and
//! seeded sampling are invisible in the tokens, cancelled requests free their
//! KV blocks, and a failing worker is restarted with errors only for the
//! requests of the failed step.
//!
//! f32 so greedy comparisons mean something. Near ties: where the solo run's
//! top-2 logits differ by less than NEAR_TIE, batching may legitimately flip
//! the greedy pick, so the comparison stops there and says so. Margins come
//! from the engine itself (logprobs = 2: the top-2 logprob gap is the logit
//! gap).
//!
//! Each test starts its own engine inside its own actix System; a lock runs
//! them one at a time so the 2 CPU cores are not shared between them.

// Each test holds the SERIAL lock for its whole run, awaits included: it owns
// its thread and single-threaded runtime, so nothing else can wait on it there.
#![allow(clippy::await_holding_lock)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use inferd::exec::executor::{FaultInjector, TchExecutor};
use inferd::model::chat_template::ChatMessage;
use inferd::model::source;
use inferd::model::tokenizer::Tokenizer;
use inferd_actors::engine::{
    Engine, EngineConfig, ExecutorFactory, ModelDeployment, RequestHandle,
};
use inferd_actors::executor::{ModelSpec, Quantization};
use inferd_actors::request::{Event, Finish, GenerateRequest, ReplicaStats, Usage};
use inferd_actors::sampler::SamplingParams;
use inferd_actors::sequence::Priority;
use serde_json::Value;
use tokio::time::timeout;

const GGUF: &str = "weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL: &str = "smollm2";
const NEAR_TIE: f32 = 0.02;
/// Bytes of one f32 KV block of SmolLM2 (30 layers, 3 KV heads of 64, K and V, 16 positions).
const F32_BLOCK_BYTES: u64 = 2 * 30 * 16 * 3 * 64 * 4;
/// Longest wait for anything in these tests (2 busy cores are slow).
const PATIENCE: Duration = Duration::from_secs(120);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deployment(
    name: &str,
    kv_blocks: u64,
    prefix_caching: bool,
    max_num_seqs: usize,
) -> ModelDeployment {
    ModelDeployment {
        spec: ModelSpec {
            name: name.into(),
            version: "v1".into(),
            source: root().join(GGUF),
            dtype: "f32".into(),
            kv_budget_bytes: kv_blocks * F32_BLOCK_BYTES,
            block_size: 16,
            max_context: Some(2048),
            quantization: Quantization::None,
        },
        devices: vec!["cpu".into()],
        max_num_seqs,
        // Small enough that the concurrent prefills are chunked across steps.
        max_batched_tokens: 512,
        enable_prefix_caching: prefix_caching,
        max_queue_requests: 1024,
        max_queue_tokens: 1 << 20,
    }
}

async fn start(models: Vec<ModelDeployment>, faults: FaultInjector) -> Engine {
    let factory: ExecutorFactory<TchExecutor> =
        Arc::new(move |device: &str| Ok(TchExecutor::new(device)?.with_faults(faults.clone())));
    let engine = Engine::start(
        EngineConfig {
            devices: vec!["cpu".into()],
            models,
        },
        factory,
    );
    engine.wait_ready(PATIENCE).await.unwrap_or_else(|e| {
        panic!(
            "engine not ready: {e}; load errors: {:?}",
            engine.load_errors()
        )
    });
    engine
}

fn request(
    model: &str,
    prompt: &[u32],
    max_tokens: usize,
    sampling: SamplingParams,
) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        prompt: prompt.to_vec(),
        max_tokens,
        sampling,
        stop: vec![],
        stop_token_ids: vec![],
        ignore_eos: false,
        priority: Priority::Interactive,
        request_id: String::new(),
        deadline: None,
        use_cache: false,
    }
}

/// Greedy, reporting the top-2 logprobs so margins can be computed.
fn greedy() -> SamplingParams {
    SamplingParams {
        logprobs: Some(2),
        ..SamplingParams::default()
    }
}

/// What one request's stream carried.
#[derive(Debug, Clone, Default)]
struct Outcome {
    tokens: Vec<u32>,
    /// Top-2 logit gap at each step (when logprobs were asked for).
    margins: Vec<f32>,
    done: Option<(Finish, Usage, u64)>,
    error: Option<String>,
}

async fn collect(mut h: RequestHandle) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let ev = match timeout(PATIENCE, h.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return out,
            Err(_) => panic!(
                "request {:?} stalled after {} tokens",
                h.id,
                out.tokens.len()
            ),
        };
        match ev {
            Event::Token {
                token,
                top_logprobs,
                ..
            } => {
                out.tokens.push(token);
                if let [a, b, ..] = top_logprobs[..] {
                    out.margins.push(a.1 - b.1);
                }
            }
            Event::Done {
                finish,
                usage,
                seed,
                ..
            } => {
                out.done = Some((finish, usage, seed));
                return out;
            }
            Event::Error { message } => {
                out.error = Some(message);
                return out;
            }
        }
    }
}

async fn run(engine: &Engine, req: GenerateRequest) -> Outcome {
    let h = engine.submit(req).await.expect("submit");
    let out = collect(h).await;
    assert!(out.done.is_some(), "request failed: {:?}", out.error);
    out
}

async fn run_all(engine: &Engine, reqs: Vec<GenerateRequest>) -> Vec<Outcome> {
    let mut handles = Vec::new();
    for r in reqs {
        handles.push(engine.submit(r).await.expect("submit"));
    }
    let outs = join_all(handles.into_iter().map(collect)).await;
    for (i, o) in outs.iter().enumerate() {
        assert!(o.done.is_some(), "request {i} failed: {:?}", o.error);
    }
    outs
}

async fn stats(engine: &Engine, model: &str) -> ReplicaStats {
    let all = engine.stats().await;
    all.into_iter()
        .find(|s| s.model == model)
        .unwrap_or_else(|| panic!("no stats for {model}"))
}

/// `got` must equal the solo run `want` up to its first near tie; returns the
/// number of tokens compared.
fn assert_same_greedy(what: &str, got: &Outcome, want: &Outcome) -> usize {
    let n = want
        .margins
        .iter()
        .position(|&m| m < NEAR_TIE)
        .unwrap_or(want.tokens.len())
        .min(want.tokens.len());
    if n < want.tokens.len() {
        println!(
            "{what}: near tie at step {n} (margin {:.4}); comparing the first {n} tokens",
            want.margins[n]
        );
    }
    assert!(
        got.tokens.len() >= n,
        "{what}: stopped after {} tokens, alone it went on to {}",
        got.tokens.len(),
        want.tokens.len()
    );
    assert_eq!(
        &got.tokens[..n],
        &want.tokens[..n],
        "{what}: tokens differ from the solo run"
    );
    if n == want.tokens.len() {
        assert_eq!(
            got.tokens.len(),
            want.tokens.len(),
            "{what}: length differs from the solo run"
        );
    }
    n
}

fn tokenizer() -> Tokenizer {
    source::open(&root().join(GGUF))
        .expect("open SmolLM2 (run `make setup`)")
        .tokenizer
}

/// (prompt text, reference answer text, prompt ids) of the fixture cases.
fn fixtures() -> Vec<(String, String, Vec<u32>)> {
    let text = std::fs::read_to_string(root().join("weights/fixtures/smollm2/greedy.json"))
        .expect("greedy.json (run `make setup`)");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (
                c["prompt"].as_str().unwrap().to_string(),
                c["text"].as_str().unwrap().to_string(),
                ids,
            )
        })
        .collect()
}

fn chat(tok: &Tokenizer, msgs: &[(&str, &str)]) -> Vec<u32> {
    let msgs: Vec<ChatMessage> = msgs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect();
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    tok.encode(&text, false).unwrap()
}

/// 32 prompts of mixed lengths (about 8 to 150 tokens): the fixture prompts,
/// bare prompts without the template, two-turn chats, long system messages.
fn mixed_prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let fx = fixtures();
    let n = fx.len();
    (0..32)
        .map(|i| {
            let (q, _, ids) = &fx[i % n];
            let (q2, a2, _) = &fx[(i + 3) % n];
            match i / n {
                0 => ids.clone(),
                1 => tok.encode(q, true).unwrap(),
                2 => chat(tok, &[("user", q2), ("assistant", a2), ("user", q)]),
                _ => {
                    let system = format!(
                        "You are a careful assistant. Background notes: {a2} {a2} Answer briefly."
                    );
                    chat(tok, &[("system", &system), ("user", q)])
                }
            }
        })
        .collect()
}

#[actix_rt::test]
async fn concurrent_greedy_requests_match_each_alone() {
    let _serial = serial();
    let tok = tokenizer();
    let prompts = mixed_prompts(&tok);
    let lens: HashSet<usize> = prompts.iter().map(Vec::len).collect();
    assert!(lens.len() >= 10, "prompt lengths are not mixed: {lens:?}");
    let engine = start(vec![deployment(MODEL, 512, true, 64)], FaultInjector::new()).await;

    let t = Instant::now();
    let mut solo = Vec::new();
    for p in &prompts {
        solo.push(run(&engine, request(MODEL, p, 8, greedy())).await);
    }
    let solo_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let together = run_all(
        &engine,
        prompts
            .iter()
            .map(|p| request(MODEL, p, 8, greedy()))
            .collect(),
    )
    .await;
    let together_secs = t.elapsed().as_secs_f64();

    let mut compared = 0;
    for (i, (got, want)) in together.iter().zip(&solo).enumerate() {
        compared += assert_same_greedy(
            &format!("prompt {i} ({} tokens)", prompts[i].len()),
            got,
            want,
        );
    }
    println!(
        "32 concurrent requests (prompt lengths {}..{}): {compared} greedy tokens identical to solo runs; solo {solo_secs:.1}s, together {together_secs:.1}s",
        lens.iter().min().unwrap(),
        lens.iter().max().unwrap()
    );
    assert!(compared >= 32, "too few tokens compared: {compared}");
}

#[actix_rt::test]
async fn shared_prefix_prefills_only_the_suffix() {
    let _serial = serial();
    let tok = tokenizer();
    let fx = fixtures();
    let mut doc = String::new();
    for (q, a, _) in fx.iter().cycle().take(60) {
        doc.push_str(&format!("Q: {q}\nA: {a}\n"));
    }
    let mut prefix = tok.encode(&doc, true).unwrap();
    assert!(
        prefix.len() >= 512,
        "document too short: {} tokens",
        prefix.len()
    );
    prefix.truncate(512);
    let with = |suffix: &str| [prefix.clone(), tok.encode(suffix, false).unwrap()].concat();
    let first = with("\nQ: What is the capital of Italy?\nA:");
    let second = with("\nQ: Who painted the Mona Lisa?\nA:");

    let engine = start(
        vec![
            deployment(MODEL, 256, true, 16),
            deployment("smollm2-nocache", 256, false, 16),
        ],
        FaultInjector::new(),
    )
    .await;
    let a = run(&engine, request(MODEL, &first, 8, greedy())).await;
    assert!(
        a.done.unwrap().1.cached_tokens < 16,
        "nothing was cached before the first request"
    );
    let before = stats(&engine, MODEL).await;
    let t = Instant::now();
    let b = run(&engine, request(MODEL, &second, 8, greedy())).await;
    let cached_secs = t.elapsed().as_secs_f64();
    let after = stats(&engine, MODEL).await;
    let usage = b.done.unwrap().1;
    assert_eq!(usage.prompt_tokens, second.len());
    assert!(
        usage.cached_tokens >= 496,
        "only {} of the 512 shared tokens came from the cache",
        usage.cached_tokens
    );
    assert!(
        after.prefix_hit_tokens >= before.prefix_hit_tokens + 496,
        "prefix_hit_tokens {} -> {}",
        before.prefix_hit_tokens,
        after.prefix_hit_tokens
    );

    let t = Instant::now();
    let off = run(&engine, request("smollm2-nocache", &second, 8, greedy())).await;
    let uncached_secs = t.elapsed().as_secs_f64();
    assert_eq!(
        off.done.unwrap().1.cached_tokens,
        0,
        "prefix caching is off there"
    );
    let n = assert_same_greedy("prefix-cached request", &b, &off);
    println!(
        "shared 512-token prefix: cached_tokens {} of {}, prefix_hit_tokens {} -> {}, {n} tokens identical to caching off; {cached_secs:.2}s cached vs {uncached_secs:.2}s uncached",
        usage.cached_tokens, usage.prompt_tokens, before.prefix_hit_tokens, after.prefix_hit_tokens
    );
}

#[actix_rt::test]
async fn preempted_requests_give_the_same_tokens() {
    let _serial = serial();
    let fx = fixtures();
    // 12 blocks: one request (about 40 + 40 tokens, 6 blocks) fits alone,
    // four together do not, so running ones get preempted as they grow.
    let engine = start(vec![deployment(MODEL, 12, true, 8)], FaultInjector::new()).await;
    let reqs: Vec<GenerateRequest> = fx[..4]
        .iter()
        .map(|(_, _, ids)| GenerateRequest {
            ignore_eos: true,
            ..request(MODEL, ids, 40, greedy())
        })
        .collect();
    let mut solo = Vec::new();
    for r in &reqs {
        solo.push(run(&engine, r.clone()).await);
    }
    assert_eq!(
        stats(&engine, MODEL).await.preemptions,
        0,
        "a request alone fits the pool"
    );
    let together = run_all(&engine, reqs).await;
    let preemptions = stats(&engine, MODEL).await.preemptions;
    assert!(preemptions > 0, "the pool was meant to run out");
    let mut compared = 0;
    for (i, (got, want)) in together.iter().zip(&solo).enumerate() {
        assert_eq!(got.tokens.len(), 40);
        compared += assert_same_greedy(&format!("preempted request {i}"), got, want);
    }
    println!("{preemptions} preemptions; {compared} greedy tokens identical to solo runs");
}

#[actix_rt::test]
async fn seeded_sampling_is_the_same_alone_and_under_load() {
    let _serial = serial();
    let tok = tokenizer();
    let prompts = mixed_prompts(&tok);
    let engine = start(vec![deployment(MODEL, 512, true, 64)], FaultInjector::new()).await;
    let seeded = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        seed: Some(1234),
        ..SamplingParams::default()
    };
    let target = GenerateRequest {
        ignore_eos: true,
        ..request(MODEL, &prompts[1], 16, seeded)
    };
    let alone = run(&engine, target.clone()).await;
    assert_eq!(alone.done.unwrap().2, 1234, "the seed is reported back");

    // 16 others (greedy and unseeded sampling, mixed lengths), the seeded
    // one submitted in the middle of them.
    let mut reqs: Vec<GenerateRequest> = (0..16)
        .map(|i| {
            let sampling = if i % 2 == 0 {
                SamplingParams::default()
            } else {
                SamplingParams {
                    temperature: 1.0,
                    ..SamplingParams::default()
                }
            };
            GenerateRequest {
                ignore_eos: true,
                ..request(
                    MODEL,
                    &prompts[(i * 2 + 5) % prompts.len()],
                    12 + i % 8,
                    sampling,
                )
            }
        })
        .collect();
    reqs.insert(8, target);
    let outs = run_all(&engine, reqs).await;
    assert_eq!(
        outs[8].tokens, alone.tokens,
        "seeded sampling changed under load"
    );
    println!(
        "seeded sampling: {} tokens identical alone and among 16 others",
        alone.tokens.len()
    );
}

#[actix_rt::test]
async fn cancelled_requests_free_their_blocks() {
    let _serial = serial();
    let fx = fixtures();
    let engine = start(vec![deployment(MODEL, 256, true, 32)], FaultInjector::new()).await;
    let idle = stats(&engine, MODEL).await;
    assert_eq!(
        (idle.running, idle.waiting, idle.free_blocks),
        (0, 0, idle.num_blocks)
    );

    let mut handles = Vec::new();
    for i in 0..100 {
        let (_, _, ids) = &fx[i % fx.len()];
        let req = GenerateRequest {
            ignore_eos: true,
            ..request(MODEL, ids, 1000, SamplingParams::default())
        };
        handles.push(engine.submit(req).await.expect("submit"));
    }
    // In flight: the first request is decoding, most others wait.
    match timeout(PATIENCE, handles[0].events.recv()).await {
        Ok(Some(Event::Token { .. })) => {}
        other => panic!("expected a first token, got {other:?}"),
    }
    let busy = stats(&engine, MODEL).await;
    assert!(
        busy.running > 0 && busy.free_blocks < busy.num_blocks,
        "nothing in flight: {busy:?}"
    );

    // Half cancelled explicitly, half by dropping the receiver.
    let kept: Vec<RequestHandle> = handles.drain(..50).collect();
    for h in &kept {
        engine.cancel(h.id);
    }
    drop(handles);
    let drain = async {
        for mut h in kept {
            loop {
                match h.events.recv().await {
                    Some(Event::Token { .. }) => continue,
                    Some(Event::Done { .. }) => panic!("a cancelled request finished"),
                    Some(Event::Error { .. }) | None => break,
                }
            }
        }
    };
    timeout(Duration::from_secs(30), drain)
        .await
        .expect("the cancelled streams must end");

    let t = Instant::now();
    let end = loop {
        let s = stats(&engine, MODEL).await;
        if (s.running, s.waiting, s.free_blocks) == (0, 0, s.num_blocks)
            || t.elapsed() > Duration::from_secs(20)
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (end.running, end.waiting, end.free_blocks, end.num_blocks),
        (0, 0, idle.free_blocks, idle.num_blocks),
        "KV not back to idle: {end:?}"
    );
    println!("after cancelling 100 in-flight requests ({} running, {} free of {} blocks while busy): idle again in {:.2}s", busy.running, busy.free_blocks, busy.num_blocks, t.elapsed().as_secs_f64());
}

#[actix_rt::test]
async fn a_failed_worker_is_restarted_and_only_its_step_fails() {
    let _serial = serial();
    let fx = fixtures();
    let faults = FaultInjector::new();
    // At most 4 running: 4 long requests decode while 2 short ones wait.
    let engine = start(vec![deployment(MODEL, 256, true, 4)], faults.clone()).await;
    let probe = request(MODEL, &fx[0].2, 8, greedy());
    let before = run(&engine, probe.clone()).await;

    let mut long = Vec::new();
    for (_, _, ids) in &fx[1..5] {
        let req = GenerateRequest {
            ignore_eos: true,
            ..request(MODEL, ids, 400, SamplingParams::default())
        };
        let mut h = engine.submit(req).await.expect("submit");
        let first = timeout(PATIENCE, h.events.recv())
            .await
            .expect("first token");
        assert!(matches!(first, Some(Event::Token { .. })), "{first:?}");
        long.push(h);
    }
    let mut short = Vec::new();
    for (_, _, ids) in &fx[5..7] {
        short.push(
            engine
                .submit(request(MODEL, ids, 8, SamplingParams::default()))
                .await
                .expect("submit"),
        );
    }
    let t = Instant::now();
    let s = loop {
        let s = stats(&engine, MODEL).await;
        if (s.running, s.waiting) == (4, 2) || t.elapsed() > Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((s.running, s.waiting), (4, 2), "{s:?}");

    faults.fail_next_step(true);
    let long_outs = join_all(long.into_iter().map(collect)).await;
    for (i, o) in long_outs.iter().enumerate() {
        assert!(
            o.error.is_some() && o.done.is_none(),
            "long request {i} was in the failed step but got {o:?}"
        );
    }
    assert_eq!((faults.fired(), faults.last_fault_seqs()), (1, 4));
    let short_outs = join_all(short.into_iter().map(collect)).await;
    for (i, o) in short_outs.iter().enumerate() {
        assert!(
            o.done.is_some(),
            "waiting request {i} was not in the failed step but got {:?}",
            o.error
        );
    }
    assert_eq!(engine.worker_restarts(), 1);
    let after = run(&engine, probe).await;
    assert_same_greedy("request after the restart", &after, &before);
    println!("fatal step error: {} requests errored, {} waiting ones served after the restart, restarts = {}", long_outs.len(), short_outs.len(), engine.worker_restarts());
}
