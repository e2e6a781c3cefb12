//! Batch jobs end to end through actix-web's test service, with a fake
//! `LineExecutor` (no model): a 50-line job completes with 50 results, input
//! validation, the active-job limit, cancel, 429 retries, the process-wide
//! concurrency bound, and a crash/restart that resumes the job with every
//! custom_id recorded exactly once and finished lines never re-executed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_http::Request;
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{test, web, App};
use futures_util::future::BoxFuture;
use inferd::api::batches::{
    configure, BatchLine, BatchOptions, BatchService, LineExecutor, LineOutcome, RetryPolicy,
};
use serde_json::{json, Value};

/// A fake engine: echoes the custom_id, counts calls and lines in flight.
struct Fake {
    /// Tagged into each response body, to tell runs apart across a restart.
    run: u32,
    delay: Duration,
    /// Lines whose `n` is at least this never finish (a crash catches them running).
    hang_from: Option<u64>,
    calls: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Fake {
    fn new(run: u32, delay_ms: u64) -> Arc<Fake> {
        Arc::new(Fake {
            run,
            delay: Duration::from_millis(delay_ms),
            hang_from: None,
            calls: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn executor(self: &Arc<Self>) -> LineExecutor {
        let fake = self.clone();
        Arc::new(move |line: BatchLine| -> BoxFuture<'static, LineOutcome> {
            let fake = fake.clone();
            Box::pin(async move { fake.execute(line).await })
        })
    }

    async fn execute(&self, line: BatchLine) -> LineOutcome {
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(line.custom_id.clone());
            calls.iter().filter(|c| **c == line.custom_id).count()
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let n = line.body["n"].as_u64().unwrap();
        if self.hang_from.is_some_and(|h| n >= h) {
            futures_util::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if line.body["fail"] == json!(true) {
            let error =
                json!({"message": "bad line", "type": "invalid_request_error", "code": "bad"});
            return LineOutcome {
                status_code: 400,
                body: json!({ "error": error }),
            };
        }
        if line.body["busy_once"] == json!(true) && attempt == 1 {
            return LineOutcome {
                status_code: 429,
                body: json!({"error": {"message": "busy"}}),
            };
        }
        let body = json!({"echo": line.custom_id, "run": self.run, "url": line.url});
        LineOutcome {
            status_code: 200,
            body,
        }
    }

    fn calls_per_id(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.calls.lock().unwrap().iter() {
            *counts.entry(id.clone()).or_insert(0) += 1;
        }
        counts
    }
}

fn cid(n: usize) -> String {
    format!("req-{n}")
}

/// `n` lines in the short form; `extra(i)` adds fields to line i's body.
fn jsonl(n: usize, extra: impl Fn(usize) -> Value) -> String {
    let mut out = String::new();
    for i in 0..n {
        let mut body = json!({"n": i, "messages": [{"role": "user", "content": "hi"}]});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra(i)) {
            b.extend(e);
        }
        out.push_str(&json!({"custom_id": cid(i), "body": body}).to_string());
        out.push('\n');
    }
    out
}

fn options(concurrency: usize) -> BatchOptions {
    let mut options = BatchOptions::with_concurrency(concurrency);
    options.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    options
}

async fn call<S, B>(app: &S, req: test::TestRequest) -> (StatusCode, actix_web::web::Bytes)
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status();
    (status, test::read_body(resp).await)
}

async fn call_json<S, B>(app: &S, req: test::TestRequest) -> (StatusCode, Value)
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, body) = call(app, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn submit_req(body: String) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/v1/batches")
        .set_payload(body)
}

/// Polls the job until `done(job)` holds, failing after 20 s.
async fn wait_for<S, B>(app: &S, id: &str, done: impl Fn(&Value) -> bool) -> Value
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let start = Instant::now();
    loop {
        let (status, job) = call_json(
            app,
            test::TestRequest::get().uri(&format!("/v1/batches/{id}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job stuck: {job}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn results<S, B>(app: &S, id: &str) -> Vec<Value>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, body) = call(
        app,
        test::TestRequest::get().uri(&format!("/v1/batches/{id}/results")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts the results are lines 0..n in input order, each custom_id once.
fn assert_each_once(results: &[Value], n: usize) {
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..n).map(cid).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
}

macro_rules! app {
    ($service:expr) => {
        test::init_service(
            App::new()
                .app_data(web::Data::new($service))
                .configure(configure),
        )
        .await
    };
}

#[actix_web::test]
async fn fifty_line_job_completes_with_fifty_results() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 3);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(4)).unwrap();
    let app = app!(service);

    let body = jsonl(50, |i| {
        if i == 7 {
            json!({"fail": true})
        } else {
            json!({})
        }
    });
    let (status, job) = call_json(&app, submit_req(body)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["object"], "batch");
    assert_eq!(job["endpoint"], "/v1/chat/completions");
    assert_eq!(job["status"], "in_progress");
    assert_eq!(
        job["request_counts"],
        json!({"total": 50, "completed": 0, "failed": 0})
    );
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("batch_"));

    let job = wait_for(&app, &id, |j| j["status"] == "completed").await;
    assert_eq!(
        job["request_counts"],
        json!({"total": 50, "completed": 49, "failed": 1})
    );
    assert!(job["completed_at"].as_u64().is_some());

    let results = results(&app, &id).await;
    assert_each_once(&results, 50);
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert_eq!(r["response"]["status_code"], 400);
            assert_eq!(r["error"], json!({"code": "bad", "message": "bad line"}));
        } else {
            assert_eq!(r["response"]["status_code"], 200, "{r}");
            assert_eq!(r["response"]["body"]["echo"], id_str(i));
            assert!(r["response"]["request_id"].is_string());
            assert_eq!(r["error"], Value::Null);
        }
    }
    let calls = fake.calls_per_id();
    assert_eq!(calls.len(), 50);
    assert!(calls.values().all(|&c| c == 1), "{calls:?}");
    assert!(fake.max_in_flight.load(Ordering::SeqCst) <= 4);

    // A completed job cannot be cancelled.
    let (status, err) = call_json(
        &app,
        test::TestRequest::post().uri(&format!("/v1/batches/{id}/cancel")),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
}

fn id_str(i: usize) -> Value {
    Value::String(cid(i))
}

#[actix_web::test]
async fn full_form_lines_and_endpoint_query() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 0);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(2)).unwrap();
    let app = app!(service);
    let body = [
        r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"n":0}}"#,
        r#"{"custom_id":"b","body":{"n":1}}"#,
    ]
    .join("\n");
    let req = test::TestRequest::post()
        .uri("/v1/batches?endpoint=/v1/completions")
        .set_payload(body);
    let (status, job) = call_json(&app, req).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["endpoint"], "/v1/completions");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for(&app, &id, |j| j["status"] == "completed").await;
    let results = results(&app, &id).await;
    assert_eq!(
        results[0]["response"]["body"]["url"],
        "/v1/chat/completions"
    );
    assert_eq!(results[1]["response"]["body"]["url"], "/v1/completions");
}

#[actix_web::test]
async fn invalid_input_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 0);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(2)).unwrap();
    let app = app!(service);

    let mut bad_json = jsonl(2, |_| json!({}));
    bad_json.push_str("{\"custom_id\": \"x\", \"body\": {\n");
    let duplicate = format!("{}{}", jsonl(2, |_| json!({})), jsonl(1, |_| json!({})));
    let bad_url = r#"{"custom_id":"a","url":"/v1/embeddings","body":{}}"#.to_owned();
    let cases = [
        (bad_json, Some("line 3"), "invalid JSON"),
        (
            duplicate,
            Some("line 3"),
            "duplicate custom_id 'req-0' (first used on line 1)",
        ),
        (String::new(), None, "empty batch"),
        ("\n \n".to_owned(), None, "empty batch"),
        (bad_url, Some("line 1"), "unsupported url"),
        (
            r#"{"custom_id":"a"}"#.to_owned(),
            Some("line 1"),
            "missing body",
        ),
        (
            r#"{"body":{}}"#.to_owned(),
            Some("line 1"),
            "missing custom_id",
        ),
        (
            r#"["custom_id"]"#.to_owned(),
            Some("line 1"),
            "expected a JSON object",
        ),
    ];
    for (body, param, needle) in cases {
        let (status, err) = call_json(&app, submit_req(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(
            err["error"]["param"],
            param.map_or(Value::Null, |p| json!(p))
        );
        if let Some(p) = param {
            assert!(message.starts_with(p), "{message}");
        }
    }
    let req = test::TestRequest::post()
        .uri("/v1/batches?endpoint=/v1/embeddings")
        .set_payload(jsonl(1, |_| json!({})));
    assert_eq!(call(&app, req).await.0, StatusCode::BAD_REQUEST);

    for uri in ["/v1/batches/batch_nope", "/v1/batches/batch_nope/results"] {
        let (status, err) = call_json(&app, test::TestRequest::get().uri(uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
        assert_eq!(err["error"]["code"], "batch_not_found");
    }
    let cancel = test::TestRequest::post().uri("/v1/batches/batch_nope/cancel");
    assert_eq!(call(&app, cancel).await.0, StatusCode::NOT_FOUND);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[actix_web::test]
async fn too_many_lines_and_too_many_jobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake {
        hang_from: Some(0),
        ..Arc::into_inner(Fake::new(1, 0)).unwrap()
    });
    let mut opts = options(1);
    opts.max_active_jobs = 1;
    opts.max_lines = 5;
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), opts).unwrap();
    let app = app!(service);

    let (status, err) = call_json(&app, submit_req(jsonl(6, |_| json!({})))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 6: too many requests"),
        "{err}"
    );

    let (status, _) = call_json(&app, submit_req(jsonl(5, |_| json!({})))).await;
    assert_eq!(status, StatusCode::OK);
    let resp = test::call_service(&app, submit_req(jsonl(1, |_| json!({}))).to_request()).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let err: Value = serde_json::from_slice(&test::read_body(resp).await).unwrap();
    assert_eq!(err["error"]["type"], "rate_limit_error");
}

#[actix_web::test]
async fn cancel_stops_scheduling_and_running_lines_finish() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 20);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(2)).unwrap();
    let app = app!(service);
    let (_, job) = call_json(&app, submit_req(jsonl(50, |_| json!({})))).await;
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for(&app, &id, |j| {
        j["request_counts"]["completed"].as_u64().unwrap() >= 4
    })
    .await;

    let uri = format!("/v1/batches/{id}/cancel");
    let (status, job) = call_json(&app, test::TestRequest::post().uri(&uri)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelling");
    assert!(job["cancelling_at"].as_u64().is_some());

    let job = wait_for(&app, &id, |j| j["status"] == "cancelled").await;
    assert!(job["cancelled_at"].as_u64().is_some());
    let done = job["request_counts"]["completed"].as_u64().unwrap() as usize;
    assert!((4..50).contains(&done), "{job}");
    // Lines running at the cancel finished and were recorded; no new line started.
    let calls = fake.calls.lock().unwrap().len();
    assert_eq!(calls, done);
    let results = results(&app, &id).await;
    assert_eq!(results.len(), done);
    assert_each_once(&results, done);

    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        fake.calls.lock().unwrap().len(),
        done,
        "a line started after cancel"
    );
    let (status, job) = call_json(&app, test::TestRequest::post().uri(&uri)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "cancelled");
}

#[actix_web::test]
async fn busy_answers_are_retried_then_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 0);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(2)).unwrap();
    let app = app!(service);
    let body = jsonl(4, |i| {
        if i == 2 {
            json!({"busy_once": true})
        } else {
            json!({})
        }
    });
    let (_, job) = call_json(&app, submit_req(body)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_for(&app, &id, |j| j["status"] == "completed").await;
    assert_eq!(
        job["request_counts"],
        json!({"total": 4, "completed": 4, "failed": 0})
    );
    assert_eq!(fake.calls_per_id()[&cid(2)], 2);
    assert_each_once(&results(&app, &id).await, 4);
}

#[actix_web::test]
async fn concurrency_bound_holds_across_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(1, 5);
    let service =
        BatchService::open_with(dir.path().join("b.redb"), fake.executor(), options(3)).unwrap();
    let app = app!(service);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, job) = call_json(&app, submit_req(jsonl(20, |_| json!({})))).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        wait_for(&app, id, |j| j["status"] == "completed").await;
        assert_each_once(&results(&app, id).await, 20);
    }
    assert_eq!(fake.calls.lock().unwrap().len(), 60);
    assert_eq!(
        fake.max_in_flight.load(Ordering::SeqCst),
        3,
        "bound not reached or exceeded"
    );
}

/// Runs a service on its own runtime until 10 lines are recorded and lines
/// 10 and 11 are executing, then drops the runtime (a crash: tasks vanish
/// mid-flight, nothing shuts down cleanly). Returns the job id.
fn run_until_crash(path: std::path::PathBuf, fake: Arc<Fake>) -> String {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let id = runtime.block_on(async {
            let service = BatchService::open_with(&path, fake.executor(), options(2)).unwrap();
            let job = service
                .submit(jsonl(50, |_| json!({})), None)
                .await
                .unwrap();
            let start = Instant::now();
            loop {
                let now = service.get(&job.id).await.unwrap();
                if now.request_counts.completed == 10 && fake.calls.lock().unwrap().len() == 12 {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "first run stuck");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            job.id
        });
        drop(runtime);
        id
    })
    .join()
    .unwrap()
}

#[actix_web::test]
async fn restart_resumes_job_with_each_custom_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let first = Arc::new(Fake {
        hang_from: Some(10),
        ..Arc::into_inner(Fake::new(1, 1)).unwrap()
    });
    let id = run_until_crash(path.clone(), first.clone());

    let second = Fake::new(2, 2);
    let service = BatchService::open_with(&path, second.executor(), options(4)).unwrap();
    let app = app!(service);
    let job = wait_for(&app, &id, |j| j["status"] == "completed").await;
    assert_eq!(
        job["request_counts"],
        json!({"total": 50, "completed": 50, "failed": 0})
    );

    let results = results(&app, &id).await;
    assert_each_once(&results, 50);
    for (i, r) in results.iter().enumerate() {
        let run = if i < 10 { 1 } else { 2 };
        assert_eq!(r["response"]["body"]["run"], run, "line {i}: {r}");
    }
    // Run 1 executed lines 0..12 once; 10 and 11 were in flight at the crash.
    let before = first.calls_per_id();
    assert_eq!(before.len(), 12);
    assert!(
        (0..12).all(|i| before.get(&cid(i)) == Some(&1)),
        "{before:?}"
    );
    // Run 2 executed exactly the unrecorded lines 10..50, once each; 10 and 11
    // ran twice in all (at-least-once for lines running at a crash).
    let after = second.calls_per_id();
    assert_eq!(after.len(), 40, "{after:?}");
    assert!(
        (10..50).all(|i| after.get(&cid(i)) == Some(&1)),
        "{after:?}"
    );
}

#[actix_web::test]
async fn reopening_a_finished_store_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let id = {
        let fake = Fake::new(1, 0);
        let service = BatchService::open_with(&path, fake.executor(), options(2)).unwrap();
        let app = app!(service);
        let (_, job) = call_json(&app, submit_req(jsonl(5, |_| json!({})))).await;
        let id = job["id"].as_str().unwrap().to_owned();
        wait_for(&app, &id, |j| j["status"] == "completed").await;
        // Give the driver time to settle and release the database.
        tokio::time::sleep(Duration::from_millis(50)).await;
        id
    };
    let fake = Fake::new(2, 0);
    let service = BatchService::open_with(&path, fake.executor(), options(2)).unwrap();
    let app = app!(service);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let job = wait_for(&app, &id, |j| j["status"] == "completed").await;
    assert_eq!(job["request_counts"]["completed"], 5);
    assert!(fake.calls.lock().unwrap().is_empty());
    assert_each_once(&results(&app, &id).await, 5);
}
