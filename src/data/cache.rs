//! The packed cache of a decoded folder of pictures (or of shards of records: `records`): the
//! second run reads one file instead of decoding every picture again.
//!
//! A cache file is named after the folder and a key: the SHA-256 of the folder's path, every
//! picture's relative path, size, modification time and label (for shards: every shard's and
//! every picture file a record names), the input shape and the resize rule. Any change to the pictures changes the key, so a stale cache is never read (and is
//! deleted when its replacement is written). The file itself is checked on reading (magic,
//! key, lengths, CRC-32 of the contents); one that does not match is rebuilt.
//!
//! Layout: `GTCACHE1`, a u32 header length, the JSON header, then the training images, the
//! training labels (u32 little-endian), the test images and the test labels.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::Resize;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"GTCACHE1";

/// What a cache holds besides the pixels: enough to rebuild both splits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub key: String,
    pub shape: [usize; 3],
    pub train: usize,
    pub test: usize,
    pub classes: Vec<String>,
    /// Pictures that did not decode when the cache was built (file, why).
    pub skipped: Vec<(PathBuf, String)>,
    pub crc32: u32,
}

/// Both splits' pixels and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub train: (Vec<u8>, Vec<u32>),
    pub test: (Vec<u8>, Vec<u32>),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of a folder's pictures as they are now (see the module comment).
pub fn key(root: &Path, files: &[&(PathBuf, u32)], shape: [usize; 3], resize: Resize) -> Result<String> {
    // One stat per picture, on all cores; then hashed in order.
    let lines: Vec<String> = files
        .par_iter()
        .map(|(path, label)| Ok(format!("{}\t{label}\n", stat_line(root, path)?)))
        .collect::<Result<_>>()?;
    Ok(key_of(root, &lines, shape, resize))
}

/// A file as the key sees it: its path relative to `root`, size and modification time.
pub fn stat_line(root: &Path, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let rel = path.strip_prefix(root).unwrap_or(path);
    Ok(format!("{}\t{}\t{:?}", rel.display(), meta.len(), mtime.map(|d| d.as_nanos())))
}

/// The key of `lines` (one or more per file, each saying what of it matters) read from
/// `root` for a model input of `shape` by `resize`.
pub fn key_of(root: &Path, lines: &[String], shape: [usize; 3], resize: Resize) -> String {
    let mut h = Sha256::new();
    h.update(format!("gpu-train cache 1 {shape:?} {resize:?} {}\n", root.display()));
    lines.iter().for_each(|l| h.update(l));
    hex(&h.finalize())
}

/// Where the caches of `root` go: a hidden folder inside it, or the user's cache folder when
/// `root` cannot be written to; `dir` overrides both.
pub fn location(root: &Path, dir: Option<&Path>) -> Option<PathBuf> {
    let writable = |d: &Path| {
        let probe = d.join(format!(".probe-{}", std::process::id()));
        let ok = std::fs::create_dir_all(d).is_ok() && std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    };
    if let Some(d) = dir {
        return Some(d.to_path_buf());
    }
    let beside = root.join(".gpu-train-cache");
    if writable(&beside) {
        return Some(beside);
    }
    let user = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("gpu-train");
    writable(&user).then_some(user)
}

/// The cache file of `root` under `key` in `dir`, and the prefix every cache of `root` shares.
pub fn file(dir: &Path, root: &Path, key: &str) -> (PathBuf, String) {
    let abs = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let name = abs.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let name: String = name.chars().map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let prefix = format!("{name}-{}", &hex(&Sha256::digest(abs.to_string_lossy().as_bytes()))[..12]);
    (dir.join(format!("{prefix}-{}.gtc", &key[..16])), prefix)
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Reads a cache file written for `key`. `Ok(None)`: there is none. `Err(why)`: there is one
/// but it does not match (damaged, or written for other data).
pub fn read(path: &Path, key: &str) -> std::result::Result<Option<(Header, Packed)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err("not a gpu-train cache file".into());
    }
    let hlen = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = bytes.get(12..).ok_or("truncated")?;
    let header: Header =
        serde_json::from_slice(body.get(..hlen).ok_or("truncated header")?).map_err(|e| format!("bad header: {e}"))?;
    if header.key != key {
        return Err("written for other pictures or settings".into());
    }
    let payload = &body[hlen..];
    let len = header.shape.iter().product::<usize>();
    let sizes = [header.train * len, 4 * header.train, header.test * len, 4 * header.test];
    if payload.len() != sizes.iter().sum::<usize>() {
        return Err(format!(
            "holds {} bytes of pixels and labels, its header says {}",
            payload.len(),
            sizes.iter().sum::<usize>()
        ));
    }
    if crc32fast::hash(payload) != header.crc32 {
        return Err("its contents fail their checksum".into());
    }
    let (a, rest) = payload.split_at(sizes[0]);
    let (b, rest) = rest.split_at(sizes[1]);
    let (c, d) = rest.split_at(sizes[2]);
    let packed = Packed { train: (a.to_vec(), u32s(b)), test: (c.to_vec(), u32s(d)) };
    Ok(Some((header, packed)))
}

/// Writes a cache file atomically and deletes the other caches of the same folder.
pub fn write(path: &Path, prefix: &str, mut header: Header, data: &Packed) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut payload =
        Vec::with_capacity(data.train.0.len() + data.test.0.len() + 4 * (data.train.1.len() + data.test.1.len()));
    for (images, labels) in [&data.train, &data.test] {
        payload.extend_from_slice(images);
        labels.iter().for_each(|l| payload.extend_from_slice(&l.to_le_bytes()));
    }
    header.crc32 = crc32fast::hash(&payload);
    let head = serde_json::to_vec(&header).map_err(|e| Error::Data(e.to_string()))?;
    let tmp = path.with_extension("gtc.tmp-write");
    {
        // Closed at the end of this block, before the rename.
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut put = |b: &[u8]| f.write_all(b).map_err(|e| Error::io(&tmp, e));
        put(MAGIC)?;
        put(&(head.len() as u32).to_le_bytes())?;
        put(&head)?;
        put(&payload)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if p != path && name.starts_with(prefix) && name.ends_with(".gtc") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    Ok(())
}
