#!/usr/bin/env python3
"""The figures of the README's results table, from the shipped model files' metadata and
the training runs' metrics logs (models/logs/<name>.metrics.jsonl, copied there from runs/
with the console log when a model is shipped):

    python3 models/results.py [LOG_DIR]

Per model: test error, epochs, training time, backend and device; for cnn4 also the
training time until the test error first reached 1% and 0.40%.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def time_to(log, error):
    """Training seconds until the first epoch whose test error is at most `error`."""
    total = 0.0
    for line in open(log):
        r = json.loads(line)
        total += r["seconds"]
        if 1.0 - r["test_acc"] <= error + 1e-12:
            return r["epoch"], total
    return None, None


def main():
    runs = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "logs")
    rows = []
    for name in sorted(os.listdir(os.path.join(ROOT, "models"))):
        if not name.endswith(".safetensors"):
            continue
        meta = metadata(os.path.join(ROOT, "models", name))
        m = json.loads(meta["metrics"])
        run = json.loads(meta.get("run", "{}"))
        stem = name[: -len(".safetensors")]
        row = {
            "model": stem,
            "test_error_percent": round(100 * m["test_error"], 2),
            "epochs": m["epochs"],
            "best_epoch": m.get("best_epoch") or None,  # 0: no early stopping, the last epoch
            "train_minutes": round(m["train_seconds"] / 60, 1),
            "backend": run.get("backend"),
            "device": meta.get("device"),
        }
        log = os.path.join(runs, stem + ".metrics.jsonl")
        if os.path.exists(log):
            for err in (0.01, 0.004, 0.003):
                e, t = time_to(log, err)
                row[f"to_{100 * err:g}%"] = None if e is None else f"epoch {e}, {t / 60:.1f} min"
        rows.append(row)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
