//! The integration tests, as one binary: one link and one copy of the library's generic code
//! for all of them (as separate binaries they took 149 s of CI to build), and the test
//! threads kept busy across files. `cargo test --release` runs them all;
//! `cargo test --release --test suite shipped_models::` runs one file's.

mod common;

mod arrays;
mod browser;
mod cli;
mod coop_naga;
mod cpu_gradcheck;
mod cpu_ops;
mod data_files;
mod docs;
mod gpu_parity;
mod image_data;
mod kernels;
mod onnx_export;
mod presets;
mod records;
mod reference;
mod report;
mod shaders_naga;
mod shipped_models;
mod slurm;
mod tensorboard;
mod torch_compat;
mod training;
