//! Reader for the IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! IDX is big-endian: two zero bytes, a type byte (0x08 = unsigned byte, the only type these
//! data sets use), the number of dimensions, one u32 per dimension, then the payload. Images
//! are magic 0x00000803 (count, rows, cols), labels 0x00000801 (count). The reader checks the
//! magic, the dimensions and the exact payload length (no missing and no trailing bytes) and
//! returns an error for anything else; it never panics on a file's contents.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::GzDecoder;

use crate::error::{Error, Result};

/// Images as stored: `count` images of `rows x cols` bytes, row-major, 0 = background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>, // (count, rows, cols)
}

/// Largest dimension product we accept, so a corrupt header cannot ask for a huge allocation
/// (16 GiB, far above any data set this tool is for).
const MAX_PAYLOAD: u64 = 1 << 34;

pub fn read_images(path: &Path) -> Result<IdxImages> {
    let (dims, pixels) = read_idx(path, 3)?;
    Ok(IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels })
}

pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, labels) = read_idx(path, 1)?;
    Ok(labels)
}

/// Parses an IDX file held in memory (raw or gzip) with `ndims` dimensions.
pub fn parse_idx(bytes: &[u8], ndims: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    read_idx_from(BufReader::new(bytes), ndims, path)
}

fn read_idx(path: &Path, ndims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    read_idx_from(BufReader::new(file), ndims, path)
}

fn read_idx_from<R: BufRead>(mut reader: R, ndims: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let head = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        read_idx_stream(GzDecoder::new(reader), ndims, path, true)
    } else {
        read_idx_stream(reader, ndims, path, false)
    }
}

fn read_idx_stream<R: Read>(mut r: R, ndims: usize, path: &Path, gz: bool) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |reason: String| Error::Idx { path: path.to_path_buf(), reason };
    // Errors from a gzip stream mean the compressed file is truncated or corrupt.
    let read_err = |what: &str, e: std::io::Error| {
        if gz && e.kind() != std::io::ErrorKind::UnexpectedEof {
            bad(format!("corrupt gzip stream while reading the {what}: {e}"))
        } else {
            bad(format!("file ends inside the {what} (truncated)"))
        }
    };

    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(|e| read_err("header", e))?;
    let expected = [0, 0, 0x08, ndims as u8];
    if magic != expected {
        let kind = if ndims == 3 { "images" } else { "labels" };
        return Err(bad(format!(
            "magic number 0x{:08x}, expected 0x{:08x} ({kind}: unsigned bytes, {ndims} dimension{})",
            u32::from_be_bytes(magic),
            u32::from_be_bytes(expected),
            if ndims == 1 { "" } else { "s" }
        )));
    }

    let mut dims = Vec::with_capacity(ndims);
    for _ in 0..ndims {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).map_err(|e| read_err("header", e))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    if dims[1..].contains(&0) {
        return Err(bad(format!("zero-sized dimension in {dims:?}")));
    }
    let len = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let len = match len {
        Some(n) if n <= MAX_PAYLOAD => n as usize,
        _ => return Err(bad(format!("dimensions {dims:?} are implausibly large"))),
    };

    let mut payload = Vec::new();
    payload.try_reserve_exact(len).map_err(|_| bad(format!("cannot allocate {len} bytes for dimensions {dims:?}")))?;
    let got = r.by_ref().take(len as u64).read_to_end(&mut payload).map_err(|e| read_err("payload", e))?;
    if got < len {
        return Err(bad(format!("payload has {got} bytes, the header {dims:?} says {len} (truncated)")));
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok((dims, payload)),
        Ok(_) => Err(bad(format!("trailing bytes after the {len}-byte payload the header {dims:?} describes"))),
        Err(e) => Err(read_err("end of the file", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    const P: &str = "test.idx";

    #[test]
    fn reads_raw_and_gzip_of_any_count() {
        let raw = idx(0x803, &[3, 2, 2], &(0..12).collect::<Vec<u8>>());
        for bytes in [raw.clone(), gz(&raw)] {
            let (dims, px) = parse_idx(&bytes, 3, Path::new(P)).unwrap();
            assert_eq!(dims, vec![3, 2, 2]);
            assert_eq!(px, (0..12).collect::<Vec<u8>>());
        }
        let (dims, px) = parse_idx(&idx(0x801, &[0], &[]), 1, Path::new(P)).unwrap();
        assert_eq!((dims, px), (vec![0], vec![]));
    }

    #[test]
    fn rejects_bad_magic_truncation_and_trailing_bytes() {
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (idx(0x801, &[2], &[1, 2]), 3, "magic"),
            (idx(0x803, &[2, 2, 2], &[0; 8]), 1, "magic"),
            (idx(0x0c03, &[1, 1, 1], &[0; 4]), 3, "magic"),
            (idx(0x803, &[2, 2, 2], &[0; 7]), 3, "truncated"),
            (idx(0x803, &[2, 2, 2], &[0; 9]), 3, "trailing"),
            (vec![0, 0, 8], 3, "truncated"),
            (idx(0x803, &[2, 2], &[]), 3, "truncated"),
            (idx(0x803, &[1, 0, 2], &[]), 3, "zero-sized"),
            (idx(0x803, &[u32::MAX, u32::MAX, u32::MAX], &[]), 3, "implausibly"),
            (vec![], 1, "truncated"),
        ];
        for (bytes, ndims, want) in cases {
            let err = parse_idx(&bytes, ndims, Path::new(P)).unwrap_err().to_string();
            assert!(err.contains(want), "expected '{want}' in: {err}");
        }
    }

    #[test]
    fn rejects_truncated_and_corrupt_gzip() {
        let full = gz(&idx(0x801, &[1000], &[7; 1000]));
        let cut = &full[..full.len() / 2];
        let err = parse_idx(cut, 1, Path::new(P)).unwrap_err().to_string();
        assert!(err.contains("truncated") || err.contains("corrupt"), "{err}");
        let mut bad = full.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[10..mid] {
            *b ^= 0x5a;
        }
        let err = parse_idx(&bad, 1, Path::new(P)).unwrap_err().to_string();
        assert!(err.contains("gzip") || err.contains("truncated") || err.contains("magic"), "{err}");
    }
}
