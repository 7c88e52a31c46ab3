//! Users' own data: folders of pictures written by a library no one here wrote (Pillow), the
//! CIFAR binary formats, pictures of other sizes and channels, the cache, and bad input.
//!
//! - MNIST (and Fashion-MNIST where Debian's `dataset-fashion-mnist` is installed) exported
//!   to PNG folders by `bench/idx_to_png.py` loads to exactly the IDX images and labels (as a
//!   multiset), through the cache the second time; shipped models evaluate on the folder test
//!   set to the accuracy recorded in them.
//! - Coloured shapes (`bench/make_shapes.py`, RGB 32x32, brought to 16x16 by the model's resize
//!   rule) train on the CPU and on the GPU to a stated accuracy, and the GPU-trained model
//!   evaluates the same on both backends.
//! - Bad input ends in one line on stderr naming the file, never a panic.
//!
//! The Python scripts need Pillow; without it these tests skip, except with CI=true.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use gpu_train::data::source::{self, LoadOptions};
use gpu_train::data::{self, Dataset, Resize};

fn pillow() -> Option<String> {
    python_with("PIL", "python3 -m pip install pillow")
}

fn script(py: &str, args: &[&str]) {
    let o = Command::new(py).args(args).current_dir(repo()).output().expect("run python");
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// MNIST as PNG folders, written once per test run.
fn mnist_png() -> Option<&'static Path> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    DIR.get_or_init(|| {
        let py = pillow()?;
        let dir = tempfile::tempdir().unwrap();
        script(&py, &["bench/idx_to_png.py", mnist_dir().to_str().unwrap(), dir.path().to_str().unwrap()]);
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

/// The examples as a sorted list of (label, pixels): equal lists are equal multisets.
fn multiset(ds: &Dataset) -> Vec<(u32, &[u8])> {
    let mut v: Vec<(u32, &[u8])> = (0..ds.len()).map(|i| (ds.labels[i], ds.image(i))).collect();
    v.sort();
    v
}

fn load(path: &Path, shape: [usize; 3]) -> source::Splits {
    source::load(path, &LoadOptions::new(shape)).unwrap()
}

fn check_same_examples(png: &Path, idx: &Path, names: &[String]) {
    let (train, test) = data::load_dir(idx).unwrap();
    for round in ["decoded", "from the cache"] {
        let s = load(png, [1, 28, 28]);
        assert_eq!(s.train.classes, names, "{round}");
        assert_eq!((s.train.len(), s.test.len()), (train.len(), test.len()), "{round}");
        assert!(multiset(&s.train) == multiset(&train), "{round}: the training pictures differ from the IDX images");
        assert!(multiset(&s.test) == multiset(&test), "{round}: the test pictures differ from the IDX images");
        assert_eq!((s.info.source.as_str(), s.train.shape()), ("folder", [1, 28, 28]));
    }
    let caches: Vec<PathBuf> =
        std::fs::read_dir(png.join(".gpu-train-cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(caches.len(), 1, "one cache file: {caches:?}");
}

#[test]
fn mnist_png_folders_load_to_exactly_the_idx_images() {
    let Some(png) = mnist_png() else { return };
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    check_same_examples(png, &mnist_dir(), &names);
}

#[test]
fn fashion_mnist_png_folders_load_to_exactly_the_idx_images() {
    let idx = PathBuf::from("/usr/share/datasets/fashion-mnist");
    if !idx.is_dir() {
        assert!(!ci(), "CI=true but Debian's dataset-fashion-mnist is not installed");
        return eprintln!("skipping: no {} (apt-get install dataset-fashion-mnist)", idx.display());
    }
    let Some(py) = pillow() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The first 3,000 pictures of each split: the folder route's pixels are proved on all of
    // MNIST above; what a second set adds is its class names and their order.
    const N: usize = 3000;
    script(&py, &["bench/idx_to_png.py", p(&idx), p(dir.path()), "--names", "fashion", "--limit", &N.to_string()]);
    let mut names: Vec<String> =
        ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    // Class folders sort by name, so labels follow the names' order, not Fashion-MNIST's.
    let (train, test) = data::load_dir(&idx).unwrap();
    let (train, test) = (train.take(N), test.take(N));
    let s = load(dir.path(), [1, 28, 28]);
    let order = names.clone();
    names.sort();
    assert_eq!(s.train.classes, names);
    let relabel = |ds: &Dataset| {
        let mut d = ds.clone();
        for l in &mut d.labels {
            *l = names.iter().position(|n| *n == order[*l as usize]).unwrap() as u32;
        }
        d
    };
    assert!(multiset(&s.train) == multiset(&relabel(&train)), "Fashion-MNIST training pictures differ");
    assert!(multiset(&s.test) == multiset(&relabel(&test)), "Fashion-MNIST test pictures differ");
}

/// "models/NAME.safetensors: ... accuracy 99.54% ... (recorded at save: 99.54%)" lines.
fn accuracies(eval_out: &str) -> HashMap<String, (String, String)> {
    let mut m = HashMap::new();
    for line in eval_out.lines().filter(|l| l.contains("(recorded at save: ")) {
        let name = line.split(':').next().unwrap().to_string();
        let got = line.split("accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap().to_string();
        let rec = line.split("recorded at save: ").nth(1).and_then(|s| s.split('%').next()).unwrap().to_string();
        m.insert(name, (got, rec));
    }
    m
}

/// Models evaluate on the PNG test set to the accuracy recorded on the IDX files: the folder
/// route feeds a model the same pixels under the same labels. The multiset tests above prove
/// the pictures identical, so a dense, a small conv and a batch-norm model stand for all
/// (tests/shipped_models.rs evaluates every shipped model on the IDX files).
#[test]
fn shipped_models_evaluate_on_the_png_test_set_to_their_recorded_accuracy() {
    let Some(png) = mnist_png() else { return };
    let models: Vec<PathBuf> =
        ["mlp", "fc-b", "cnn4", "cnn6-s1"].iter().map(|m| repo().join(format!("models/{m}.safetensors"))).collect();
    let mut args = vec!["eval".to_string(), "--backend".into(), "cpu".into(), "--brief".into(), "--data".into()];
    args.push(p(png).into());
    for m in &models {
        args.push("--model".into());
        args.push(p(m).into());
    }
    let (code, out, err) = gpu_train_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("evaluating on 10000 test images"), "{out}");
    let acc = accuracies(&out);
    assert_eq!(acc.len(), models.len(), "{out}");
    for (name, (got, recorded)) in acc {
        assert_eq!(got, recorded, "{name} on the PNG test set");
    }
}

/// Coloured shapes, one folder per class (circle, cross, square, triangle).
fn shapes(train: usize, test: usize, seed: u64) -> Option<tempfile::TempDir> {
    let py = pillow()?;
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, s) = (train.to_string(), test.to_string(), seed.to_string());
    script(&py, &["bench/make_shapes.py", p(dir.path()), "--train", &tr, "--test", &te, "--seed", &s]);
    Some(dir)
}

/// A small CNN for the shapes: three blocks of 3x3 conv, batch norm, relu and pool (8, 16, 32
/// filters), 4 classes, on the 32x32 pictures stretched to 16x16 (a quarter of the GPU's work
/// at 32x32, where lavapipe took three minutes; the CPU reaches the same accuracy at either
/// size).
const SHAPES_NET: &str = r#"
name = "shapes-cnn"
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
  { type = "conv2d", filters = 32, kernel = 3, padding = 1 },
  { type = "batch_norm" },
  { type = "relu" },
  { type = "max_pool2d", size = 2 },
  { type = "flatten" },
  { type = "dense", units = 4 },
]
[train]
epochs = 5
batch = 32
optimizer = { type = "adam", lr = 0.01 }
normalize = "auto"
schedule = { type = "cosine", min_lr = 0.0001 }
augment = { chance = 1.0, zoom = [1.0, 1.0], rotate = 0.0, shift = 0.0, flip = true }
"#;

fn final_accuracy(out: &str) -> f64 {
    out.split("test accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap().trim().parse().unwrap()
}

fn eval_accuracy(out: &str) -> f64 {
    out.split("accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap().trim().parse().unwrap()
}

/// RGB shapes train to a stated accuracy on the CPU and on the GPU (where there is an adapter:
/// lavapipe in CI), from the same seed, and the GPU-trained model scores the same on both
/// backends (as for MNIST in tests/gpu_parity.rs, which also compares an RGB model's logits,
/// gradients and Adam steps). 3000 training pictures over 5 epochs (about 50 s on lavapipe);
/// on the CPU, seeds 1-5 of this run reached 71.8, 75.2, 78.5, 79.7 and 76.7% (chance is 25%;
/// at 32x32, seeds 1-4 reached 74.2, 81.8, 73.7 and 83.2%), hence the stated 60%. The two
/// backends start on the same trajectory (the first epoch's training loss agrees within 2%)
/// and then part as f32 rounding differences grow, as two seeds would: their final
/// accuracies are each checked, not against each other.
#[test]
fn rgb_shapes_train_on_both_backends() {
    let Some(dir) = shapes(3000, 600, 1) else { return };
    let arch = dir.path().join("shapes-cnn.toml");
    std::fs::write(&arch, SHAPES_NET).unwrap();
    let mut trained = Vec::new();
    let backends: &[&str] =
        if gpu_train::gpu::GpuBackend::new(None).is_ok() || ci() { &["cpu", "gpu"] } else { &["cpu"] };
    for backend in backends {
        let out = dir.path().join(format!("shapes-{backend}.safetensors"));
        // The GPU trains 2 of the 5 epochs: its first epoch's loss is held to the CPU's below,
        // and on lavapipe this small net's epoch takes 37 s (issue 32's small-layer kernels).
        // After 2 epochs it scores 46.67% (chance: 25%); the CPU after 5, 71.8-79.7%.
        let (epochs, least) = if *backend == "gpu" { ("2", 40.0) } else { ("5", 60.0) };
        let args = [
            "--arch",
            p(&arch),
            "--data",
            p(dir.path()),
            "--backend",
            backend,
            "--seed",
            "2",
            "--epochs",
            epochs,
            // Tuning is tested in tests/kernels.rs; here it would only add its seconds.
            "--kernels",
            "default",
            "--out",
            p(&out),
        ];
        let (code, stdout, err) = gpu_train_cmd(&args);
        assert_eq!(code, 0, "{backend}: {stdout}{err}");
        let acc = final_accuracy(&stdout);
        eprintln!("shapes on {backend}: {acc}%");
        assert!(acc >= least, "{backend}: test accuracy {acc}% after {epochs} epochs: {stdout}");
        let first: f64 = stdout.split("train loss ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap();
        trained.push((backend, out, acc, first));
    }
    if let [(_, _, _, cpu_loss), (_, gpu_file, gpu, gpu_loss)] = &trained[..] {
        assert!(
            (cpu_loss - gpu_loss).abs() <= 0.02 * cpu_loss,
            "epoch 1 training loss: cpu {cpu_loss}, gpu {gpu_loss}"
        );
        let on = |backend: &str| {
            let (code, out, err) = gpu_train_cmd(&[
                "eval",
                "--backend",
                backend,
                "--brief",
                "--data",
                p(dir.path()),
                "--model",
                p(gpu_file),
            ]);
            assert_eq!(code, 0, "{out}{err}");
            eval_accuracy(&out)
        };
        let (g, c) = (on("gpu"), on("cpu"));
        assert!((g - c).abs() <= 0.5 + 1e-9, "the GPU-trained model: {g}% on the GPU, {c}% on the CPU");
        assert!((g - gpu).abs() < 1e-9, "training said {gpu}%, eval {g}%");
    }
    // Predict names the classes of an RGB model.
    let (_, file, _, _) = &trained[0];
    let pic = dir.path().join("test/circle/00000.png");
    let (code, out, err) = gpu_train_cmd(&["predict", "--backend", "cpu", "--model", p(file), p(&pic)]);
    assert_eq!(code, 0, "{err}");
    let names = ["circle", "cross", "square", "triangle"];
    assert!(names.iter().any(|n| out.contains(&format!("00000.png: {n}"))) && out.contains("top 3:"), "{out}");
}

/// CIFAR-10 and CIFAR-100 batch files (written here in the published layout) load to the
/// records they hold, class names from their label files.
#[test]
fn cifar_binary_files_load_record_for_record() {
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8, fine: Option<u8>, i: usize| -> Vec<u8> {
        let mut r = vec![label];
        r.extend(fine);
        r.extend((0..3072).map(|p| ((p * 7 + i * 13) % 256) as u8));
        r
    };
    let ten = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&ten).unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    std::fs::write(ten.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    for b in 1..=2 {
        let bytes: Vec<u8> = (0..5).flat_map(|i| record(((i + b) % 10) as u8, None, 10 * b + i)).collect();
        std::fs::write(ten.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    std::fs::write(
        ten.join("test_batch.bin"),
        (0..3).flat_map(|i| record(9 - i as u8, None, 100 + i)).collect::<Vec<_>>(),
    )
    .unwrap();
    let s = load(dir.path(), [3, 32, 32]);
    assert_eq!((s.train.len(), s.test.len(), s.info.source.as_str()), (10, 3, "cifar-10"));
    assert_eq!(s.train.classes, names);
    assert_eq!(s.train.labels[..5], [1, 2, 3, 4, 5]);
    assert_eq!(s.train.image(6), &record(0, None, 21)[1..]);
    assert_eq!(s.test.labels, [9, 8, 7]);
    // CIFAR-100: the fine label (second byte) is the class.
    let hundred = tempfile::tempdir().unwrap();
    let train: Vec<u8> = (0..4).flat_map(|i| record(i as u8, Some(90 + i as u8), i)).collect();
    std::fs::write(hundred.path().join("train.bin"), train).unwrap();
    std::fs::write(hundred.path().join("test.bin"), record(3, Some(42), 9)).unwrap();
    let s = load(hundred.path(), [3, 32, 32]);
    assert_eq!(
        (s.train.labels.clone(), s.test.labels.clone(), s.train.classes.len()),
        (vec![90, 91, 92, 93], vec![42], 100)
    );
    assert_eq!(s.test.image(0), &record(3, Some(42), 9)[2..]);
    // A model for one channel gets the pictures converted to grayscale.
    let gray = load(dir.path(), [1, 32, 32]);
    assert_eq!(gray.train.shape(), [1, 32, 32]);
    // Trains end to end from the command line (a tiny model, one epoch).
    let arch = dir.path().join("tiny.toml");
    std::fs::write(
        &arch,
        "name = 'tiny'\ninput = [3, 32, 32]\nlayers = [{ type = 'conv2d', filters = 2, kernel = 4, stride = 4 }, \
         { type = 'flatten' }, { type = 'dense', units = 10 }]\n[train]\nepochs = 1\nbatch = 4\n",
    )
    .unwrap();
    let out = dir.path().join("tiny.safetensors");
    let (code, stdout, err) =
        gpu_train_cmd(&["--arch", p(&arch), "--data", p(dir.path()), "--backend", "cpu", "--out", p(&out)]);
    assert_eq!(code, 0, "{stdout}{err}");
    let m = gpu_train::modelfile::load(&out, None).unwrap();
    assert_eq!(m.class_names(), names);
}

/// Pictures of other sizes, channels and formats come out at the model's shape, by the
/// chosen rule; a single folder of classes splits by the run's seed.
#[test]
fn pictures_of_any_size_and_kind_are_brought_to_the_input_shape() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    for (class, color) in [("blue", [0u8, 0, 255]), ("red", [255, 0, 0])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..5u32 {
            // A 40x20 picture of the class colour; a few in other formats and modes.
            let img = image::RgbImage::from_pixel(40, 20, image::Rgb(color));
            let path = root.join(class).join(format!("{i}.{}", ["png", "jpg", "bmp", "tiff", "webp"][i as usize]));
            match i {
                3 => image::DynamicImage::ImageRgb8(img).to_rgba16().save(&path).unwrap(),
                _ => img.save(&path).unwrap(),
            }
        }
    }
    std::fs::write(root.join("blue/notes.txt"), "not a picture").unwrap();
    for resize in [Resize::Stretch, Resize::Crop, Resize::Pad] {
        let o = LoadOptions { resize, val_split: Some(0.4), cache: false, ..LoadOptions::new([3, 8, 8]) };
        let s = source::load(&root, &o).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.train.shape()), (6, 4, [3, 8, 8]), "{resize:?}");
        assert_eq!(s.train.classes, ["blue", "red"]);
        for ds in [&s.train, &s.test] {
            for i in 0..ds.len() {
                let img = ds.image(i);
                let (r, b) = (img[3 * 8 + 3] as i32, img[2 * 64 + 3 * 8 + 3] as i32);
                let want = if ds.labels[i] == 0 { (0, 255) } else { (255, 0) };
                assert!((r - want.0).abs() <= 8 && (b - want.1).abs() <= 8, "{resize:?}: centre pixel {r}, {b}");
                // Padding keeps the 2:1 picture's aspect: black rows above and below it.
                if resize == Resize::Pad {
                    assert!(img[..8].iter().all(|&v| v == 0) && img[56..64].iter().all(|&v| v == 0), "{img:?}");
                } else {
                    assert!(img[..8].iter().all(|&v| !(50..=200).contains(&v)), "{resize:?}: {img:?}");
                }
            }
        }
        // The split is a function of the seed: disjoint, and the same again.
        let again = source::load(&root, &o).unwrap();
        assert_eq!(again.test.labels, s.test.labels);
        let other = source::load(&root, &LoadOptions { seed: 9, ..o.clone() }).unwrap();
        assert_eq!(other.train.len() + other.test.len(), 10);
    }
    // Grayscale models get luma; a 16-bit RGBA picture loses its alpha.
    let g = source::load(&root, &LoadOptions { val_split: Some(0.2), cache: false, ..LoadOptions::new([1, 4, 4]) })
        .unwrap();
    for i in 0..g.train.len() {
        let v = g.train.image(i)[5] as i32;
        let want = if g.train.labels[i] == 0 { 18 } else { 54 }; // Rec. 709: 0.0722 B, 0.2126 R
        assert!((v - want).abs() <= 4, "luma {v}, want about {want}");
    }
}

/// Asserts a failure reported as exactly one "error: ..." line containing every `want`.
fn fails_with(args: &[&str], want: &[&str]) {
    let line = one_line_error(args);
    for w in want {
        assert!(line.contains(w), "{args:?}: expected '{w}' in: {line}");
    }
}

#[test]
fn bad_data_ends_in_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.toml");
    std::fs::write(
        &tiny,
        "name = 'tiny'\ninput = [3, 8, 8]\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 2 }]\n[train]\nepochs = 1\n",
    )
    .unwrap();
    let make = |name: &str| -> PathBuf {
        let root = dir.path().join(name);
        for split in ["train", "test"] {
            for class in ["a", "b"] {
                std::fs::create_dir_all(root.join(split).join(class)).unwrap();
                for i in 0..3 {
                    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([i * 40, 10, 200]));
                    img.save(root.join(split).join(class).join(format!("{i}.png"))).unwrap();
                }
            }
        }
        root
    };
    let train = |root: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--arch", p(&tiny), "--backend", "cpu", "--data", p(root), "--no-checkpoint"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--out".to_string(), p(&root.join("m.safetensors")).to_string()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>, want: &[&str]| fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), want);

    // A corrupt picture, then a truncated one: named; with --skip-bad, counted, listed, left out.
    let root = make("corrupt");
    let bad = root.join("train/a/1.png");
    std::fs::write(&bad, b"this is not a png").unwrap();
    run(train(&root, &[]), &["1.png", "--skip-bad"]);
    let (code, out, err) = gpu_train_cmd(&train(&root, &["--skip-bad"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("skipped 1 picture(s)") && out.contains("train/a/1.png"), "{out}");
    assert!(out.contains("5 training / 6 test images"), "{out}");
    let root = make("truncated");
    let file = root.join("test/b/2.png");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    run(train(&root, &[]), &["test/b/2.png"]);
    // A picture claiming to be far too large to decode safely (a PNG header of 100000 x 100000).
    let root = make("huge");
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend(100_000u32.to_be_bytes());
    png.extend(100_000u32.to_be_bytes());
    png.extend([8, 2, 0, 0, 0]);
    png.extend(crc32fast::hash(&png[12..]).to_be_bytes());
    std::fs::write(root.join("train/b/0.png"), &png).unwrap();
    run(train(&root, &[]), &["train/b/0.png", "too large"]);
    // An empty class folder.
    let root = make("empty");
    for f in std::fs::read_dir(root.join("test/a")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    run(train(&root, &[]), &["test/a", "no pictures"]);
    // Train and test with different classes.
    let root = make("classes");
    std::fs::rename(root.join("test/b"), root.join("test/c")).unwrap();
    run(train(&root, &[]), &["differ", "only in the first: b", "only in the second: c"]);
    // No pictures at all.
    let root = dir.path().join("nothing");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("readme.txt"), "hello").unwrap();
    run(train(&root, &[]), &["nothing", "no class folders"]);
    run(train(&dir.path().join("absent"), &[]), &["absent", "no such"]);
    // A single folder of one picture: nothing left to hold out as a test set.
    let lone = dir.path().join("lone");
    std::fs::create_dir_all(lone.join("a")).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(lone.join("a/0.png")).unwrap();
    run(train(&lone, &[]), &["lone", "at least two pictures"]);
    // A truncated CIFAR batch file.
    let cifar = dir.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("data_batch_1.bin"), vec![1u8; 3073 * 2]).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), vec![1u8; 3073 + 100]).unwrap();
    run(train(&cifar, &[]), &["test_batch.bin", "3073-byte"]);
    // A model whose last layer does not have one unit per class.
    let root = make("units");
    let three = dir.path().join("three.toml");
    std::fs::write(&three, std::fs::read_to_string(&tiny).unwrap().replace("units = 2", "units = 3")).unwrap();
    let mut args = train(&root, &[]);
    args[1] = p(&three).to_string();
    run(args, &["2 classes (a, b)", "3 outputs", "units = 2"]);
}

/// The cache: written on the first run, read on the second, rebuilt when a picture changes
/// or when the cache file is damaged (never read wrong).
#[test]
fn the_cache_is_read_again_rebuilt_when_pictures_change_and_never_trusted_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pics");
    for class in ["x", "y"] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..4u8 {
            image::GrayImage::from_pixel(6, 6, image::Luma([i * 50 + (class == "y") as u8]))
                .save(root.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let o = LoadOptions { val_split: Some(0.25), ..LoadOptions::new([1, 6, 6]) };
    let first = source::load(&root, &o).unwrap();
    let cache_dir = root.join(".gpu-train-cache");
    let files = || -> Vec<PathBuf> { std::fs::read_dir(&cache_dir).unwrap().map(|e| e.unwrap().path()).collect() };
    assert_eq!(files().len(), 1);
    let second = source::load(&root, &o).unwrap();
    assert_eq!((&first.train, &first.test), (&second.train, &second.test));
    // A changed picture: a new key, the old cache replaced.
    let old = files();
    image::GrayImage::from_pixel(6, 6, image::Luma([222])).save(root.join("x/0.png")).unwrap();
    let changed = source::load(&root, &o).unwrap();
    assert_eq!(files().len(), 1);
    assert_ne!(files(), old);
    let mut all: Vec<u8> = changed.train.images.iter().chain(&changed.test.images).copied().collect();
    all.sort();
    assert!(all.contains(&222));
    // A damaged cache (one byte flipped in its pixels) is rebuilt, not read.
    let cache = files().remove(0);
    let mut bytes = std::fs::read(&cache).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0xff;
    std::fs::write(&cache, &bytes).unwrap();
    let rebuilt = source::load(&root, &o).unwrap();
    assert_eq!((&rebuilt.train, &rebuilt.test), (&changed.train, &changed.test));
    assert_ne!(std::fs::read(&cache).unwrap(), bytes, "the damaged cache was rewritten");
    // --no-cache neither reads nor writes one.
    std::fs::remove_dir_all(&cache_dir).unwrap();
    let _ = source::load(&root, &LoadOptions { cache: false, ..o.clone() }).unwrap();
    assert!(!cache_dir.exists());
}
