#!/usr/bin/env python3
"""Runs ONNX files that gpu-train exported through onnx's own checker and onnxruntime, for
tests/onnx_export.rs, which compares what comes back with gpu-train's outputs.

    onnx_check.py MANIFEST.json

The manifest lists cases: {"cases": [{"name": ..., "model": "m.onnx", "input": "x.f32",
"shape": [n, c, h, w], "output": "y.f32", "small": k}, ...]}, with the inputs as raw float32
little-endian. For each case: onnx.checker.check_model(full_check=True) (which also infers
every shape), then onnxruntime on all n inputs in one run and on the first k alone (the batch
dimension is dynamic), written as raw float32 to `output` and `output + ".small"`. What each
file declares (input and output names, shapes and types, opsets, IR version, producer,
metadata, doc string) and any error go to MANIFEST.result.json: a failing case does not stop
the others, and the Rust test names it.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def describe(values):
    return [{"name": v.name, "shape": v.shape, "type": v.type} for v in values]


def run_case(case):
    model = onnx.load(case["model"])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(case["model"], providers=["CPUExecutionProvider"])
    x = np.fromfile(case["input"], dtype="<f4").reshape(case["shape"])
    name = session.get_inputs()[0].name
    y = session.run(None, {name: x})[0]
    y.astype("<f4").tofile(case["output"])
    small = session.run(None, {name: x[: case["small"]]})[0]
    small.astype("<f4").tofile(case["output"] + ".small")
    return {
        "error": None,
        "inputs": describe(session.get_inputs()),
        "outputs": describe(session.get_outputs()),
        "output_shape": list(y.shape),
        "opset": [[o.domain, o.version] for o in model.opset_import],
        "ir_version": model.ir_version,
        "producer": [model.producer_name, model.producer_version],
        "metadata": {p.key: p.value for p in model.metadata_props},
        "doc": model.doc_string,
        "ops": [n.op_type for n in model.graph.node],
    }


def main():
    manifest = Path(sys.argv[1])
    cases = json.loads(manifest.read_text())["cases"]
    results = {}
    for case in cases:
        try:
            results[case["name"]] = run_case(case)
        except Exception as e:  # reported per case, by name, by the Rust test
            results[case["name"]] = {"error": f"{type(e).__name__}: {e}"}
    manifest.with_suffix(".result.json").write_text(json.dumps(results))
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}: {len(cases)} models run")


if __name__ == "__main__":
    main()
