//! Hugging Face safetensors checkpoints as a [`WeightSource`]: a folder with
//! `model.safetensors`, a folder with a sharded `model.safetensors.index.json`
//! (its `weight_map` names the shard of each tensor), or one `.safetensors`
//! file. Every file is memory-mapped and its header (a little-endian u64
//! length, then JSON: name -> dtype, shape, data_offsets) is parsed and checked
//! up front, so a corrupt or truncated file fails at `open`, naming the file
//! and the tensor; `load` then only copies bytes into a CPU tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;
use tch::{Kind, Tensor};

use super::{LoadError, WeightSource};

const FORMAT: &str = "safetensors";
const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";
/// Headers larger than this are refused, as the reference implementation does,
/// so garbage bytes cannot make us parse gigabytes as JSON.
const MAX_HEADER: u64 = 100_000_000;

/// One memory-mapped file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Where one tensor's bytes live, already checked against the file length.
struct Entry {
    shard: usize,
    dtype: String,
    shape: Vec<i64>,
    /// Absolute byte range in the shard's file.
    start: usize,
    end: usize,
}

/// The tensors of one safetensors checkpoint, names exactly as stored.
pub struct SafetensorsWeights {
    origin: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
}

impl SafetensorsWeights {
    /// Open a folder (`model.safetensors` or `model.safetensors.index.json`)
    /// or a single `.safetensors` file.
    pub fn open(dir: &Path) -> Result<SafetensorsWeights, LoadError> {
        let meta = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
        if meta.is_file() {
            return Self::from_files(dir.to_path_buf(), &[dir.to_path_buf()], None);
        }
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            let weight_map = read_weight_map(&index)?;
            let mut files: Vec<PathBuf> = Vec::new();
            for file in weight_map.values() {
                let p = dir.join(file);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files.sort();
            return Self::from_files(dir.to_path_buf(), &files, Some((&index, &weight_map)));
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_files(dir.to_path_buf(), &[single], None);
        }
        Err(LoadError::Format {
            path: dir.to_path_buf(),
            format: FORMAT,
            reason: format!("folder has neither {SINGLE_FILE} nor {INDEX_FILE}"),
        })
    }

    fn from_files(
        origin: PathBuf,
        files: &[PathBuf],
        index: Option<(&Path, &HashMap<String, String>)>,
    ) -> Result<SafetensorsWeights, LoadError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors: HashMap<String, Entry> = HashMap::new();
        for path in files {
            let shard_idx = shards.len();
            let (shard, entries) = open_shard(path, shard_idx)?;
            for (name, entry) in entries {
                if let Some(prev) = tensors.get(&name) {
                    return Err(LoadError::Format {
                        path: path.clone(),
                        format: FORMAT,
                        reason: format!(
                            "tensor `{name}` is also stored in {}",
                            shards
                                .get(prev.shard)
                                .map_or(Path::new("?"), |s: &Shard| s.path.as_path())
                                .display()
                        ),
                    });
                }
                tensors.insert(name, entry);
            }
            shards.push(shard);
        }
        // The index must not promise tensors its shards do not hold: a model
        // would otherwise fail later with a less helpful "missing tensor".
        if let Some((index_path, weight_map)) = index {
            let dir = index_path.parent().unwrap_or(Path::new("."));
            for (name, file) in weight_map {
                let shard_path = dir.join(file);
                match tensors.get(name) {
                    Some(e) if shards[e.shard].path == shard_path => {}
                    Some(e) => {
                        return Err(LoadError::Format {
                            path: index_path.to_path_buf(),
                            format: FORMAT,
                            reason: format!(
                                "weight_map puts `{name}` in {file} but it is in {}",
                                shards[e.shard].path.display()
                            ),
                        })
                    }
                    None => {
                        return Err(LoadError::MissingTensor {
                            path: shard_path,
                            tensor: name.clone(),
                        })
                    }
                }
            }
        }
        Ok(SafetensorsWeights {
            origin,
            shards,
            tensors,
        })
    }

    /// All tensor names, as stored, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    /// The stored dtype string (`"F32"`, `"BF16"`, `"I32"`, ...) of a tensor.
    pub fn dtype(&self, name: &str) -> Option<&str> {
        self.resolve(name).map(|(_, e)| e.dtype.as_str())
    }

    /// Find a tensor by name. Some GPT-2 checkpoints store the transformer's
    /// tensors without the `transformer.` prefix (`h.0.attn.c_attn.weight`),
    /// so asking for `transformer.X` falls back to `X`.
    fn resolve(&self, name: &str) -> Option<(&str, &Entry)> {
        if let Some((k, e)) = self.tensors.get_key_value(name) {
            return Some((k.as_str(), e));
        }
        let bare = name.strip_prefix("transformer.")?;
        self.tensors
            .get_key_value(bare)
            .map(|(k, e)| (k.as_str(), e))
    }
}

impl WeightSource for SafetensorsWeights {
    fn load(&self, name: &str) -> Result<Tensor, LoadError> {
        let (stored, e) = self.resolve(name).ok_or_else(|| LoadError::MissingTensor {
            path: self.origin.clone(),
            tensor: name.to_string(),
        })?;
        let shard = &self.shards[e.shard];
        let (kind, to_f32) = match e.dtype.as_str() {
            "F32" => (Kind::Float, false),
            "F16" => (Kind::Half, false),
            "BF16" => (Kind::BFloat16, false),
            "F64" => (Kind::Double, true),
            other => {
                return Err(LoadError::UnsupportedType {
                    path: shard.path.clone(),
                    tensor: stored.to_string(),
                    dtype: format!("{other} (weights must be F32, F16, BF16 or F64)"),
                })
            }
        };
        let torch_err = |source| LoadError::Torch {
            path: shard.path.clone(),
            source,
        };
        // The byte length was checked against shape x element size at open;
        // f_from_data_size trusts it and would read past the slice otherwise.
        let bytes = &shard.mmap[e.start..e.end];
        let t = Tensor::f_from_data_size(bytes, &e.shape, kind).map_err(torch_err)?;
        if to_f32 {
            return t.f_to_kind(Kind::Float).map_err(torch_err);
        }
        Ok(t)
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.resolve(name).map(|(_, e)| e.shape.clone())
    }

    fn origin(&self) -> PathBuf {
        self.origin.clone()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> LoadError {
    LoadError::Format {
        path: path.to_path_buf(),
        format: FORMAT,
        reason: reason.into(),
    }
}

/// `weight_map` of a sharded checkpoint's index: tensor name -> shard file name.
fn read_weight_map(index: &Path) -> Result<HashMap<String, String>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|e| io_err(index, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| format_err(index, format!("index is not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format_err(index, "index has no `weight_map` object"))?;
    let mut out = HashMap::with_capacity(map.len());
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format_err(index, format!("weight_map[`{name}`] is not a file name")))?;
        // A shard name with a path separator could point outside the folder.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(format_err(
                index,
                format!("weight_map[`{name}`] = `{file}` is not a plain file name"),
            ));
        }
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

/// Bytes per element, `None` for dtypes we do not know (still range-checked).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Map one file and check its header and every tensor's byte range.
fn open_shard(path: &Path, shard: usize) -> Result<(Shard, Vec<(String, Entry)>), LoadError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the mapping is read-only; like every mmap-based loader we assume
    // nobody truncates or rewrites the checkpoint while the server runs.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let len = mmap.len() as u64;
    if len < 8 {
        return Err(format_err(
            path,
            format!("{len} bytes, too short for the 8-byte header length"),
        ));
    }
    let mut n_bytes = [0u8; 8];
    n_bytes.copy_from_slice(&mmap[..8]);
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_HEADER {
        return Err(format_err(
            path,
            format!("header length {n} exceeds the {MAX_HEADER}-byte limit"),
        ));
    }
    if 8 + n > len {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            what: "the JSON header".into(),
            needed: 8 + n,
            len,
        });
    }
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&mmap[8..(8 + n) as usize])
        .map_err(|e| format_err(path, format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + n;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |reason: &str| format_err(path, format!("tensor `{name}`: {reason}"));
        let dtype = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no string `dtype`"))?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `shape` array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| bad("`shape` holds a non-integer"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| match a.as_slice() {
                [b, e] => Some((b.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| bad("`data_offsets` is not [begin, end]"))?;
        let (begin, end) = offsets;
        if end < begin {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        if let Some(size) = dtype_size(dtype) {
            let numel = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let expected = numel.and_then(|n| n.checked_mul(size));
            if expected != Some(end - begin) {
                return Err(bad(&format!(
                    "shape {shape:?} of {dtype} needs {} bytes but data_offsets [{begin}, {end}] span {}",
                    expected.map_or("too many".to_string(), |e| e.to_string()),
                    end - begin
                )));
            }
        }
        let abs_end = data_start
            .checked_add(end)
            .ok_or_else(|| bad("data_offsets overflow"))?;
        if abs_end > len {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                what: format!("tensor `{name}`"),
                needed: abs_end,
                len,
            });
        }
        entries.push((
            name.clone(),
            Entry {
                shard,
                dtype: dtype.to_string(),
                shape,
                start: (data_start + begin) as usize,
                end: abs_end as usize,
            },
        ));
    }
    Ok((
        Shard {
            path: path.to_path_buf(),
            mmap,
        },
        entries,
    ))
}
