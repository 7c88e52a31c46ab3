#!/usr/bin/env bash
# Everything measured on a GPU machine, in one go: adapters, the kernel selftest, cnn4
# profiled at batch 16 and 128, gpu-train against PyTorch (CUDA) side by side, and one
# training epoch of cnn4. Results go to bench/results/ (and, as one archive, to $OUT when set).
#
# On the lent NVIDIA machines (no Rust there), as done for the H100 figures in the README:
# here, build (`cargo build --release`) and copy a stripped binary next to the Vulkan loader
# and the GL dispatch libraries, which the NVIDIA Vulkan driver needs too (without libglvnd0
# and friends, wgpu finds no adapter there):
#   mkdir -p .gl && strip -o .gl/gpu-train target/release/gpu-train
#   (cd .gl && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# then run this script there, carrying .gl (about 10 MB; the unstripped binary alone is near
# the 64 MB a call may carry).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
BIN=${BIN:-./target/release/gpu-train}
[ -x .gl/gpu-train ] && [ "$BIN" = ./target/release/gpu-train ] && BIN=./.gl/gpu-train
RES=bench/results
STAMP=$(date +%Y-%m-%d)
mkdir -p "$RES"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    $BIN devices
    $BIN selftest
} 2>&1 | tee "$RES/gpu-devices-selftest-$STAMP.txt"
for b in 16 128; do
    $BIN bench --arch cnn4 --batch "$b" --steps $((60000 / b)) --backend gpu --profile \
        > "$RES/gpu-cnn4-b$b-profile-$STAMP.json" 2> "$RES/gpu-cnn4-b$b-profile-$STAMP.txt"
done
python3 bench/compare.py --device gpu --arch cnn4 --batch 16 128 --repeats 3 --binary "$BIN" --name "gpu-cnn4-$STAMP"
$BIN --arch cnn4 --backend gpu --epochs 1 --out /tmp/cnn4-gpu-1.safetensors 2>&1 | tee "$RES/gpu-cnn4-1-epoch-$STAMP.txt"
$BIN eval --backend cpu --brief --model /tmp/cnn4-gpu-1.safetensors | tee -a "$RES/gpu-cnn4-1-epoch-$STAMP.txt"
# The device tool returns at most 8 files from $OUT: send one archive.
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-results-$STAMP.tgz" "$RES"/*"$STAMP"* 2>/dev/null || true; fi
