//! Model management through the `Engine` handle, against the fake executor
//! with `versioned` set: each version generates different tokens, so every
//! response is checked to be wholly one version's (tokens, handle and
//! `Done.version` agree). Memory release is read from the fake's live
//! replica / byte counters.

mod fake;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake::{reference_v, Control, FakeExec, KV_BYTES_PER_BLOCK, WEIGHT_BYTES};
use inferd_actors::executor::{ModelSpec, Quantization};
use inferd_actors::request::{Event, GenerateRequest, SubmitError};
use inferd_actors::sampler::SamplingParams;
use inferd_actors::{
    Engine, EngineConfig, ExecutorFactory, ManageError, ModelDeployment, ModelStatus, Priority,
    RequestHandle, RouteHints, RoutingSnapshot, VersionState,
};
use parking_lot::Mutex;

const M: &str = "m";
const BS: usize = 4;
const BLOCKS: u64 = 512;
/// What one loaded replica of the fake holds.
const REPLICA_BYTES: u64 = WEIGHT_BYTES + BLOCKS * KV_BYTES_PER_BLOCK;
const PATIENCE: Duration = Duration::from_secs(20);

fn dep(model: &str, version: &str) -> ModelDeployment {
    ModelDeployment {
        spec: ModelSpec {
            name: model.into(),
            version: version.into(),
            source: PathBuf::from(format!("/models/{model}/{version}")),
            dtype: "bf16".into(),
            kv_budget_bytes: BLOCKS,
            block_size: BS,
            max_context: Some(256),
            quantization: Quantization::None,
        },
        devices: vec!["cpu".into()],
        max_num_seqs: 16,
        max_batched_tokens: 64,
        enable_prefix_caching: true,
        max_queue_requests: 1000,
        max_queue_tokens: 100_000,
    }
}

fn control() -> Arc<Control> {
    let ctl = Arc::new(Control::default());
    ctl.versioned.store(true, Ordering::SeqCst);
    ctl
}

/// Starts without waiting for the loads.
fn start(ctl: &Arc<Control>, models: Vec<ModelDeployment>) -> Engine {
    let c = ctl.clone();
    let factory: ExecutorFactory<FakeExec> = Arc::new(move |_: &str| Ok(FakeExec::new(c.clone())));
    Engine::start(
        EngineConfig {
            devices: vec!["cpu".into()],
            models,
        },
        factory,
    )
}

async fn started(ctl: &Arc<Control>, models: Vec<ModelDeployment>) -> Engine {
    let e = start(ctl, models);
    e.wait_ready(PATIENCE).await.expect("loads");
    e
}

fn prompt(seed: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((seed * 7919 + i * 104_729) % 9) as u32 * 10 + 5)
        .collect()
}

fn request(model: &str, prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
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

/// Reads a stream to its end; Ok(version) if it was served wholly by the
/// version its handle names: exactly that version's tokens, and `Done`
/// naming the same version.
async fn served(mut h: RequestHandle, prompt: &[u32], max_tokens: usize) -> Result<String, String> {
    let mut tokens = Vec::new();
    loop {
        let ev = tokio::time::timeout(PATIENCE, h.events.recv())
            .await
            .map_err(|_| "no event within patience".to_string())?;
        match ev {
            Some(Event::Token { token, .. }) => tokens.push(token),
            Some(Event::Done { version, model, .. }) => {
                if version != h.version || model != h.model {
                    return Err(format!("handle says {}, Done says {version}", h.version));
                }
                if tokens != reference_v(&version, prompt, max_tokens) {
                    return Err(format!("tokens are not wholly {version}'s"));
                }
                return Ok(version);
            }
            Some(Event::Error { message }) => return Err(message),
            None => return Err("stream closed without Done".into()),
        }
    }
}

async fn generate(e: &Engine, hints: RouteHints, seed: u64) -> Result<String, String> {
    let p = prompt(seed, 5);
    let h = e
        .submit_with(request(M, p.clone(), 3), hints)
        .await
        .map_err(|e| e.to_string())?;
    served(h, &p, 3).await
}

fn status(e: &Engine, model: &str) -> ModelStatus {
    e.deployments()
        .into_iter()
        .find(|m| m.model == model)
        .expect("model listed")
}

fn state(e: &Engine, model: &str, version: &str) -> Option<VersionState> {
    status(e, model).version(version).map(|v| v.state.clone())
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pin(version: &str) -> RouteHints {
    RouteHints {
        session_id: None,
        version: Some(version.into()),
    }
}

fn session(s: &str) -> RouteHints {
    RouteHints {
        session_id: Some(s.into()),
        version: None,
    }
}

/// One served response as the load clients saw it.
struct Seen {
    version: String,
    /// The phase when the request was submitted and when it was admitted
    /// (equal: it was routed wholly within that phase).
    phase: (u64, u64),
}

#[actix_rt::test]
async fn swap_and_rollback_under_continuous_load() {
    let ctl = control();
    ctl.delay(1);
    let e = started(&ctl, vec![dep(M, "v1")]).await;
    assert_eq!(ctl.live(), (1, REPLICA_BYTES));
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (e, stop, phase) = (e.clone(), stop.clone(), phase.clone());
        let (seen, failures) = (seen.clone(), failures.clone());
        clients.push(actix_rt::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let p = prompt(c * 1000 + i, 3 + (i as usize % 7));
                let before = phase.load(Ordering::SeqCst);
                let h = e.submit(request(M, p.clone(), 8)).await;
                let after = phase.load(Ordering::SeqCst);
                match h {
                    Ok(h) => match served(h, &p, 8).await {
                        Ok(version) => seen.lock().push(Seen {
                            version,
                            phase: (before, after),
                        }),
                        Err(why) => failures.lock().push(why),
                    },
                    Err(why) => failures.lock().push(why.to_string()),
                }
            }
        }));
    }
    let count = |v: &str| seen.lock().iter().filter(|s| s.version == v).count();
    wait_for("v1 serves", || count("v1") >= 50).await;

    // v2 loads and warms beside v1, which keeps serving.
    e.load_version(dep(M, "v2")).await.expect("v2 loads");
    assert_eq!(state(&e, M, "v2"), Some(VersionState::Ready));
    assert_eq!(status(&e, M).active.as_deref(), Some("v1"));
    assert_eq!(ctl.live(), (2, 2 * REPLICA_BYTES));
    assert_eq!(
        status(&e, M).version("v2").unwrap().memory_bytes(),
        REPLICA_BYTES
    );

    e.activate(M, "v2", true).await.expect("activate v2");
    phase.store(1, Ordering::SeqCst);
    wait_for("v2 serves", || count("v2") >= 50).await;
    assert_eq!(state(&e, M, "v1"), Some(VersionState::Ready), "kept warm");
    assert!(status(&e, M).version("v1").unwrap().is_previous);

    e.rollback(M, false).await.expect("roll back to v1");
    phase.store(2, Ordering::SeqCst);
    // v2 drains (its running requests finish on it), then is unloaded.
    wait_for("v2 unloaded", || {
        state(&e, M, "v2") == Some(VersionState::Unloaded) && ctl.live() == (1, REPLICA_BYTES)
    })
    .await;
    let v2 = status(&e, M).version("v2").cloned().unwrap();
    assert!(v2.replicas.is_empty() && v2.memory_bytes() == 0, "{v2:?}");
    let v1_now = count("v1");
    wait_for("v1 serves again", || count("v1") >= v1_now + 50).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    assert_eq!(
        *failures.lock(),
        Vec::<String>::new(),
        "zero failed requests"
    );
    let seen = seen.lock();
    for s in seen.iter() {
        let want = match s.phase {
            (0, 0) | (2, 2) => "v1",
            (1, 1) => "v2",
            _ => continue, // submitted across a switch: either is right
        };
        assert_eq!(s.version, want, "phase {:?}", s.phase);
    }
    assert!(seen.iter().any(|s| s.phase == (1, 1)) && seen.iter().any(|s| s.phase == (2, 2)));
    assert_eq!(status(&e, M).active.as_deref(), Some("v1"));
    assert!(e.is_ready() && e.model_ready(M));
}

#[actix_rt::test]
async fn canary_splits_by_weight_and_sessions_stick() {
    let ctl = control();
    // Both versions from the configuration: the first listed is active.
    let e = started(&ctl, vec![dep(M, "v1"), dep(M, "v2")]).await;
    let s = status(&e, M);
    assert_eq!(s.active.as_deref(), Some("v1"));
    assert_eq!(
        s.version("v2").map(|v| (&v.state, v.is_active)),
        Some((&VersionState::Ready, false))
    );
    assert_eq!(ctl.live(), (2, 2 * REPLICA_BYTES));
    for i in 0..20 {
        assert_eq!(
            generate(&e, RouteHints::default(), i).await.unwrap(),
            "v1",
            "standby gets no traffic"
        );
    }

    e.set_canary(M, "v2", 20).unwrap();
    assert_eq!(status(&e, M).version("v2").unwrap().canary_weight, Some(20));
    let share = |versions: &[String]| {
        versions.iter().filter(|v| *v == "v2").count() as f64 / versions.len() as f64
    };
    // 500 requests without a session, then 500 sessions.
    let mut plain = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..500u64 {
        plain.push(generate(&e, RouteHints::default(), i).await.unwrap());
        sessions.push(
            generate(&e, session(&format!("user-{i}")), i)
                .await
                .unwrap(),
        );
    }
    for (what, v) in [("plain", &plain), ("sessions", &sessions)] {
        let s = share(v);
        assert!((0.15..=0.25).contains(&s), "{what}: canary share {s}");
    }
    // Sticky: a session keeps its version, whatever else happens.
    for i in 0..50u64 {
        let id = format!("user-{i}");
        for round in 0..4 {
            let v = generate(&e, session(&id), round).await.unwrap();
            assert_eq!(v, sessions[i as usize], "session {id} moved");
        }
    }
    let sticky: Vec<String> = sessions[..50].to_vec();
    assert!(sticky.iter().any(|v| v == "v1") && sticky.iter().any(|v| v == "v2"));

    e.clear_canary(M).unwrap();
    for i in 0..20 {
        assert_eq!(generate(&e, RouteHints::default(), i).await.unwrap(), "v1");
    }
    assert_eq!(
        e.set_canary(M, "v2", 101),
        Err(ManageError::InvalidWeight(101))
    );
    assert!(matches!(
        e.set_canary(M, "v1", 5),
        Err(ManageError::IsActive { .. })
    ));
}

#[actix_rt::test]
async fn a_failed_load_leaves_the_active_version_serving() {
    let ctl = control();
    let e = started(&ctl, vec![dep(M, "v1")]).await;
    let bad = dep(M, "v2");
    ctl.fail_source(&bad.spec.source);
    let err = e.load_version(bad).await.unwrap_err();
    match &err {
        ManageError::LoadFailed {
            model,
            version,
            reason,
        } => {
            assert_eq!((model.as_str(), version.as_str()), (M, "v2"));
            assert!(reason.contains("injected load failure"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("`m` version `v2`"), "{err}");
    match state(&e, M, "v2") {
        Some(VersionState::Failed(why)) => assert!(why.contains("injected"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(status(&e, M).version("v2").unwrap().replicas.is_empty());
    assert_eq!(ctl.live(), (1, REPLICA_BYTES), "nothing of v2 stays loaded");
    assert!(e.is_ready() && e.model_ready(M) && e.load_errors().is_empty());
    assert_eq!(generate(&e, RouteHints::default(), 1).await.unwrap(), "v1");
    assert!(matches!(
        e.activate(M, "v2", false).await,
        Err(ManageError::NotReady { .. })
    ));
    assert!(matches!(
        e.submit_with(request(M, prompt(1, 4), 2), pin("v2"))
            .await
            .err(),
        Some(SubmitError::Invalid {
            field: "version",
            ..
        })
    ));

    // Fixed source: the failed record is replaced.
    let mut good = dep(M, "v2");
    good.spec.source = PathBuf::from("/models/m/v2-fixed");
    e.load_version(good).await.expect("loads now");
    assert_eq!(state(&e, M, "v2"), Some(VersionState::Ready));
    assert_eq!(generate(&e, pin("v2"), 2).await.unwrap(), "v2");

    // A version that is loaded already is refused.
    assert!(matches!(
        e.load_version(dep(M, "v2")).await,
        Err(ManageError::AlreadyLoaded { .. })
    ));
}

#[actix_rt::test]
async fn readiness_is_false_while_loading_and_true_after() {
    let ctl = control();
    ctl.load_delay_ms.store(200, Ordering::SeqCst);
    let e = start(&ctl, vec![dep(M, "v1")]);
    assert!(!e.is_ready() && !e.model_ready(M));
    assert_eq!(state(&e, M, "v1"), Some(VersionState::Loading));
    assert_eq!(
        e.submit(request(M, prompt(1, 4), 2)).await.err(),
        Some(SubmitError::NotReady(M.into()))
    );
    e.wait_ready(PATIENCE).await.unwrap();
    assert!(e.is_ready() && e.model_ready(M));

    // A model added at run time: not ready until loaded and warm; the
    // engine stays ready meanwhile.
    let load = {
        let e = e.clone();
        actix_rt::spawn(async move { e.load_version(dep("n", "v1")).await })
    };
    wait_for("n listed", || e.models().contains(&"n".to_string())).await;
    assert!(!e.model_ready("n"));
    assert!(
        e.is_ready(),
        "a model not active yet does not hold readiness"
    );
    load.await.unwrap().unwrap();
    assert!(e.model_ready("n") && e.is_ready());
    assert_eq!(status(&e, "n").active.as_deref(), Some("v1"));

    // A second version loading beside the active one: the model stays ready.
    let load = {
        let e = e.clone();
        actix_rt::spawn(async move { e.load_version(dep(M, "v2")).await })
    };
    wait_for("v2 loading", || {
        state(&e, M, "v2") == Some(VersionState::Loading)
    })
    .await;
    assert!(e.model_ready(M) && e.is_ready());
    load.await.unwrap().unwrap();
    assert_eq!(state(&e, M, "v2"), Some(VersionState::Ready));
}

#[actix_rt::test]
async fn rollback_unload_and_pinning_rules() {
    let ctl = control();
    let e = started(&ctl, vec![dep(M, "v1"), dep(M, "v2")]).await;
    assert!(matches!(
        e.unload(M, "v1").await,
        Err(ManageError::IsActive { .. })
    ));
    assert_eq!(
        e.rollback(M, true).await,
        Err(ManageError::NoPrevious(M.into()))
    );
    assert_eq!(
        generate(&e, pin("v2"), 1).await.unwrap(),
        "v2",
        "pinned standby"
    );
    match e
        .submit_with(request(M, prompt(1, 4), 2), pin("v9"))
        .await
        .err()
    {
        Some(SubmitError::Invalid {
            field: "version",
            message,
        }) => {
            assert!(message.contains("v9"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    // Activate without keeping v1 warm: it drains and is unloaded.
    e.activate(M, "v2", false).await.unwrap();
    wait_for("v1 unloaded", || {
        state(&e, M, "v1") == Some(VersionState::Unloaded)
    })
    .await;
    wait_for("v1 memory released", || ctl.live() == (1, REPLICA_BYTES)).await;
    let err = e.rollback(M, false).await.unwrap_err();
    assert_eq!(
        err,
        ManageError::PreviousUnloaded {
            model: M.into(),
            version: "v1".into()
        }
    );
    assert!(err.to_string().contains("unloaded"), "{err}");
    assert!(matches!(
        e.submit_with(request(M, prompt(1, 4), 2), pin("v1"))
            .await
            .err(),
        Some(SubmitError::Invalid {
            field: "version",
            ..
        })
    ));

    // A canary cannot be unloaded; a standby can, and its memory goes.
    e.load_version(dep(M, "v3")).await.unwrap();
    e.set_canary(M, "v3", 50).unwrap();
    assert!(matches!(
        e.unload(M, "v3").await,
        Err(ManageError::IsCanary { .. })
    ));
    e.clear_canary(M).unwrap();
    assert_eq!(ctl.live(), (2, 2 * REPLICA_BYTES));
    e.unload(M, "v3").await.unwrap();
    assert_eq!(state(&e, M, "v3"), Some(VersionState::Unloaded));
    assert_eq!(
        ctl.live(),
        (1, REPLICA_BYTES),
        "released when unload returns"
    );
    // Unloading an unloaded version forgets it.
    e.unload(M, "v1").await.unwrap();
    assert_eq!(state(&e, M, "v1"), None);
    assert_eq!(generate(&e, RouteHints::default(), 3).await.unwrap(), "v2");
    assert!(matches!(
        e.unload(M, "v9").await,
        Err(ManageError::UnknownVersion { .. })
    ));
}

#[actix_rt::test]
async fn removing_a_model_lets_running_requests_finish_then_frees_it() {
    let ctl = control();
    ctl.delay(2);
    let e = started(&ctl, vec![dep("a", "v1"), dep("b", "v1")]).await;
    assert_eq!(ctl.live(), (2, 2 * REPLICA_BYTES));
    let p = prompt(7, 6);
    let mut h = e.submit(request("a", p.clone(), 40)).await.unwrap();
    let first = h.events.recv().await;
    assert!(matches!(first, Some(Event::Token { .. })));
    let remove = {
        let e = e.clone();
        actix_rt::spawn(async move { e.remove_model("a").await })
    };
    wait_for("a refused", || {
        e.deployments().iter().any(|m| m.model == "a" && !m.ready)
    })
    .await;
    assert_eq!(
        e.submit(request("a", prompt(1, 4), 2)).await.err(),
        Some(SubmitError::UnknownModel("a".into()))
    );
    // The running request finishes on its version.
    let mut n = 1;
    loop {
        match h.events.recv().await {
            Some(Event::Token { .. }) => n += 1,
            Some(Event::Done { version, .. }) => {
                assert_eq!((n, version.as_str()), (40, "v1"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    remove.await.unwrap().unwrap();
    assert_eq!(e.models(), vec!["b".to_string()]);
    assert_eq!(ctl.live(), (1, REPLICA_BYTES));
    assert!(e.is_ready() && !e.model_ready("a"));
    assert_eq!(
        e.remove_model("a").await,
        Err(ManageError::UnknownModel("a".into()))
    );
}

#[actix_rt::test]
async fn snapshot_and_restore_round_trip() {
    let config = || vec![dep(M, "v1"), dep(M, "v2"), dep(M, "v3"), dep("other", "v1")];
    let e = started(&control(), config()).await;
    e.activate(M, "v2", true).await.unwrap();
    e.set_canary(M, "v3", 25).unwrap();
    let snap = e.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: RoutingSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    // A restart: the configuration alone makes v1 active; the snapshot
    // brings back v2 and the canary.
    let fresh = started(&control(), config()).await;
    assert_eq!(status(&fresh, M).active.as_deref(), Some("v1"));
    fresh.restore(&back).await.unwrap();
    assert_eq!(fresh.snapshot(), snap);
    let s = status(&fresh, M);
    assert_eq!(s.active.as_deref(), Some("v2"));
    assert_eq!(s.version("v3").unwrap().canary_weight, Some(25));
    assert_eq!(
        s.version("v1").unwrap().state,
        VersionState::Ready,
        "kept warm"
    );

    // Entries that no longer exist are skipped and reported; the rest applies.
    let mut partial = snap.clone();
    partial.models[0].active = Some("v1".into());
    partial.models[0].canary = None;
    partial.models.push(inferd_actors::ModelRouting {
        model: "gone".into(),
        active: Some("v1".into()),
        canary: None,
    });
    partial.models[1].active = Some("v7".into());
    match fresh.restore(&partial).await {
        Err(ManageError::PartialRestore(skipped)) => {
            assert_eq!(skipped.len(), 2, "{skipped:?}");
            assert!(skipped.iter().any(|s| s.contains("gone")));
            assert!(skipped.iter().any(|s| s.contains("v7")));
        }
        other => panic!("{other:?}"),
    }
    let s = status(&fresh, M);
    assert_eq!((s.active.as_deref(), s.canary.clone()), (Some("v1"), None));
}

#[actix_rt::test]
async fn a_registered_version_is_listed_unloaded_and_loads_from_its_record() {
    let e = started(&control(), vec![dep(M, "v1")]).await;
    assert_eq!(e.register_version(&dep(M, "v2")), Ok(true));
    assert_eq!(e.register_version(&dep(M, "v2")), Ok(false));
    assert!(matches!(
        e.register_version(&dep("nope", "v1")),
        Err(ManageError::UnknownModel(_))
    ));
    let s = status(&e, M);
    let v2 = s.version("v2").expect("listed");
    assert_eq!((v2.state.clone(), v2.memory_bytes()), (VersionState::Unloaded, 0));
    assert!(e.is_ready(), "an unloaded standby does not hold readiness");
    assert!(matches!(
        e.activate(M, "v2", false).await,
        Err(ManageError::NotReady { .. })
    ));
    let rec = e.version_deployment(M, "v2").expect("its record");
    assert_eq!(rec.spec.source, PathBuf::from("/models/m/v2"));
    e.load_version(rec).await.unwrap();
    e.activate(M, "v2", false).await.unwrap();
    assert_eq!(generate(&e, RouteHints::default(), 1).await.unwrap(), "v2");
    // v1 drains and is unloaded; its record stays for a reload.
    wait_for("v1 unloaded", || state(&e, M, "v1") == Some(VersionState::Unloaded)).await;
    let again = e.version_deployment(M, "v1").expect("kept");
    e.load_version(again).await.unwrap();
    e.rollback(M, false).await.unwrap();
    assert_eq!(generate(&e, RouteHints::default(), 2).await.unwrap(), "v1");
}
