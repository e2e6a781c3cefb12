//! The persisted routing, `<data_dir>/routing.json`: each model's active
//! version and canary split (`Engine::snapshot`), plus the settings of every
//! version loaded through the admin API that the config file does not name,
//! so that a restart can load those again. Written after every successful
//! admin mutation, atomically (a temp file in the same folder, fsync, then
//! rename): a crash leaves the old file or the new one, never a torn one.
//!
//! ```json
//! {"format": 1,
//!  "routing": {"models": [{"model": "smollm2", "active": "v2", "canary": null}]},
//!  "versions": [{"model": "smollm2", "version": "v3", "settings": {"source": "/w/v3", ...}}]}
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use inferd_actors::deployment::RoutingSnapshot;
use serde::{Deserialize, Serialize};

use crate::config::VersionConfig;

/// The file's name inside `data_dir`.
pub const FILE_NAME: &str = "routing.json";
/// The layout written; a file with another one is refused at start.
pub const FORMAT: u32 = 1;

/// A version loaded at run time, as `POST /admin/models/{model}/versions`
/// gave it (source made absolute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedVersion {
    pub model: String,
    pub version: String,
    pub settings: VersionConfig,
}

/// Everything `routing.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedRouting {
    pub format: u32,
    pub routing: RoutingSnapshot,
    #[serde(default)]
    pub versions: Vec<PersistedVersion>,
}

/// Where the routing is kept.
#[derive(Debug, Clone)]
pub struct RoutingStore {
    path: PathBuf,
}

impl RoutingStore {
    pub fn new(data_dir: &Path) -> RoutingStore {
        RoutingStore {
            path: data_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted routing, `None` if there is no file yet. A file that
    /// cannot be read or parsed is an error naming the file.
    pub fn load(&self) -> Result<Option<PersistedRouting>, String> {
        let p = self.path.display();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {p}: {e}")),
        };
        let r: PersistedRouting =
            serde_json::from_str(&text).map_err(|e| format!("parsing {p}: {e}"))?;
        if r.format != FORMAT {
            return Err(format!(
                "{p}: `format` is {}, this server reads {FORMAT}",
                r.format
            ));
        }
        Ok(Some(r))
    }

    /// Replaces the file atomically with `r`.
    pub fn save(&self, r: &PersistedRouting) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        // The rename itself is durable once the folder is synced (best
        // effort: not every platform can open a folder).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_actors::deployment::{Canary, ModelRouting};

    fn settings() -> VersionConfig {
        let toml = "source = \"/w/v3\"\ndevices = [\"cpu\"]\n";
        toml::from_str(toml).expect("settings")
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RoutingStore::new(&dir.path().join("data"));
        assert_eq!(store.load(), Ok(None));
        let mut r = PersistedRouting {
            format: FORMAT,
            routing: RoutingSnapshot {
                models: vec![ModelRouting {
                    model: "m".into(),
                    active: Some("v2".into()),
                    canary: Some(Canary {
                        version: "v3".into(),
                        weight_percent: 20,
                    }),
                }],
            },
            versions: vec![PersistedVersion {
                model: "m".into(),
                version: "v3".into(),
                settings: settings(),
            }],
        };
        store.save(&r).expect("save");
        assert_eq!(store.load(), Ok(Some(r.clone())));
        r.routing.models[0].canary = None;
        store.save(&r).expect("save again");
        assert_eq!(store.load(), Ok(Some(r)));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("data"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![FILE_NAME], "no temp file left behind");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RoutingStore::new(dir.path());
        std::fs::write(store.path(), "{\"format\": 1, \"routing\": 3}").expect("write");
        let err = store.load().unwrap_err();
        assert!(err.contains(FILE_NAME) && err.contains("routing"), "{err}");
        std::fs::write(
            store.path(),
            "{\"format\": 9, \"routing\": {\"models\": []}}",
        )
        .expect("write");
        assert!(store.load().unwrap_err().contains("format"));
    }
}
