//! `--data` from shards written by the programs people write them with: Hugging Face's
//! `datasets` (Parquet: Image and ClassLabel features, pictures embedded in one split and named
//! by path in the other) and `webdataset` (tar shards of png + cls, names in classes.txt),
//! both through tests/write_records.py from a folder of coloured shapes (bench/make_shapes.py).
//!
//! - Each loads to exactly the folders' pictures, labels, class names and order (both splits,
//!   and as one set split by --val-split), the second time from the cache.
//! - Training on each is the same run as on the folders, bit for bit (every epoch's loss and
//!   accuracy): the pictures and their order are the same, so nothing else could differ; and
//!   `eval` on the shards gives the accuracy training reported. The model records its source.
//! - Bad shards end in one line naming the file, row or sample; --skip-bad lists bad rows.
//!
//! The writers need Python's datasets, webdataset and Pillow; without them these tests skip,
//! except with CI=true.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use gpu_train::data::source::{self, LoadOptions, Splits};

/// The shapes as class folders (`shapes/`) and as shards (`rec/`, see the script), written
/// once per test run.
fn sets() -> Option<&'static Path> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = python_with("datasets, webdataset, PIL", "python3 -m pip install datasets webdataset pillow")?;
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(&py).args(args).current_dir(repo()).output().expect("run python");
            let say = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            assert!(o.status.success(), "{args:?}: {say}");
        };
        let (shapes, rec) = (dir.path().join("shapes"), dir.path().join("rec"));
        run(&["bench/make_shapes.py", p(&shapes), "--train", "400", "--test", "100", "--seed", "3"]);
        run(&["tests/write_records.py", p(&shapes), p(&rec)]);
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

fn load(path: &Path, cache_dir: &Path) -> Splits {
    let o = LoadOptions { cache_dir: Some(cache_dir.to_path_buf()), ..LoadOptions::new([3, 32, 32]) };
    source::load(path, &o).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn shards_load_to_exactly_the_folders_pictures() {
    let Some(dir) = sets() else { return };
    let cache = dir.join("cache-load");
    let folders = load(&dir.join("shapes"), &cache);
    assert_eq!((folders.train.len(), folders.test.len()), (400, 100));
    for (set, kind) in [("rec/hf", "parquet"), ("rec/wds", "webdataset")] {
        for pass in ["decoded", "read from the cache"] {
            let s = load(&dir.join(set), &cache);
            let notes = s.notes.join("\n");
            assert!(notes.contains(pass), "{set}: {notes}");
            assert!(notes.contains("training 2 file(s)") && notes.contains("test 1 file(s)"), "{set}: {notes}");
            assert_eq!(s.info.source, kind);
            assert_eq!(s.info.classes, ["circle", "cross", "square", "triangle"]);
            assert!(s.train == folders.train, "{set}: the training set differs from the folders' ({pass})");
            assert!(s.test == folders.test, "{set}: the test set differs from the folders' ({pass})");
        }
    }
    // No split names (and, for the tar shard, no class names): one set, held out by the seed
    // as a single folder of classes is.
    let one = load(&dir.join("shapes/train"), &cache);
    for set in ["rec/hf-one/all.parquet", "rec/hf-gzip", "rec/wds-one"] {
        let s = load(&dir.join(set), &cache);
        let notes = s.notes.join("\n");
        assert!(notes.contains("one set") && notes.contains("holding out 20%"), "{set}: {notes}");
        assert_eq!((&s.train.images, &s.train.labels), (&one.train.images, &one.train.labels), "{set}");
        assert_eq!((&s.test.images, &s.test.labels), (&one.test.images, &one.test.labels), "{set}");
    }
    assert_eq!(load(&dir.join("rec/wds-one"), &cache).info.classes, ["0", "1", "2", "3"]);
}

/// Each epoch's figures, without its timings.
fn epochs(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("epoch ")).map(|l| l.split("  lr ").next().unwrap()).collect()
}

const NET: &str = r#"
name = "shapes-small"
input = [3, 16, 16]
layers = [
  { type = "conv2d", filters = 8, kernel = 3, padding = 1 },
  { type = "batch_norm" },
  { type = "relu" },
  { type = "max_pool2d", size = 2 },
  { type = "conv2d", filters = 16, kernel = 3, padding = 1 },
  { type = "batch_norm" },
  { type = "relu" },
  { type = "max_pool2d", size = 2 },
  { type = "flatten" },
  { type = "dense", units = 4 },
]
[train]
epochs = 4
batch = 32
optimizer = { type = "adam", lr = 0.01 }
normalize = "auto"
augment = { chance = 1.0, zoom = [1.0, 1.0], rotate = 0.0, shift = 0.0, flip = true }
"#;

/// The `data` metadata a model file recorded.
fn recorded_data(model: &Path) -> serde_json::Value {
    let bytes = std::fs::read(model).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["data"].as_str().unwrap()).unwrap()
}

#[test]
fn training_on_shards_is_training_on_the_folders() {
    let Some(dir) = sets() else { return };
    let arch = dir.join("shapes-small.toml");
    std::fs::write(&arch, NET).unwrap();
    let cache = dir.join("cache-train");
    let train = |set: &str| -> (String, std::path::PathBuf) {
        let (data, out) = (dir.join(set), dir.join(format!("{}.safetensors", set.replace('/', "-"))));
        let (code, stdout, err) = gpu_train_cmd(&[
            "--arch",
            p(&arch),
            "--data",
            p(&data),
            "--backend",
            "cpu",
            "--seed",
            "5",
            "--cache-dir",
            p(&cache),
            "--out",
            p(&out),
        ]);
        assert_eq!(code, 0, "{set}: {stdout}{err}");
        (stdout, out)
    };
    let (folders, _) = train("shapes");
    assert_eq!(epochs(&folders).len(), 4, "{folders}");
    for (set, kind) in [("rec/hf", "parquet"), ("rec/wds", "webdataset")] {
        let (out, model) = train(set);
        assert_eq!(epochs(&out), epochs(&folders), "{set} against the folders");
        assert_eq!(recorded_data(&model)["source"], kind);
        let trained = out.split("test accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap();
        let (code, eval, err) =
            gpu_train_cmd(&["eval", "--backend", "cpu", "--brief", "--data", p(&dir.join(set)), "--model", p(&model)]);
        assert_eq!(code, 0, "{eval}{err}");
        assert!(eval.contains(&format!("accuracy {trained}%")), "{set}: training said {trained}%, eval: {eval}");
    }
}

#[test]
fn bad_shards_end_in_one_line_naming_the_row() {
    let Some(dir) = sets() else { return };
    let bad = dir.join("rec/bad");
    let fails = |set: &str, want: &[&str]| {
        let data = bad.join(set);
        let err = one_line_error(&["--arch", "mlp", "--data", p(&data), "--backend", "cpu", "--no-cache"]);
        for w in want {
            assert!(err.contains(w), "{set}: wanted {w:?} in: {err}");
        }
    };
    fails("noimage", &["x.parquet: no picture column", "its columns: name", "label"]);
    fails("outside", &["x.parquet#1: label 7 is outside the ClassLabel's 4 classes [circle, cross"]);
    fails("classes", &["train.parquet and", "test.parquet disagree", "4 classes [triangle, square"]);
    fails("brotli", &["compressed with brotli", "built in: uncompressed, snappy, zstd"]);
    fails("missing", &["x.parquet#4", "gone.png", "--skip-bad"]);
    fails("nocls", &["x.tar:nolabel", "no class member", "--skip-bad"]);
    // With --skip-bad, the bad row is left out and named.
    for (set, name) in [("missing", "x.parquet#4"), ("nocls", "x.tar:nolabel")] {
        let o = LoadOptions { skip_bad: true, cache: false, val_split: Some(0.5), ..LoadOptions::new([1, 28, 28]) };
        let s = source::load(&bad.join(set), &o).unwrap();
        let notes = s.notes.join("\n");
        assert!(notes.contains("skipped 1 picture(s)") && notes.contains(name), "{set}: {notes}");
        assert_eq!(s.train.len() + s.test.len(), 4, "{set}");
    }
}
