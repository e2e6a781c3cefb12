//! What `Engine::deployments` reports per model: each version's state,
//! source, replicas with their memory (weights, KV pool) and load, and which
//! version is active, previous (rollback target) or canary. Plain data built
//! from a copy of the router's state.

use std::path::PathBuf;

use serde::Serialize;

use crate::deployment::{Canary, Deployment, VersionState};
use crate::router::Replica;

/// One loaded replica of a version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaStatus {
    pub device: String,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// Requests being generated.
    pub running: usize,
    /// Requests routed here and not started yet.
    pub waiting: usize,
    /// False while its worker is lost.
    pub ready: bool,
}

/// One version of a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    pub version: String,
    pub state: VersionState,
    pub source: PathBuf,
    pub dtype: String,
    /// Devices it is (to be) loaded on.
    pub devices: Vec<String>,
    /// Empty once unloaded (its memory is released).
    pub replicas: Vec<ReplicaStatus>,
    pub is_active: bool,
    /// The version active before the current one (`rollback` target).
    pub is_previous: bool,
    /// Share of new requests when this version is the canary.
    pub canary_weight: Option<u32>,
}

impl VersionStatus {
    /// Device memory held (weights + KV pools of every replica).
    pub fn memory_bytes(&self) -> u64 {
        self.replicas
            .iter()
            .map(|r| r.weight_bytes + r.kv_bytes)
            .sum()
    }
}

/// One model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelStatus {
    pub model: String,
    /// The active version is ready with a ready replica.
    pub ready: bool,
    pub active: Option<String>,
    pub previous: Option<String>,
    pub canary: Option<Canary>,
    /// In load order.
    pub versions: Vec<VersionStatus>,
}

impl ModelStatus {
    pub fn memory_bytes(&self) -> u64 {
        self.versions.iter().map(VersionStatus::memory_bytes).sum()
    }

    pub fn version(&self, version: &str) -> Option<&VersionStatus> {
        self.versions.iter().find(|v| v.version == version)
    }
}

pub(crate) fn model_status(d: &Deployment, replicas: &[Replica]) -> ModelStatus {
    let versions = d
        .versions()
        .iter()
        .map(|rec| {
            let v = rec.version();
            VersionStatus {
                version: v.to_string(),
                state: rec.state.clone(),
                source: rec.source().clone(),
                dtype: rec.deployment.spec.dtype.clone(),
                devices: rec.deployment.devices.clone(),
                replicas: replicas
                    .iter()
                    .filter(|r| r.version == v)
                    .map(replica_status)
                    .collect(),
                is_active: d.active() == Some(v),
                is_previous: d.previous() == Some(v),
                canary_weight: d
                    .canary()
                    .filter(|c| c.version == v)
                    .map(|c| c.weight_percent),
            }
        })
        .collect::<Vec<_>>();
    let ready = d.is_ready()
        && versions
            .iter()
            .any(|v| v.is_active && v.replicas.iter().any(|r| r.ready));
    ModelStatus {
        model: d.routing().model,
        ready,
        active: d.active().map(str::to_string),
        previous: d.previous().map(str::to_string),
        canary: d.canary().cloned(),
        versions,
    }
}

fn replica_status(r: &Replica) -> ReplicaStatus {
    ReplicaStatus {
        device: r.device.clone(),
        weight_bytes: r.info.weight_bytes,
        kv_bytes: r.info.kv_bytes,
        running: r.gauge.running(),
        waiting: r.gauge.waiting().0,
        ready: r.gauge.is_ready(),
    }
}
