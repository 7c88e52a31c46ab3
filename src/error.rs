//! The library's one error type. Every failure a user or a file can cause ends up here,
//! with enough context to print as one line; the binary adds `anyhow` context at its edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error is part of the message and not a `source`, so the one-line error chain
    /// the binary prints says it once.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },

    /// An IDX file that is not what it claims to be (bad magic, dimensions, payload length).
    #[error("{path}: not a valid IDX file: {reason}")]
    Idx { path: PathBuf, reason: String },

    #[error("data set: {0}")]
    Data(String),

    /// An architecture or recipe file (or preset) that does not parse or does not make sense.
    #[error("architecture {name}: {reason}")]
    Arch { name: String, reason: String },

    #[error("unknown preset '{name}' (known: {known}); pass a preset name or a path to a .toml file")]
    UnknownPreset { name: String, known: String },

    /// A model file that is missing, corrupt, or does not match the architecture.
    #[error("model file {path}: {reason}")]
    Model { path: PathBuf, reason: String },

    #[error("invalid setting: {0}")]
    Config(String),

    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    /// The loss became NaN or infinite.
    #[error("{0}")]
    Diverged(String),
    /// A sweep's parts (`--shard`) that do not make up the sweep: missing, or from another.
    #[error("{0}")]
    Sweep(String),

    #[error("GPU: {0}")]
    Gpu(String),

    /// Something would not fit in host or device memory (checked before allocating).
    #[error("too large: {0}")]
    Memory(String),

    /// A model that cannot be written as ONNX (a layer on an input its op cannot take, an
    /// option that does not apply to it).
    #[error("cannot export {name} to ONNX: {reason}")]
    Export { name: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }

    pub fn model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Model { path: path.into(), reason: reason.into() }
    }

    pub fn arch(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Arch { name: name.into(), reason: reason.into() }
    }
}
