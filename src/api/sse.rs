//! Server-Sent Events framing: `data: {json}\n\n` events, the final
//! `data: [DONE]`, and the streaming response with its headers. Empty chunks
//! are never yielded (an empty chunk ends a chunked HTTP body).

use std::convert::Infallible;

use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::web::Bytes;
use actix_web::HttpResponse;
use futures_util::stream::{Stream, StreamExt};
use serde::Serialize;

/// The last event of an OpenAI stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// Append one `data:` event holding `value` as JSON to `out`.
pub fn push_event<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(b"data: ");
    // Serializing our own plain structs cannot fail; an empty object keeps
    // the framing valid if it ever did.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// A `text/event-stream` response over `body` (empty chunks dropped).
pub fn response<S>(body: S, version: &str) -> HttpResponse
where
    S: Stream<Item = Bytes> + 'static,
{
    let body = body
        .filter(|b| futures_util::future::ready(!b.is_empty()))
        .map(Ok::<_, Infallible>);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(CacheControl(vec![CacheDirective::NoCache]))
        .insert_header(("x-accel-buffering", "no"))
        .insert_header((super::request_id::VERSION_HEADER, version))
        .streaming(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_framing() {
        let mut out = Vec::new();
        super::push_event(&mut out, &serde_json::json!({"a": 1}));
        assert_eq!(out, b"data: {\"a\":1}\n\n");
    }
}
