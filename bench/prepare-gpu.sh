#!/usr/bin/env bash
# Prepares .gl/ (git-ignored) for bench/gpu.sh on a lent NVIDIA machine, which has no Rust
# and no network: the stripped gpu-train binary and GPU parity test binary (the unstripped
# ones pass the 64 MB a call may carry), the Vulkan loader and the GL dispatch libraries the
# NVIDIA Vulkan driver needs (Debian amd64 packages), and the GEMM kernels before commit
# c62f384 for the old-against-new comparison. Then: run `bash bench/gpu.sh`, carrying .gl.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
mkdir -p .gl/shaders-old /tmp/amd64/partial
cargo build --release
cargo test --release --no-run --test suite
strip -o .gl/gpu-train target/release/gpu-train
strip -o .gl/suite "$(ls -t target/release/deps/suite-* | grep -v '\.d$' | head -1)"
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    apt-get $o update -qq
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
for f in tile conv2d gemm; do git show "c62f384~1:shaders/$f.wgsl" > ".gl/shaders-old/$f.wgsl"; done
du -sh .gl
