#!/usr/bin/env bash
# Builds the browser page into web/dist (or $1): the library compiled to WebAssembly, its
# JavaScript glue (wasm-bindgen), the page and the shipped MNIST. Serve that folder over
# http://localhost or https (WebGPU needs a secure context), e.g.
#   python3 -m http.server 8000 --bind 127.0.0.1 --directory web/dist
# Needs only crates.io: the wasm32 target (rustup) and wasm-bindgen-cli at the version
# Cargo.lock pins (installed by cargo if missing). No prebuilt binaries are downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-web/dist}"
profile="${PROFILE:-release}"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
# The CLI must match the wasm-bindgen crate in Cargo.lock exactly.
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (have: ${have:-none})" >&2
    # Only the one binary, without TLS (the CLI downloads nothing here). Not --locked: its lock file may name crate versions a registry mirror lacks.
    # Built at opt-level 1 without debug tables: it runs for seconds, once per page build,
    # and compiles in less time than at the release profile's opt-level 3.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_LTO=false \
        cargo install wasm-bindgen-cli --version "$want" --no-default-features --bin wasm-bindgen --quiet
fi

# A target folder of its own: the wasm build never waits on (or for) the native one's lock,
# so the browser tests can build the page while `cargo test` holds target/.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/web}"
# No debug line tables in the page's build (the native release profile keeps them for
# profilers): wasm-bindgen strips them from the page anyway, and they cost 9% of a cold build
# (169.2 s against 154.0 s on the 2-core EPYC).
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-false}"
flag=--release
[ "$profile" = release ] || flag=
cargo build -p gpu-train-web --target wasm32-unknown-unknown $flag
wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/$profile/gpu_train_web.wasm"

rm -rf "$out"
mkdir -p "$out/pkg" "$out/data/mnist"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" "$wasm"
cp web/index.html web/app.js web/style.css "$out/"
cp data/mnist/*.gz "$out/data/mnist/"
size=$(du -k "$out/pkg/gpu_train_web_bg.wasm" | cut -f1)
echo "built $out: gpu_train_web_bg.wasm ${size} KiB; serve it with: python3 -m http.server 8000 --bind 127.0.0.1 --directory $out"
