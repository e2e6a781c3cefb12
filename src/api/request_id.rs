//! Request ids and the version header: a middleware that takes
//! `x-request-id` from the request (or makes one), stores it for handlers
//! (the [`RequestId`] extractor) and echoes it on every response. Handlers
//! that know the serving model set [`VERSION_HEADER`] themselves.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, Ready};

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The version of the model that served the response.
pub const VERSION_HEADER: &str = "x-inferd-model-version";
/// Longest client-supplied id kept (longer ones are replaced).
const MAX_ID_LEN: usize = 128;

/// This request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn generate() -> RequestId {
        RequestId(format!("{:032x}", rand::random::<u128>()))
    }

    fn from_header(v: &HeaderValue) -> Option<RequestId> {
        let s = v.to_str().ok()?;
        let ok = !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| RequestId(s.to_string()))
    }
}

impl FromRequest for RequestId {
    type Error = Error;
    type Future = Ready<Result<RequestId, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate)))
    }
}

/// The middleware (`actix_web::middleware::from_fn(request_id)`).
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(id.clone());
    let mut res = next.call(req).await?;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    Ok(res)
}
