//! TensorBoard event files (`--tensorboard DIR`): what TensorBoard, and tools that read its
//! files (`wandb sync --sync-tensorboard`), show of a run.
//!
//! A file is a sequence of TFRecords (little-endian u64 length, masked CRC-32C of those eight
//! bytes, the data, masked CRC-32C of the data) around `Event` protocol buffers: first one with
//! `file_version = "brain.Event:2"`, then `Summary` events of scalars (`simple_value`, as
//! TensorBoard's own `tf.compat.v1` writer and PyTorch's `SummaryWriter` write them) and of the
//! hparams plugin's session records. TensorBoard reads only files whose name contains
//! `tfevents`; it reads a run folder's files in name order, so a resumed run adds a file with
//! a later name and continues the same series. The messages are declared here with prost (as
//! the ONNX ones are) rather than through a crate: the maintained TensorBoard writers for Rust
//! are bound to old protobuf and image crates, and the five messages needed are a page.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

/// tensorboard/plugins/hparams/plugin_data.proto: HParamsPluginData.
#[derive(Clone, PartialEq, prost::Message)]
struct HParamsPluginData {
    #[prost(int32, tag = "1")]
    version: i32,
    #[prost(message, optional, tag = "3")]
    session_start_info: Option<SessionStartInfo>,
    #[prost(message, optional, tag = "4")]
    session_end_info: Option<SessionEndInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionStartInfo {
    #[prost(map = "string, message", tag = "1")]
    hparams: std::collections::HashMap<String, ProtoValue>,
    #[prost(string, tag = "4")]
    group_name: String,
    #[prost(double, tag = "5")]
    start_time_secs: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionEndInfo {
    /// 1 success, 2 failure, 3 running.
    #[prost(int32, tag = "1")]
    status: i32,
    #[prost(double, tag = "2")]
    end_time_secs: f64,
}

/// google.protobuf.Value, the two kinds used.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoValue {
    #[prost(double, optional, tag = "2")]
    number_value: Option<f64>,
    #[prost(string, optional, tag = "3")]
    string_value: Option<String>,
}

/// CRC-32C (Castagnoli) masked as TFRecord masks it: rotated right by 15, plus a constant.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Seconds since 1970: an event's wall time (`web_time`, so that the trainer, which takes
/// these for its steps and epochs, reads the clock the same way in a browser).
pub fn now() -> f64 {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A swept value as the hparams plugin shows it: a number where it reads as one.
fn proto_value(v: &str) -> ProtoValue {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => ProtoValue { number_value: Some(x), string_value: None },
        _ => ProtoValue { number_value: None, string_value: Some(v.to_string()) },
    }
}

/// One run's event file, written as it goes (each call ends in a flush, so a TensorBoard
/// watching the folder shows each epoch as it ends).
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in the run folder `dir` (created if missing), named as TensorBoard's
    /// writers name theirs, after any file already there (a resumed run's earlier ones).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
            .unwrap_or_else(|| "localhost".into());
        let secs = now() as u64;
        // Files are read in name order: a name after every one already there.
        let mut path;
        let mut n = 0;
        loop {
            path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{}.{n}.gpu-train", std::process::id()));
            let later = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("tfevents") && e.path() >= path);
            if !later {
                break;
            }
            n += 1;
        }
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { file, path };
        w.write(Event { wall_time: now(), step: 0, file_version: Some("brain.Event:2".into()), summary: None })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, e: Event) -> Result<()> {
        let bytes = record(&e.encode_to_vec());
        self.file.write_all(&bytes).and_then(|_| self.file.flush()).map_err(|err| Error::io(&self.path, err))
    }

    /// Scalars at one step, each under its tag.
    pub fn scalars(&mut self, step: i64, wall_time: f64, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(tag, v)| SummaryValue { tag: tag.into(), simple_value: Some(v as f32), metadata: None })
            .collect::<Vec<_>>();
        if value.is_empty() {
            return Ok(());
        }
        self.write(Event { wall_time, step, file_version: None, summary: Some(Summary { value }) })
    }

    fn hparams(&mut self, tag: &str, data: HParamsPluginData) -> Result<()> {
        let metadata = SummaryMetadata {
            plugin_data: Some(PluginData { plugin_name: "hparams".into(), content: data.encode_to_vec() }),
        };
        let value = vec![SummaryValue { tag: tag.into(), simple_value: None, metadata: Some(metadata) }];
        self.write(Event { wall_time: now(), step: 0, file_version: None, summary: Some(Summary { value }) })
    }

    /// The hparams plugin's record that this run is a session with these values (its HPARAMS
    /// tab lists each session with them and its metrics' last values).
    pub fn session_start(&mut self, hparams: &[(String, String)]) -> Result<()> {
        let info = SessionStartInfo {
            hparams: hparams.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect(),
            group_name: String::new(),
            start_time_secs: now(),
        };
        self.hparams(
            "_hparams_/session_start_info",
            HParamsPluginData { version: 0, session_start_info: Some(info), session_end_info: None },
        )
    }

    /// The session ended: `ok` false for a member that diverged.
    pub fn session_end(&mut self, ok: bool) -> Result<()> {
        let info = SessionEndInfo { status: if ok { 1 } else { 2 }, end_time_secs: now() };
        self.hparams(
            "_hparams_/session_end_info",
            HParamsPluginData { version: 0, session_start_info: None, session_end_info: Some(info) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (of "123456789") is 0xe3069283.
    #[test]
    fn crc32c_is_castagnolis() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }
}
