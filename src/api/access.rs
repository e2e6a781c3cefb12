//! The access middleware: API-key check (401 / 403 / 429 with Retry-After,
//! decided by [`KeyStore::check`]), then the request runs with a fresh
//! [`Ledger`] in scope, and when its response body has been sent (or the
//! client went away) the key's tokens are charged, its concurrency slot is
//! given back and one audit line is written. Streams hold the slot for their
//! whole length, as they hold the engine's capacity.
//!
//! It also counts requests in and out for graceful shutdown ([`Drain`]:
//! while draining, everything but the open routes gets 503) and writes one
//! `tracing` line per request (request id, key id, route, status, model,
//! version, token counts, latency; never prompt or output text). The open
//! routes (probes, metrics, console files) pass straight through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, Data};
use actix_web::{Error, HttpMessage, HttpResponse};
use serde_json::json;

use super::audit::{AuditLog, Ledger, Record, Served, LEDGER};
use super::auth::{need_of, Denied, KeyStore, Need, Permit};
use super::drain::{Drain, Running};
use super::request_id::RequestId;

/// What the middleware needs, registered as app data.
pub struct Access {
    pub keys: KeyStore,
    pub audit: Option<AuditLog>,
    pub drain: Arc<Drain>,
}

/// Seconds a client is told to wait before retrying a draining server (the
/// load balancer should have moved it to another replica by then).
const DRAIN_RETRY_AFTER_SECS: u64 = 5;

fn draining_response() -> HttpResponse {
    HttpResponse::ServiceUnavailable().insert_header(("retry-after", DRAIN_RETRY_AFTER_SECS.to_string())).json(json!({
        "error": {"message": "the server is shutting down", "type": "server_error", "param": null, "code": "unavailable"},
        "status": 503
    }))
}

/// The key a request presents: `Authorization: Bearer <key>`, `x-api-key`,
/// or, on a WebSocket upgrade from a browser (which cannot set headers
/// there), a `bearer.<key>` entry in `Sec-WebSocket-Protocol`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let x = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    let ws = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find_map(|p| p.strip_prefix(WS_KEY_PREFIX)));
    bearer.or(x).or(ws).filter(|k| !k.is_empty()).map(str::to_string)
}

/// The WebSocket subprotocol entry that carries a key (`bearer.<key>`).
pub const WS_KEY_PREFIX: &str = "bearer.";

fn denied_response(d: &Denied) -> HttpResponse {
    let body = |status: u16, message: String, kind: &str, code: &str| {
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}, "status": status})
    };
    match d {
        Denied::Unauthenticated(why) => HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Bearer"))
            .json(body(401, why.to_string(), "authentication_error", "invalid_api_key")),
        Denied::Forbidden { key_id, scope } => HttpResponse::Forbidden().json(body(
            403,
            format!("API key `{key_id}` lacks the `{scope}` scope this route needs"),
            "permission_error",
            "insufficient_scope",
        )),
        Denied::Limited { key_id, limit, retry_after } => {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            HttpResponse::TooManyRequests().insert_header(("retry-after", secs.to_string())).json(body(
                429,
                format!("API key `{key_id}` is over its {limit} limit; retry after {secs}s"),
                "rate_limit_error",
                "rate_limit_exceeded",
            ))
        }
    }
}

fn unix_now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Everything the end of a request needs.
struct Ending {
    access: Data<Access>,
    permit: Option<Permit>,
    /// Held (for drain accounting) until the body is sent or dropped.
    _running: Running,
    key_id: Option<String>,
    ledger: Arc<Ledger>,
    request_id: String,
    method: String,
    path: String,
    status: u16,
    start: Instant,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let served: Served = self.ledger.served();
        let latency_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "inferd::request",
            request_id = %self.request_id,
            key_id = self.key_id.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = self.status,
            model = served.model.as_deref().unwrap_or("-"),
            version = served.version.as_deref().unwrap_or("-"),
            prompt_tokens = served.prompt_tokens,
            completion_tokens = served.completion_tokens,
            latency_ms = format_args!("{latency_ms:.1}"),
            "request"
        );
        if let Some(p) = &self.permit {
            p.key.charge_tokens(served.prompt_tokens + served.completion_tokens);
        }
        if let Some(log) = &self.access.audit {
            let record = Record {
                time: unix_now_f64(),
                request_id: &self.request_id,
                key_id: self.key_id.as_deref(),
                method: &self.method,
                path: &self.path,
                status: self.status,
                latency_ms,
                served,
            };
            if let Err(e) = log.write(&record) {
                tracing::error!(path = %log.path().display(), "audit log write failed: {e}");
            }
        }
        // `permit` drops after this: the slot is free once the request is accounted.
    }
}

/// A response body that runs its [`Ending`] once sent or abandoned.
struct Tracked {
    inner: BoxBody,
    _end: Ending,
}

impl MessageBody for Tracked {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// The middleware (`actix_web::middleware::from_fn(access)`); a no-op pass
/// through when no [`Access`] is registered.
pub async fn access(req: ServiceRequest, next: Next<BoxBody>) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(access) = req.app_data::<Data<Access>>().cloned() else {
        return next.call(req).await;
    };
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req.path().to_string();
    // Set by the request-id middleware, which runs outside this one.
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let need = need_of(&path, &access.keys);
    // Probes, metrics and the console's files carry no customer data and
    // are polled every few seconds: they are neither audited nor counted
    // for the drain, and keep answering while draining (readiness says 503).
    if need == Need::Open {
        return next.call(req).await;
    }
    let Some(running) = access.drain.enter() else {
        return Ok(req.into_response(draining_response()));
    };
    let presented = presented_key(req.headers());
    let permit = match access.keys.check(need, presented.as_deref()) {
        Ok(p) => p,
        Err(d) => {
            let res = denied_response(&d);
            let key_id = match &d {
                Denied::Forbidden { key_id, .. } | Denied::Limited { key_id, .. } => Some(key_id.clone()),
                Denied::Unauthenticated(_) => None,
            };
            let end = Ending {
                access,
                permit: None,
                _running: running,
                key_id,
                ledger: Arc::new(Ledger::default()),
                request_id,
                method,
                path,
                status: res.status().as_u16(),
                start,
            };
            let res = req.into_response(res);
            return Ok(res.map_body(|_, b| BoxBody::new(Tracked { inner: b, _end: end })));
        }
    };
    let ledger = Arc::new(Ledger::default());
    let res = LEDGER.scope(ledger.clone(), next.call(req)).await?;
    let end = Ending {
        access,
        key_id: permit.as_ref().map(|p| p.key.id.clone()),
        permit,
        _running: running,
        ledger,
        request_id,
        method,
        path,
        status: res.status().as_u16(),
        start,
    };
    Ok(res.map_body(|_, b| BoxBody::new(Tracked { inner: b, _end: end })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keys_come_from_bearer_x_api_key_or_the_websocket_subprotocol() {
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer sk-a")])).as_deref(), Some("sk-a"));
        assert_eq!(presented_key(&headers(&[("x-api-key", " sk-b ")])).as_deref(), Some("sk-b"));
        assert_eq!(presented_key(&headers(&[("sec-websocket-protocol", "inferd, bearer.sk-c")])).as_deref(), Some("sk-c"));
        assert_eq!(presented_key(&headers(&[("sec-websocket-protocol", "inferd")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented_key(&headers(&[("authorization", "Bearer ")])), None);
    }
}
