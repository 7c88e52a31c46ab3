//! gpu-train: train small image classifiers (MLPs and CNNs, MNIST first) on any GPU through
//! WGSL compute shaders, with a CPU backend that is both a usable trainer and the reference
//! every GPU kernel is validated against.

pub mod backend;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod gpu;
pub mod lrfind;
pub mod memory;
pub mod model;
pub mod modelfile;
pub mod network;
pub mod plot;
pub mod predict;
pub mod progress;
pub mod reference;
pub mod report;
pub mod rng;
pub mod selftest;
pub mod tensorboard;
pub mod train;

pub use error::{Error, Result};
