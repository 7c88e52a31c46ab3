#!/usr/bin/env bash
# Tuned against default kernels (issue 32), side by side on one device: for each case, `gpu-train
# tune` fills the kernel cache (its time is the tuning time), then `bench` runs the same steps
# with --kernels tuned and --kernels default. One JSON line per run into OUT (default
# bench/results/kernels-<device>.jsonl). Cases: CASES="arch:batch[:seeds] ...".
# Devices on a machine without a GPU: DEVICE=lavapipe (Mesa's Vulkan), gl (llvmpipe through
# wgpu's GL backend), swiftshader (Chromium's SwiftShader Vulkan driver).
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GPU_TRAIN:-target/release/gpu-train}
DEVICE=${DEVICE:-gpu}
CASES=${CASES:-"cnn4:16 cnn4:128 cnn6:120 cnn4:16:1..8 resnet20:128"}
STEPS=${STEPS:-3}
WARMUP=${WARMUP:-1}
BUDGET=${BUDGET:-600}
export NODEVICE_SELECT=1
case "$DEVICE" in
    lavapipe) export WGPU_BACKEND=vulkan ;;
    gl) export WGPU_BACKEND=gl ;;
    swiftshader) export WGPU_BACKEND=vulkan VK_ICD_FILENAMES=${SWIFTSHADER_ICD:-/usr/lib/chromium/vk_swiftshader_icd.json} ;;
esac
export GPU_TRAIN_KERNEL_CACHE=${GPU_TRAIN_KERNEL_CACHE:-$PWD/target/kernels-$DEVICE.json}
OUT=${OUT:-bench/results/kernels-$DEVICE.jsonl}
mkdir -p "$(dirname "$OUT")"
for c in $CASES; do
    IFS=: read -r arch batch seeds <<<"$c"
    extra=()
    [ -n "${seeds:-}" ] && extra=(--seeds "$seeds")
    t0=$(date +%s.%N)
    $G tune --arch "$arch" --batch "$batch" "${extra[@]}" --tune-budget "$BUDGET" | tee /dev/stderr | grep '^kernels:' >"target/tune-line.txt"
    t1=$(date +%s.%N)
    for k in tuned default; do
        $G bench --backend gpu --arch "$arch" --batch "$batch" "${extra[@]}" --steps "$STEPS" --warmup "$WARMUP" --kernels "$k" \
            | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['kernels_mode']='$k'; d['device_kind']='$DEVICE'; d['tune_seconds']=$t1-$t0; d['tune_line']=open('target/tune-line.txt').read().strip(); print(json.dumps(d))" >>"$OUT"
        tail -n 1 "$OUT" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['device_kind'], d['arch'], d['batch'], d['members'], d['kernels_mode'], 'seconds/step', round(d['seconds_per_step'], 4))"
    done
done
