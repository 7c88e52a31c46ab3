#!/usr/bin/env python3
"""Reads a `--tensorboard` folder back with TensorBoard itself (pip install tensorboard) and
prints what it finds as JSON, for tests/tensorboard.rs and for a look by hand.

    python3 bench/tensorboard_read.py read LOGDIR    # TensorBoard's EventAccumulator, per run:
                                                     # {run: {"scalars": {tag: [[step, value], ...]},
                                                     #        "hparams": {...} or null}}
    python3 bench/tensorboard_read.py serve LOGDIR   # a real `tensorboard --logdir` on loopback:
                                                     # {"runs", "scalars": {run: {tag: [[step, value]]}},
                                                     #  "experiment", "session_groups"}
    python3 bench/tensorboard_read.py crc HEX        # TensorBoard's masked CRC-32C of the bytes
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def read(logdir):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = {}
    for root, _dirs, files in sorted(os.walk(logdir)):
        if not any("tfevents" in f for f in files):
            continue
        acc = ea.EventAccumulator(root, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
        acc.Reload()
        run = os.path.relpath(root, logdir)
        scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        hparams = None
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # no hparams records in this run
            content = {}
        if "_hparams_/session_start_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
            hparams = {}
            for k, v in data.session_start_info.hparams.items():
                kind = v.WhichOneof("kind")
                hparams[k] = v.number_value if kind == "number_value" else v.string_value
        status = None
        if "_hparams_/session_end_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
            status = data.session_end_info.status
        out[run] = {"scalars": scalars, "hparams": hparams, "end_status": status}
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(logdir):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=30) as r:
            return json.load(r)

    def post(path, body):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    try:
        runs, deadline = [], time.time() + 120
        while time.time() < deadline:
            try:
                runs = get("/data/runs")
                tags = get("/data/plugin/scalars/tags")
                if runs and all(tags.get(r) for r in runs):
                    break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit("tensorboard exited: " + server.stderr.read().decode(errors="replace")[-2000:])
            time.sleep(0.5)
        else:
            sys.exit(f"tensorboard served no runs within 120 s (runs: {runs})")
        scalars = {}
        for run, by_tag in get("/data/plugin/scalars/tags").items():
            scalars[run] = {}
            for tag in by_tag:
                q = urllib.parse.urlencode({"run": run, "tag": tag})
                scalars[run][tag] = [[s[1], s[2]] for s in get(f"/data/plugin/scalars/scalars?{q}")]
        experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = post("/data/plugin/hparams/session_groups", {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        })
        return {"runs": runs, "scalars": scalars, "experiment": experiment, "session_groups": groups}
    finally:
        server.kill()


def main():
    what, arg = sys.argv[1], sys.argv[2]
    if what == "read":
        print(json.dumps(read(arg)))
    elif what == "serve":
        print(json.dumps(serve(arg)))
    elif what == "crc":
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
        print(masked_crc32c(bytes.fromhex(arg)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
