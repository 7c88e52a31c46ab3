//! `--tensorboard DIR` read back by TensorBoard itself (PyPI's `tensorboard`, through
//! `bench/tensorboard_read.py`): its EventAccumulator finds, for every member of a swept array
//! and for the ensemble, each epoch's figures at the epoch's number with the metrics log's
//! values (to f32) and the training loss per step; the hparams plugin's records carry each
//! member's seed and swept value; a resumed run continues every series without a repeated
//! step; a real `tensorboard --logdir` server on loopback serves the same scalars and lists
//! every member in its HPARAMS tab with its values and final test accuracy. The masked CRC-32C
//! matches TensorBoard's own.

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

fn python() -> Option<String> {
    python_with("tensorboard", "python3 -m pip install tensorboard")
}

fn tb(py: &str, what: &str, arg: &str) -> Value {
    let o = Command::new(py).args(["bench/tensorboard_read.py", what, arg]).current_dir(repo()).output().unwrap();
    assert!(o.status.success(), "tensorboard_read.py {what}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn train(args: &[&str]) {
    let (code, out, err) = gpu_train_cmd(args);
    assert_eq!(code, 0, "{out}{err}");
}

/// The metrics log's lines: epoch -> the line.
fn log(path: &std::path::Path) -> BTreeMap<i64, Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["epoch"].as_i64().unwrap(), v))
        .collect()
}

fn series(run: &Value, tag: &str) -> Vec<(i64, f32)> {
    run["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no {tag} in {}", run["scalars"]))
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
        .collect()
}

#[test]
fn tensorboard_reads_what_an_array_writes_and_a_resume_continues_it() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (board, out) = (dir.path().join("tb"), dir.path().join("runs/sweep.safetensors"));
    let common = ["--arch", "mlp", "--backend", "cpu", "--limit", "600", "--batch", "50", "--seeds", "1,2"];
    let extra = ["--sweep", "lr=0.05,0.1", "--out", p(&out), "--tensorboard", p(&board)];
    train(&[&common[..], &["--epochs", "2"], &extra[..]].concat());
    // Two more epochs from the checkpoint: the same series go on from epoch 3.
    train(&[&common[..], &["--epochs", "4", "--resume"], &extra[..]].concat());

    let runs = tb(&py, "read", p(&board));
    let names: Vec<&String> = runs.as_object().unwrap().keys().collect();
    let members = ["sweep-s1-lr0.05", "sweep-s1-lr0.1", "sweep-s2-lr0.05", "sweep-s2-lr0.1"];
    let mut want: Vec<&str> = members.to_vec();
    want.push("sweep-ensemble");
    want.sort();
    assert_eq!(names, want, "the runs TensorBoard finds");
    for m in members {
        let run = &runs[m];
        let logged = log(&dir.path().join(format!("runs/{m}.metrics.jsonl")));
        assert_eq!(logged.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4], "{m}: the metrics log");
        for (tag, key) in [
            ("loss/train", "train_loss"),
            ("accuracy/train", "train_acc"),
            ("loss/test", "test_loss"),
            ("accuracy/test", "test_acc"),
            ("learning_rate", "lr"),
            ("images_per_second", "images_per_second"),
        ] {
            let got = series(run, tag);
            let want: Vec<(i64, f32)> = logged.iter().map(|(e, v)| (*e, v[key].as_f64().unwrap() as f32)).collect();
            assert_eq!(got, want, "{m}: {tag} against the metrics log's {key}");
        }
        // 12 steps an epoch (600 / 50), every one of them, once, in order.
        let steps: Vec<i64> = series(run, "train_step/loss").iter().map(|s| s.0).collect();
        assert_eq!(steps, (1..=48).collect::<Vec<_>>(), "{m}: the per-step losses' steps");
        // The hparams plugin's session: seed and swept rate, ended well.
        let seed: f64 = m[7..8].parse().unwrap();
        let lr: f64 = m[11..].parse().unwrap();
        assert_eq!(run["hparams"], serde_json::json!({ "seed": seed, "lr": lr }), "{m}: its hparams");
        assert_eq!(run["end_status"], 1, "{m}: the session's end");
    }
    let ens = log(&out.with_extension("metrics.jsonl"));
    let got = series(&runs["sweep-ensemble"], "accuracy/test");
    let want: Vec<(i64, f32)> =
        ens.iter().map(|(e, v)| (*e, v["ensemble_test_acc"].as_f64().unwrap() as f32)).collect();
    assert_eq!(got, want, "the ensemble's test accuracy");

    // A real TensorBoard server: the same scalars, and the HPARAMS tab's sessions.
    let served = tb(&py, "serve", p(&board));
    for m in members {
        let got: Vec<(i64, f32)> = served["scalars"][m]["accuracy/test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(got, series(&runs[m], "accuracy/test"), "{m}: served accuracy/test");
    }
    let groups = served["session_groups"]["sessionGroups"].as_array().unwrap();
    assert_eq!(groups.len(), 4, "the HPARAMS tab's sessions: {}", served["session_groups"]);
    for g in groups {
        let name = g["name"].as_str().unwrap();
        let member = members.iter().find(|m| name.ends_with(*m)).unwrap_or_else(|| panic!("session {name}"));
        let final_acc = series(&runs[*member], "accuracy/test").last().unwrap().1;
        let shown = g["metricValues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"]["tag"] == "accuracy/test")
            .unwrap_or_else(|| panic!("{name}: no accuracy/test in {g}"));
        assert_eq!(shown["value"].as_f64().unwrap() as f32, final_acc, "{name}: final accuracy");
        assert!(g["hparams"]["lr"].is_number() && g["hparams"]["seed"].is_number(), "{name}: {g}");
    }
}

/// A model of its own: one run named after the model file, with no hparams session.
#[test]
fn a_single_run_writes_one_run_folder() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = dir.path().join("tb");
    let out = dir.path().join("cnn.safetensors");
    let args = ["--arch", "mlp", "--backend", "cpu", "--limit", "300", "--batch", "100", "--epochs", "1"];
    train(&[&args[..], &["--out", p(&out), "--tensorboard", p(&board)]].concat());
    let runs = tb(&py, "read", p(&board));
    assert_eq!(runs.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["cnn"]);
    assert_eq!(runs["cnn"]["hparams"], Value::Null);
    assert_eq!(series(&runs["cnn"], "train_step/loss").len(), 3);
}

#[test]
fn the_masked_crc_is_tensorboards() {
    let Some(py) = python() else { return };
    for data in [&b""[..], b"a", b"123456789", &[0u8, 255, 7, 42, 3, 9, 9, 1, 0, 0, 0, 0]] {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let theirs = tb(&py, "crc", &hex).as_u64().unwrap() as u32;
        assert_eq!(gpu_train::tensorboard::masked_crc32c(data), theirs, "{hex}");
    }
}
