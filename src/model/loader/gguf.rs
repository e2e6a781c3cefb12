//! GGUF (v2 and v3) files: metadata, tensor directory and tensor data.
//!
//! The file is memory-mapped; the header (metadata and tensor infos) is parsed
//! once at open with every read bounds-checked, so a truncated or corrupt
//! file gives a [`LoadError`] naming the file and what was being read, never a
//! panic. Tensor data is checked to lie inside the file at open too, then
//! sliced from the map on demand. Names and dims stay in GGUF's own order
//! (`ne[0]` first); [`GgufFile::load_tensor`] reverses them into torch order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Device, Kind, Tensor};

use super::dequant::{dequantize_into, GgmlType};
use super::LoadError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays of arrays deeper than this are rejected (real files nest at most 1;
/// a crafted file could otherwise overflow the stack).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most 4 dims; allow a little more, refuse absurd counts.
const MAX_DIMS: u32 = 8;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v as i64),
            GgufValue::U16(v) => Some(v as i64),
            GgufValue::U32(v) => Some(v as i64),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floats and integers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// Where one tensor lives and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: `ne[0]` (the contiguous dimension) first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in torch order (dims reversed).
    pub fn torch_shape(&self) -> Vec<i64> {
        // Fits: open() checked every dim and their product against i64::MAX.
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// An open, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    /// Data section alignment (general.alignment, default 32).
    pub alignment: u64,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    map: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What is being read, for error messages.
    ctx: String,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], LoadError> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64);
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end as usize];
                self.pos = end as usize;
                Ok(s)
            }
            None => Err(LoadError::Truncated {
                path: self.path.to_path_buf(),
                what: self.ctx.clone(),
                needed: (self.pos as u64).saturating_add(n),
                len: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn format(&self, reason: String) -> LoadError {
        LoadError::Format {
            path: self.path.to_path_buf(),
            format: "GGUF",
            reason: format!("{}: {reason}", self.ctx),
        }
    }

    fn string(&mut self) -> Result<String, LoadError> {
        let n = self.u64()?;
        let bytes = self.take(n)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            // Tolerated rather than refused: a stray invalid byte in one
            // vocabulary entry should not make the whole model unloadable.
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, LoadError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.format(format!("bool byte is {b}, expected 0 or 1"))),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.format(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem_ty = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte: a count beyond the
                // remaining bytes is corrupt, and must not drive an allocation.
                if n > self.remaining() {
                    return Err(LoadError::Truncated {
                        path: self.path.to_path_buf(),
                        what: format!("{} ({n} array elements)", self.ctx),
                        needed: (self.pos as u64).saturating_add(n),
                        len: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(self.format(format!("unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Map and parse a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 4 {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                what: "magic".into(),
                needed: 4,
                len,
            });
        }
        // SAFETY: the map is read-only and private to this struct; if another
        // process truncates the file while it is mapped, reads may fault
        // (SIGBUS) — model files are not expected to change under a server.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse_header(path, &map)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: header.version,
            metadata: header.metadata,
            alignment: header.alignment,
            index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            map,
        })
    }

    /// A metadata value; `MissingKey` when absent.
    pub fn meta(&self, key: &str) -> Result<&GgufValue, LoadError> {
        self.metadata.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn bad_key(&self, key: &str, expected: &str, found: &GgufValue) -> LoadError {
        LoadError::BadKey {
            path: self.path.clone(),
            key: key.to_string(),
            reason: format!(
                "expected {expected}, found {} {:?}",
                found.type_name(),
                ShortValue(found)
            ),
        }
    }

    pub fn meta_str(&self, key: &str) -> Result<&str, LoadError> {
        let v = self.meta(key)?;
        v.as_str().ok_or_else(|| self.bad_key(key, "a string", v))
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64, LoadError> {
        let v = self.meta(key)?;
        v.as_u64()
            .ok_or_else(|| self.bad_key(key, "a non-negative integer", v))
    }

    pub fn meta_f64(&self, key: &str) -> Result<f64, LoadError> {
        let v = self.meta(key)?;
        v.as_f64().ok_or_else(|| self.bad_key(key, "a number", v))
    }

    /// `general.architecture` (`llama`, `qwen2`, `gpt2`, ...).
    pub fn architecture(&self) -> Result<&str, LoadError> {
        self.meta_str("general.architecture")
    }

    /// Tensor infos in file order.
    pub fn tensor_infos(&self) -> impl Iterator<Item = &GgufTensorInfo> {
        self.tensors.iter()
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_missing(&self, name: &str) -> Result<&GgufTensorInfo, LoadError> {
        self.tensor_info(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], LoadError> {
        let info = self.info_or_missing(name)?;
        // open() checked offset + n_bytes <= file length; `get` keeps this
        // panic-free regardless.
        self.map
            .get(info.offset as usize..(info.offset + info.n_bytes) as usize)
            .ok_or_else(|| LoadError::Truncated {
                path: self.path.clone(),
                what: format!("tensor `{name}`"),
                needed: info.offset + info.n_bytes,
                len: self.map.len() as u64,
            })
    }

    /// CPU tensor in torch order (dims reversed: `[ne1, ne0]` for a matrix);
    /// F32/F16/BF16 keep their kind, Q4_0/Q4_1/Q8_0 are dequantized to F32.
    pub fn load_tensor(&self, name: &str) -> Result<Tensor, LoadError> {
        let info = self.info_or_missing(name)?;
        let bytes = self.tensor_bytes(name)?;
        let shape = info.torch_shape();
        let torch = |source| LoadError::Torch {
            path: self.path.clone(),
            source,
        };
        // GGUF data is little-endian; so are the hosts we run on (x86-64,
        // aarch64), so plain types are copied into libtorch as they are.
        let kind = match info.ggml_type {
            GgmlType::F32 => Some(Kind::Float),
            GgmlType::F16 => Some(Kind::Half),
            GgmlType::BF16 => Some(Kind::BFloat16),
            _ => None,
        };
        if let Some(kind) = kind {
            return Tensor::f_from_data_size(bytes, &shape, kind).map_err(torch);
        }
        if !info.ggml_type.is_dequantizable() {
            return Err(LoadError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                dtype: info.ggml_type.name(),
            });
        }
        // Dequantize straight into a fresh torch tensor: no intermediate Vec,
        // no second copy of what can be hundreds of MB.
        let out = Tensor::f_empty(shape.as_slice(), (Kind::Float, Device::Cpu)).map_err(torch)?;
        let n = info.n_elements() as usize;
        if out.numel() != n || !out.is_contiguous() {
            return Err(LoadError::Format {
                path: self.path.clone(),
                format: "GGUF",
                reason: format!("tensor `{name}`: shape {shape:?} does not hold {n} elements"),
            });
        }
        let bad = |e| LoadError::Format {
            path: self.path.clone(),
            format: "GGUF",
            reason: format!("tensor `{name}`: {e}"),
        };
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: `out` is a contiguous CPU f32 tensor of exactly `n` (> 0)
        // elements that nothing else references yet; the slice dies before
        // `out` is returned.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n) };
        dequantize_into(info.ggml_type, bytes, dst).map_err(bad)?;
        Ok(out)
    }
}

/// Debug-prints a value, eliding long arrays (for error messages).
struct ShortValue<'a>(&'a GgufValue);

impl std::fmt::Debug for ShortValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            GgufValue::Array(a) if a.len() > 4 => write!(f, "[{} elements]", a.len()),
            GgufValue::String(s) if s.len() > 64 => {
                write!(f, "{:?}...", &s[..s.floor_char_boundary_compat(64)])
            }
            v => write!(f, "{v:?}"),
        }
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    alignment: u64,
    tensors: Vec<GgufTensorInfo>,
}

fn parse_header(path: &Path, buf: &[u8]) -> Result<Header, LoadError> {
    let mut r = Reader {
        buf,
        pos: 0,
        path,
        ctx: "magic".into(),
    };
    let magic = r.array::<4>()?;
    if &magic != MAGIC {
        return Err(r.format(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
    }
    r.ctx = "version".into();
    let version = r.u32()?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(r.format("big-endian GGUF files are not supported".into()));
    }
    if version != 2 && version != 3 {
        return Err(r.format(format!("unsupported version {version}, expected 2 or 3")));
    }
    r.ctx = "tensor count".into();
    let n_tensors = r.u64()?;
    r.ctx = "metadata count".into();
    let n_kv = r.u64()?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        r.ctx = format!("metadata entry {i} key");
        let key = r.string()?;
        r.ctx = format!("metadata key `{key}`");
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        if metadata.insert(key, value).is_some() {
            return Err(r.format("duplicate key".into()));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(LoadError::BadKey {
                    path: path.to_path_buf(),
                    key: "general.alignment".into(),
                    reason: format!("expected a power of two, found {v:?}"),
                })
            }
        },
    };

    // Each info is at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    if n_tensors > r.remaining() / 24 {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            what: format!("tensor infos ({n_tensors} tensors)"),
            needed: (r.pos as u64).saturating_add(n_tensors.saturating_mul(24)),
            len: buf.len() as u64,
        });
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        r.ctx = format!("tensor info {i} name");
        let name = r.string()?;
        r.ctx = format!("tensor info of `{name}`");
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(r.format(format!("{n_dims} dims, at most {MAX_DIMS} allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let type_id = r.u32()?;
        let offset = r.u64()?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(LoadError::UnsupportedType {
                path: path.to_path_buf(),
                tensor: name,
                dtype: format!("ggml type id {type_id}"),
            });
        };
        raw.push((name, dims, ggml_type, offset));
    }

    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, ggml_type, rel) in raw {
        let bad = |reason: String| LoadError::Format {
            path: path.to_path_buf(),
            format: "GGUF",
            reason: format!("tensor `{name}`: {reason}"),
        };
        if !seen.insert(name.clone()) {
            return Err(bad("duplicate tensor name".into()));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64));
        let Some(n_elements) = n_elements else {
            return Err(bad(format!("dims {dims:?} overflow")));
        };
        let block = ggml_type.block_size();
        if dims.first().copied().unwrap_or(1) % block != 0 {
            return Err(bad(format!(
                "ne[0] of {dims:?} is not a multiple of the {ggml_type} block size {block}"
            )));
        }
        if rel % alignment != 0 {
            return Err(bad(format!(
                "data offset {rel} is not a multiple of the alignment {alignment}"
            )));
        }
        let n_bytes = n_elements / block * ggml_type.type_size();
        let offset = data_start
            .checked_add(rel)
            .ok_or_else(|| bad(format!("data offset {rel} overflows")))?;
        let end = offset.checked_add(n_bytes).unwrap_or(u64::MAX);
        if end > buf.len() as u64 {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                what: format!("data of tensor `{name}`"),
                needed: end,
                len: buf.len() as u64,
            });
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }
    Ok(Header {
        version,
        metadata,
        alignment,
        tensors,
    })
}
