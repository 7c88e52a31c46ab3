//! Hugging Face's Parquet files (`datasets`' `to_parquet`, the Hub's `data/train-*.parquet`):
//! one row per example, the picture in a struct column `{bytes: binary, path: string}` and the
//! label in an integer column.
//!
//! The columns are found by the features `datasets` writes into the schema's key-value
//! metadata under `huggingface` (JSON: `info.features`, or `features` at the top in older
//! files): the column whose feature has `"_type": "Image"`, and the one with
//! `"_type": "ClassLabel"`, whose `names` are the class names (CIFAR-10 calls them `img` and
//! `label`, others `image` and `labels`: names are never relied on). Several of a type: the
//! first in the schema, with a note. Without that metadata: the only struct column with a
//! `bytes` field, and the only integer column (else the integer column named `label` or
//! `labels`), with classes numbered up to the largest label.
//!
//! A row whose `bytes` is null is read from its `path`, relative to the Parquet file's
//! folder (absolute as it is). Rows are read through the `parquet` crate's record API, only
//! the two columns; pages compressed by snappy (pyarrow's and so `datasets`' default), zstd or
//! gzip are read, others named in an error.

use std::path::{Path, PathBuf};

use parquet::basic::{Compression, ConvertedType, LogicalType, Type as Physical};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::{Type, TypePtr};
use serde_json::Value;

use super::records::{Picture, Record, Shards};
use crate::error::{Error, Result};

/// The codecs this build reads (the `parquet` crate's features in Cargo.toml).
const CODECS: &str = "uncompressed, snappy, zstd, gzip";

/// Where a shard keeps the pictures and labels: the names of two of its top-level columns.
#[derive(Debug, Clone, PartialEq)]
struct Columns {
    image: String,
    label: String,
    /// The ClassLabel's names; None: numbered.
    names: Option<Vec<String>>,
}

/// The Parquet shards of a data set, their columns checked to agree.
pub struct Parquet {
    columns: Columns,
    /// Shards with rows whose `bytes` may be null (by the row groups' statistics).
    by_path: Vec<PathBuf>,
}

fn open_file(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    SerializedFileReader::new(f).map_err(|e| bad(path, format!("not a readable Parquet file: {e}")))
}

fn bad(path: &Path, why: String) -> Error {
    Error::Data(format!("{}: {why}", path.display()))
}

/// Reads every shard's footer: columns, codecs, whether any row may name a file.
pub fn open(shards: &[PathBuf], notes: &mut Vec<String>) -> Result<Parquet> {
    let mut first: Option<(Columns, &PathBuf)> = None;
    let mut by_path = Vec::new();
    for shard in shards {
        let reader = open_file(shard)?;
        let (columns, note) = columns(shard, &reader)?;
        if let Some(n) = note
            && first.is_none()
        {
            notes.push(n);
        }
        let meta = reader.metadata();
        let mut maybe_null = false;
        for rg in meta.row_groups() {
            for c in rg.columns() {
                let parts = c.column_path().parts();
                if parts[0] != columns.image && parts[0] != columns.label {
                    continue;
                }
                if !matches!(
                    c.compression(),
                    Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_) | Compression::GZIP(_)
                ) {
                    return Err(bad(
                        shard,
                        format!(
                            "column {} is compressed with {}, which this build does not read (built in: {CODECS})",
                            parts.join("."),
                            codec_name(c.compression())
                        ),
                    ));
                }
                if parts == [columns.image.as_str(), "bytes"] {
                    maybe_null |= c.statistics().and_then(|s| s.null_count_opt()).is_none_or(|n| n > 0);
                }
            }
        }
        if maybe_null {
            by_path.push(shard.clone());
        }
        match &first {
            None => first = Some((columns, shard)),
            Some((c, f)) if *c != columns => {
                let say = |c: &Columns| match &c.names {
                    Some(n) => format!("picture column {}, label column {} with {}", c.image, c.label, brief(n)),
                    None => format!("picture column {}, label column {} (numbered classes)", c.image, c.label),
                };
                return Err(Error::Data(format!(
                    "{} and {} disagree: {} against {}; every shard (train and test) needs the same features",
                    f.display(),
                    shard.display(),
                    say(c),
                    say(&columns)
                )));
            }
            Some(_) => {}
        }
    }
    let Some((columns, _)) = first else { return Err(Error::Data("no Parquet files".into())) };
    Ok(Parquet { columns, by_path })
}

/// Class names for a message: their count and the first few.
fn brief(names: &[String]) -> String {
    let more = if names.len() > 8 { ", ..." } else { "" };
    format!("{} classes [{}{more}]", names.len(), names[..names.len().min(8)].join(", "))
}

fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::UNCOMPRESSED => "none",
        Compression::SNAPPY => "snappy",
        Compression::GZIP(_) => "gzip",
        Compression::LZO => "lzo",
        Compression::BROTLI(_) => "brotli",
        Compression::LZ4 => "lz4 (hadoop)",
        Compression::ZSTD(_) => "zstd",
        Compression::LZ4_RAW => "lz4_raw",
    }
}

/// The features `datasets` recorded, if it did: column name -> feature.
fn features(
    reader: &SerializedFileReader<std::fs::File>,
    path: &Path,
) -> Result<Option<serde_json::Map<String, Value>>> {
    let kv = reader.metadata().file_metadata().key_value_metadata();
    let Some(json) = kv.and_then(|kv| kv.iter().find(|k| k.key == "huggingface")).and_then(|k| k.value.as_deref())
    else {
        return Ok(None);
    };
    let v: Value =
        serde_json::from_str(json).map_err(|e| bad(path, format!("its 'huggingface' metadata is not JSON ({e})")))?;
    let f = v.pointer("/info/features").or_else(|| v.get("features"));
    Ok(f.and_then(Value::as_object).cloned())
}

fn is_integer(t: &Type) -> bool {
    if !t.is_primitive() || !matches!(t.get_physical_type(), Physical::INT32 | Physical::INT64) {
        return false;
    }
    let info = t.get_basic_info();
    let logical_ok = info.logical_type_ref().is_none_or(|l| matches!(l, LogicalType::Integer { .. }));
    let converted_ok = matches!(
        info.converted_type(),
        ConvertedType::NONE
            | ConvertedType::INT_8
            | ConvertedType::INT_16
            | ConvertedType::INT_32
            | ConvertedType::INT_64
            | ConvertedType::UINT_8
            | ConvertedType::UINT_16
            | ConvertedType::UINT_32
            | ConvertedType::UINT_64
    );
    logical_ok && converted_ok
}

fn is_image_struct(t: &Type) -> bool {
    t.is_group() && t.get_fields().iter().any(|f| f.name() == "bytes" || f.name() == "path")
}

/// A shard's picture and label columns (and a note when there was a choice).
fn columns(path: &Path, reader: &SerializedFileReader<std::fs::File>) -> Result<(Columns, Option<String>)> {
    let schema = reader.metadata().file_metadata().schema_descr();
    let fields = schema.root_schema().get_fields();
    let listed = || {
        let v: Vec<String> = fields
            .iter()
            .map(|f| {
                format!(
                    "{} ({})",
                    f.name(),
                    if f.is_group() { "struct".into() } else { format!("{}", f.get_physical_type()) }
                )
            })
            .collect();
        v.join(", ")
    };
    let features = features(reader, path)?;
    let of_type = |ty: &str| -> Vec<(&TypePtr, &Value)> {
        let Some(f) = &features else { return Vec::new() };
        fields
            .iter()
            .filter_map(|c| {
                f.get(c.name()).filter(|v| v.get("_type").and_then(Value::as_str) == Some(ty)).map(|v| (c, v))
            })
            .collect()
    };
    let mut said = Vec::new();
    let images = of_type("Image");
    let image = match images.first() {
        Some((c, _)) => {
            if images.len() > 1 {
                said.push(format!("{} picture columns, using the first ({})", images.len(), c.name()));
            }
            if !is_image_struct(c) {
                return Err(bad(path, format!("the Image column {} is not a struct of bytes and path", c.name())));
            }
            c.name().to_string()
        }
        None => {
            let structs: Vec<&TypePtr> =
                fields.iter().filter(|f| f.is_group() && f.get_fields().iter().any(|g| g.name() == "bytes")).collect();
            match structs[..] {
                [c] => c.name().to_string(),
                _ => {
                    return Err(bad(
                        path,
                        format!(
                            "no picture column (one with the 'huggingface' metadata's \"_type\": \"Image\", or the only struct with a 'bytes' field); its columns: {}",
                            listed()
                        ),
                    ));
                }
            }
        }
    };
    let labels = of_type("ClassLabel");
    let (label, names) = match labels.first() {
        Some((c, v)) => {
            if labels.len() > 1 {
                let all: Vec<&str> = labels.iter().map(|(c, _)| c.name()).collect();
                said.push(format!("label columns {}, using the first ({})", all.join(", "), c.name()));
            }
            if !is_integer(c) {
                return Err(bad(path, format!("the ClassLabel column {} is not of integers", c.name())));
            }
            let names = match v.get("names").and_then(Value::as_array) {
                Some(n) => n.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect(),
                None => {
                    let k = v.get("num_classes").and_then(Value::as_u64).ok_or_else(|| {
                        bad(path, format!("the ClassLabel of column {} has neither names nor num_classes", c.name()))
                    })?;
                    super::numbered_classes(k as usize)
                }
            };
            (c.name().to_string(), Some(names))
        }
        None => {
            let ints: Vec<&TypePtr> = fields.iter().filter(|f| is_integer(f)).collect();
            let named: Vec<&TypePtr> =
                ints.iter().copied().filter(|f| matches!(f.name(), "label" | "labels")).collect();
            match (&ints[..], &named[..]) {
                ([c], _) | (_, [c]) => (c.name().to_string(), None),
                _ => {
                    return Err(bad(
                        path,
                        format!(
                            "no label column (one with the 'huggingface' metadata's \"_type\": \"ClassLabel\", the only integer column, or an integer column named label or labels); its columns: {}",
                            listed()
                        ),
                    ));
                }
            }
        }
    };
    let note = (!said.is_empty()).then(|| format!("note: {}: {}", path.display(), said.join("; ")));
    Ok((Columns { image, label, names }, note))
}

/// The root schema of `reader` cut to the picture and label columns.
fn projection(path: &Path, reader: &SerializedFileReader<std::fs::File>, c: &Columns, label: bool) -> Result<Type> {
    let fields = reader.metadata().file_metadata().schema_descr().root_schema().get_fields().to_vec();
    let keep: Vec<TypePtr> =
        fields.into_iter().filter(|f| f.name() == c.image || (label && f.name() == c.label)).collect();
    Type::group_type_builder("schema").with_fields(keep).build().map_err(|e| bad(path, e.to_string()))
}

/// The picture of a row's image struct: its bytes, else the file its path names (relative to
/// the shard's folder), else why there is none.
fn picture(field: Field, dir: &Path) -> std::result::Result<Picture, String> {
    let Field::Group(row) = field else {
        return Err("no picture (the image is null)".into());
    };
    let (mut bytes, mut path) = (None, None);
    for (name, f) in row.into_columns() {
        match (name.as_str(), f) {
            ("bytes", Field::Bytes(b)) => bytes = Some(b.data().to_vec()),
            ("path", Field::Str(s)) => path = Some(s),
            ("path", Field::Bytes(b)) => path = Some(String::from_utf8_lossy(b.data()).into_owned()),
            _ => {}
        }
    }
    match (bytes, path) {
        (Some(b), _) => Ok(Picture::Bytes(b)),
        (None, Some(p)) => Ok(Picture::File(dir.join(p))),
        (None, None) => Err("no picture (bytes and path are both null)".into()),
    }
}

/// A row's label: `Ok(Err(why))` for a row without one (a bad row), `Err` for a label no
/// row could have (outside the class names: the data set's mistake, not one row's).
fn label(field: Field, names: Option<&[String]>, row: &str) -> Result<std::result::Result<u32, String>> {
    let v: i64 = match field {
        Field::Null => return Ok(Err("no label (null)".into())),
        Field::Byte(v) => v.into(),
        Field::Short(v) => v.into(),
        Field::Int(v) => v.into(),
        Field::Long(v) => v,
        Field::UByte(v) => v.into(),
        Field::UShort(v) => v.into(),
        Field::UInt(v) => v.into(),
        Field::ULong(v) => i64::try_from(v).unwrap_or(i64::MAX),
        other => return Ok(Err(format!("label {other} is not an integer"))),
    };
    let unlabelled = if v == -1 { " (-1 is datasets' mark of an unlabelled example)" } else { "" };
    match names {
        Some(n) if v < 0 || v as u64 >= n.len() as u64 => {
            Err(Error::Data(format!("{row}: label {v} is outside the ClassLabel's {}{unlabelled}", brief(n))))
        }
        _ if !(0..1 << 24).contains(&v) => {
            Err(Error::Data(format!("{row}: label {v} is not a class number (0 to 2^24 - 1){unlabelled}")))
        }
        _ => Ok(Ok(v as u32)),
    }
}

impl Shards for Parquet {
    fn classes(&self) -> Option<&[String]> {
        self.columns.names.as_deref()
    }

    fn key_lines(&self) -> Result<Vec<String>> {
        // The files that path-only rows name, as they are now (a missing one too: its error
        // is what a load reports).
        let mut lines = Vec::new();
        for shard in &self.by_path {
            let reader = open_file(shard)?;
            let proj = projection(shard, &reader, &self.columns, false)?;
            let dir = shard.parent().unwrap_or(Path::new("."));
            let rows = reader.get_row_iter(Some(proj)).map_err(|e| bad(shard, e.to_string()))?;
            for row in rows {
                let row = row.map_err(|e| bad(shard, e.to_string()))?;
                if let Some((_, f)) = row.into_columns().into_iter().next()
                    && let Ok(Picture::File(p)) = picture(f, dir)
                {
                    let line = super::cache::stat_line(dir, &p).unwrap_or_else(|_| format!("{}\tmissing", p.display()));
                    lines.push(format!("{}\t{line}\n", shard.display()));
                }
            }
        }
        Ok(lines)
    }

    fn read(&self, shard: &Path) -> Result<Vec<Record>> {
        let reader = open_file(shard)?;
        let proj = projection(shard, &reader, &self.columns, true)?;
        let dir = shard.parent().unwrap_or(Path::new("."));
        let names = self.columns.names.as_deref();
        let rows = reader.get_row_iter(Some(proj)).map_err(|e| bad(shard, e.to_string()))?;
        let mut out = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
        for (i, row) in rows.enumerate() {
            let row = row.map_err(|e| bad(shard, format!("row {i}: {e}")))?;
            let name = format!("{}#{i}", shard.display());
            let (mut pic, mut lab) = (Err("no picture".to_string()), Err("no label".to_string()));
            for (col, f) in row.into_columns() {
                if col == self.columns.image {
                    pic = picture(f, dir);
                } else if col == self.columns.label {
                    lab = label(f, names, &name)?;
                }
            }
            out.push(Record { name, item: pic.and_then(|p| lab.map(|l| (p, l))) });
        }
        Ok(out)
    }
}
