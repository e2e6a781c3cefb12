//! The admin API under `/admin` (contract: docs/admin-api.md): list the
//! models with their versions, states, replicas and memory; load a version
//! beside the active one; activate, roll back, split by canary, unload a
//! version, remove a model. Each mutation answers with its model's entry
//! (or the error: 400 / 404 / 409 / 500, naming the field) and is persisted
//! by the [`ModelManager`] that `serve` registers as app data.
//!
//! Access control is the app-wide access middleware's (`access.rs`): a
//! route under `/admin` needs a key with the `admin` scope (401 without a
//! key, 403 with an inference-only key) whenever keys are configured.

use actix_web::{web, HttpRequest, HttpResponse};
use inferd_actors::deployment::VersionState;
use inferd_actors::status::{ModelStatus, VersionStatus};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin_error::AdminError;
use super::model_manager::ModelManager;
use super::read_body;
use crate::config::VersionConfig;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;
/// Longest model name or version label.
const MAX_NAME: usize = 128;

type Manager = web::Data<ModelManager>;

/// Registers the `/admin` routes (they use the `web::Data<ModelManager>`
/// that `serve` registers).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .route("/models", web::get().to(list))
            .route("/models/{model}", web::get().to(get_model))
            .route("/models/{model}", web::delete().to(remove))
            .route("/models/{model}/versions", web::post().to(load))
            .route(
                "/models/{model}/versions/{version}",
                web::delete().to(unload),
            )
            .route("/models/{model}/activate", web::post().to(activate))
            .route("/models/{model}/rollback", web::post().to(rollback))
            .route("/models/{model}/canary", web::put().to(set_canary))
            .route("/models/{model}/canary", web::delete().to(clear_canary)),
    );
}

async fn list(m: Manager) -> HttpResponse {
    let models: Vec<Value> = m.status().iter().map(model_json).collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

async fn get_model(m: Manager, path: web::Path<String>) -> Result<HttpResponse, AdminError> {
    entry(&m, &name("model", path.into_inner())?)
}

/// 200 with `model`'s entry.
fn entry(m: &ModelManager, model: &str) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(model_json(&m.model_status(model)?)))
}

async fn load(
    m: Manager,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    let body = read_body(&req, payload, MAX_BODY).await?;
    let (version, mut settings) = parse_load(&body)?;
    settings.source = m.resolve_source(&settings.source);
    if !settings.source.exists() {
        let why = format!("{} does not exist", settings.source.display());
        return Err(AdminError::invalid("source", why));
    }
    m.load(&model, &version, settings).await?;
    entry(&m, &model)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
    #[serde(default)]
    keep_previous_warm: bool,
}

async fn activate(
    m: Manager,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    let b: ActivateBody = parse(&read_body(&req, payload, MAX_BODY).await?)?;
    m.activate(&model, &b.version, b.keep_previous_warm).await?;
    entry(&m, &model)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    keep_previous_warm: bool,
}

async fn rollback(
    m: Manager,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    let b: RollbackBody = parse(&read_body(&req, payload, MAX_BODY).await?)?;
    m.rollback(&model, b.keep_previous_warm).await?;
    entry(&m, &model)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    version: String,
    /// Percent of new requests, 0..=100.
    weight: u32,
}

async fn set_canary(
    m: Manager,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    let b: CanaryBody = parse(&read_body(&req, payload, MAX_BODY).await?)?;
    if b.weight > 100 {
        let why = format!(
            "must be 0..=100 (percent of new requests), got {}",
            b.weight
        );
        return Err(AdminError::invalid("weight", why));
    }
    m.set_canary(&model, &b.version, b.weight).await?;
    entry(&m, &model)
}

async fn clear_canary(m: Manager, path: web::Path<String>) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    m.clear_canary(&model)?;
    entry(&m, &model)
}

async fn unload(m: Manager, path: web::Path<(String, String)>) -> Result<HttpResponse, AdminError> {
    let (model, version) = path.into_inner();
    let (model, version) = (name("model", model)?, name("version", version)?);
    m.unload(&model, &version).await?;
    entry(&m, &model)
}

async fn remove(m: Manager, path: web::Path<String>) -> Result<HttpResponse, AdminError> {
    let model = name("model", path.into_inner())?;
    m.remove(&model).await?;
    Ok(HttpResponse::Ok().json(json!({"model": model, "removed": true})))
}

/// A model name or version label: 1 to 128 printable characters, no
/// whitespace.
fn name(field: &str, s: String) -> Result<String, AdminError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if ok {
        Ok(s)
    } else {
        let why = format!("must be 1 to {MAX_NAME} printable characters without spaces, got {s:?}");
        Err(AdminError::invalid(field, why))
    }
}

/// A JSON body (an empty body is `{}`); a bad field is named.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let param = if path == "." {
            // serde names a missing or unknown field only in the message.
            inner.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            path
        };
        AdminError::invalid(&param, format!("invalid body: {inner}"))
    })
}

/// `POST .../versions`: `version` plus a version's settings as in the
/// config file (`source` required, the rest defaulted), checked.
fn parse_load(body: &[u8]) -> Result<(String, VersionConfig), AdminError> {
    let mut map: serde_json::Map<String, Value> = parse(body)?;
    let version = match map.remove("version") {
        Some(Value::String(v)) => name("version", v)?,
        Some(other) => {
            return Err(AdminError::invalid(
                "version",
                format!("must be a string, got {other}"),
            ))
        }
        None => return Err(AdminError::invalid("version", "missing field `version`")),
    };
    let settings: VersionConfig = parse(&serde_json::to_vec(&map).unwrap_or_default())?;
    settings
        .validate()
        .map_err(|(key, why)| AdminError::invalid(key, why))?;
    Ok((version, settings))
}

/// A model's entry in the list shape of docs/admin-api.md.
pub fn model_json(m: &ModelStatus) -> Value {
    let canary = m
        .canary
        .as_ref()
        .map(|c| json!({"version": c.version, "weight": c.weight_percent}));
    let versions: Vec<Value> = m.versions.iter().map(version_json).collect();
    json!({
        "model": m.model, "ready": m.ready, "active": m.active, "previous": m.previous,
        "canary": canary, "memory_bytes": m.memory_bytes(), "versions": versions,
    })
}

fn version_json(v: &VersionStatus) -> Value {
    let (state, error) = match &v.state {
        VersionState::Failed(why) => ("failed".to_string(), Some(why.clone())),
        s => (s.to_string(), None),
    };
    json!({
        "version": v.version, "state": state, "error": error, "source": v.source.display().to_string(),
        "dtype": v.dtype, "devices": v.devices, "is_active": v.is_active, "is_previous": v.is_previous,
        "canary_weight": v.canary_weight, "memory_bytes": v.memory_bytes(), "replicas": v.replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bodies_are_checked_naming_the_field() {
        let (v, s) =
            parse_load(br#"{"version": "v2", "source": "w/x.gguf", "dtype": "f32"}"#).unwrap();
        assert_eq!(
            (v.as_str(), s.dtype.as_str(), s.devices.clone()),
            ("v2", "f32", vec!["cpu".to_string()])
        );
        let cases: [(&[u8], &str); 6] = [
            (br#"{"source": "x"}"#, "version"),
            (br#"{"version": 3, "source": "x"}"#, "version"),
            (br#"{"version": "v2"}"#, "source"),
            (
                br#"{"version": "v2", "source": "x", "dtype": "int4"}"#,
                "dtype",
            ),
            (
                br#"{"version": "v2", "source": "x", "kv_cache_mb": 0}"#,
                "kv_cache_mb",
            ),
            (
                br#"{"version": "v2", "source": "x", "colour": 1}"#,
                "colour",
            ),
        ];
        for (body, field) in cases {
            let e = parse_load(body).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(field)),
                "{}",
                e.message
            );
        }
        let e = parse_load(br#"{"version": "v2", "source": "x", "devices": "cpu"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("devices"), "{}", e.message);
    }

    #[test]
    fn small_bodies() {
        let b: RollbackBody = parse(b"").unwrap();
        assert!(!b.keep_previous_warm);
        let e = parse::<CanaryBody>(br#"{"version": "v2", "weight": -1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("weight"));
        let e = parse::<ActivateBody>(b"{}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("version"));
        assert!(name("model", "a b".into()).is_err());
    }
}
