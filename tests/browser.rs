//! The browser page (web/) in headless Chromium on its bundled SwiftShader: Chrome's own
//! WGSL compiler (Tint) judges every kernel, a run trains in the page and matches the same
//! run on the CPU, and the model the page hands over works with the command line.
//!
//! The page is built from the current sources first (web/build.sh, into target/web so it
//! never waits on this test's own build lock). Outside CI a missing Chromium, wasm32 target
//! or wasm-bindgen skips these tests with a message; with CI=true it fails them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{ci, mnist_dir, p, repo};
use serde_json::Value;

/// web/dist built from the current sources (once per test binary), or None to skip.
fn dist() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = repo().join("target/web/dist");
        let r = Command::new("bash")
            .arg(repo().join("web/build.sh"))
            .arg(&out)
            .current_dir(repo())
            .output()
            .map_err(|e| format!("cannot run web/build.sh: {e}"))?;
        if !r.status.success() {
            return Err(format!(
                "web/build.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ));
        }
        Ok(out)
    });
    match built {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            assert!(!ci(), "CI=true but the page does not build: {e}");
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn chromium() -> Option<String> {
    let bin = std::env::var("GPU_TRAIN_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => Some(bin),
        other => {
            let msg = format!("{bin} is not runnable ({other:?}); install Debian's chromium");
            assert!(!ci(), "CI=true but {msg}");
            eprintln!("skipping: {msg}");
            None
        }
    }
}

/// A static file server for `root` on 127.0.0.1 (a secure context, as WebGPU needs) that
/// also keeps what the page POSTs to /upload/NAME. Returns the port and the uploads.
/// What the page posted: (name, bytes).
type Uploads = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn serve(root: PathBuf) -> (u16, Uploads) {
    serve_with(root, None)
}

/// `serve`, with the folder `extra` under /extra/ as well.
fn serve_with(root: PathBuf, extra: Option<PathBuf>) -> (u16, Uploads) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let kept = uploads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, extra, kept) = (root.clone(), extra.clone(), kept.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, &root, extra.as_deref(), &kept);
            });
        }
    });
    (port, uploads)
}

fn answer(
    stream: TcpStream,
    root: &Path,
    extra: Option<&Path>,
    uploads: &Mutex<Vec<(String, Vec<u8>)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let mut out = stream;
    let reply = |out: &mut TcpStream, status: &str, kind: &str, body: &[u8]| -> std::io::Result<()> {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)
    };
    if method == "POST" {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let name = path.trim_start_matches("/upload/").to_string();
        uploads.lock().unwrap().push((name, body));
        return reply(&mut out, "200 OK", "text/plain", b"ok");
    }
    let rel = if path == "/" { "index.html" } else { path.trim_start_matches('/') };
    if rel.split('/').any(|c| c == "..") {
        return reply(&mut out, "403 Forbidden", "text/plain", b"no");
    }
    // The repository's shipped models, for the page to load.
    let file = match (rel.strip_prefix("repo/models/"), rel.strip_prefix("extra/"), extra) {
        (Some(m), _, _) => repo().join("models").join(m),
        (_, Some(e), Some(dir)) => dir.join(e),
        _ => root.join(rel),
    };
    match std::fs::read(file) {
        Ok(body) => {
            let kind = match rel.rsplit('.').next() {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("wasm") => "application/wasm",
                _ => "application/octet-stream",
            };
            reply(&mut out, "200 OK", kind, &body)
        }
        Err(_) => reply(&mut out, "404 Not Found", "text/plain", b"not found"),
    }
}

/// What the page printed to its console (as Chromium logs it on stderr) until a line starting
/// with one of `until` (or an error) appeared, or `limit` passed.
fn console(bin: &str, url: &str, flags: &[&str], until: &[&str], limit: Duration) -> Vec<String> {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", p(profile.path())))
        .args(["--disable-background-networking", "--disable-component-update", "--enable-logging=stderr", "--v=0"])
        .args(flags)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        // A console message: `...:INFO:CONSOLE(n)] "text", source: URL (n)`, possibly over
        // several lines (a panic's stack).
        let mut message: Option<String> = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find(":CONSOLE") {
                let text = line[i..].split_once("] \"").map(|x| x.1).unwrap_or("").to_string();
                if let Some(m) = message.take() {
                    let _ = tx.send(m);
                }
                message = Some(text);
            } else if let Some(m) = message.as_mut() {
                m.push('\n');
                m.push_str(&line);
            }
            if message.as_ref().is_some_and(|m| m.contains("\", source: ")) {
                let m = message.take().unwrap();
                let _ = tx.send(m.split("\", source: ").next().unwrap_or("").to_string());
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    while start.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => {
                let stop = until.iter().any(|u| m.starts_with(u))
                    || m.starts_with("ERROR")
                    || m.contains("panicked")
                    || m.starts_with("Uncaught");
                lines.push(m);
                if stop {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

fn json_after<'a>(lines: &'a [String], prefix: &str) -> Option<Value> {
    let line: &'a String = lines.iter().find(|l| l.starts_with(prefix))?;
    Some(serde_json::from_str(&line[prefix.len()..]).unwrap_or_else(|e| panic!("{line}: {e}")))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// One page load does it all (a browser start and the wasm compile are the slow part): every
/// kernel against the reference on the page's WebGPU, one epoch of fc-b on 2000 images, a
/// prediction of a digit drawn on the pad, and the model and picture posted back.
#[test]
fn the_page_checks_every_kernel_trains_like_the_cli_and_hands_over_its_model() {
    let Some(bin) = chromium() else { return };
    let Some(root) = dist() else { return };
    let (port, uploads) = serve(root);
    let url = format!(
        "http://127.0.0.1:{port}/?selftest=1&data=mnist&arch=fc-b&epochs=1&limit=2000&seed=1&autostart=1&post=1&digit=3"
    );
    let flags = ["--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-webgpu-adapter=swiftshader"];
    let lines = console(&bin, &url, &flags, &["RESULT "], Duration::from_secs(900));
    let known = ["RESULT ", "SELFTEST ", "PROGRESS ", "ADAPTER ", "KERNELS "];
    // The page tunes its kernels on SwiftShader before the first step, as the CLI does.
    assert!(lines.iter().any(|l| l.starts_with("KERNELS kernels: tuned")), "no tuning line: {lines:?}");
    let errors: Vec<&String> = lines.iter().filter(|l| !known.iter().any(|k| l.starts_with(k))).collect();
    assert!(errors.is_empty(), "the page's console:\n{}", lines.join("\n"));

    // SwiftShader is a software adapter, and the page says so.
    let adapter = json_after(&lines, "ADAPTER ").unwrap_or_else(|| panic!("no ADAPTER line:\n{}", lines.join("\n")));
    assert_eq!(adapter["software"], true, "{adapter}");

    // What the page shows as it goes: a first word at once, the steps of the epoch as they
    // advance, the test's batches as they go, and never long without news.
    let shown: Vec<Value> =
        lines.iter().filter_map(|l| serde_json::from_str(l.strip_prefix("PROGRESS ")?).ok()).collect();
    let at = |v: &Value| f(v, "at") / 1000.0;
    assert!(shown.first().is_some_and(|v| at(v) < 1.0), "no word within a second of the start: {shown:?}");
    let steps: Vec<f64> = shown
        .iter()
        .filter(|v| v["phase"] == "training")
        .filter_map(|v| v["step"].as_f64())
        .filter(|&s| s > 0.0)
        .collect();
    assert!(steps.len() >= 3 && steps.windows(2).all(|w| w[1] >= w[0]), "the steps as they advance: {steps:?}");
    assert!(steps.iter().any(|&s| s < 125.0), "progress within the epoch of 125 steps: {steps:?}");
    let first_step =
        shown.iter().find(|v| v["phase"] == "training" && v["step"].as_f64().unwrap_or(0.0) > 0.0).unwrap();
    assert!(at(first_step) < 60.0, "the first step's progress came after {} s", at(first_step));
    assert!(
        shown
            .iter()
            .any(|v| v["phase"].as_str().is_some_and(|p| p.contains("all 10000 test pictures")) && f(v, "total") > 1.0),
        "the final test's progress: {shown:?}"
    );
    let gaps: Vec<f64> = shown.windows(2).map(|w| at(&w[1]) - at(&w[0])).collect();
    let longest = gaps.iter().cloned().fold(0.0, f64::max);
    assert!(longest < 10.0, "the page went {longest:.1} s without news: {shown:?}");

    // Tint compiled every kernel and each matches the f64 reference on the page's GPU.
    let st = json_after(&lines, "SELFTEST ").unwrap_or_else(|| panic!("no SELFTEST line:\n{}", lines.join("\n")));
    assert_eq!(f(&st, "failed"), 0.0, "{}", lines.join("\n"));
    assert!(f(&st, "passed") >= 40.0, "too few kernel checks ran: {st}");

    // The same run natively on the GPU (the same seed: the same initialisation, batches,
    // dropout and augmentation) ends in the same place up to float rounding (another driver,
    // another shader compiler).
    let page = json_after(&lines, "RESULT ").unwrap_or_else(|| panic!("no RESULT line:\n{}", lines.join("\n")));
    for (key, want) in [("arch", "fc-b"), ("epochs", "1"), ("limit", "2000"), ("seed", "1")] {
        assert_eq!(page[key].to_string().trim_matches('"'), want, "{key} in {page}");
    }
    // The epochs tested a fixed sample of 1,000 of the 10,000 test pictures; the result is the
    // whole test set's.
    assert_eq!((f(&page, "epoch_test_images"), f(&page, "test_images")), (1000.0, 10_000.0), "{page}");
    assert!(f(&page, "seconds") > 0.0 && page["adapter"].as_str().is_some_and(|a| !a.is_empty()), "{page}");
    let tmp = tempfile::tempdir().unwrap();
    let native = tmp.path().join("native.safetensors");
    let (code, out, err) = crate::common::gpu_train_cmd(&[
        "--arch",
        "fc-b",
        "--epochs",
        "1",
        "--limit",
        "2000",
        "--seed",
        "1",
        "--backend",
        "gpu",
        "--kernels",
        "default",
        "--out",
        p(&native),
    ]);
    if code != 0 && !ci() && err.contains("adapter") {
        eprintln!("skipping the native comparison: no GPU adapter here ({err})");
        return;
    }
    assert_eq!(code, 0, "{out}\n{err}");
    let cli = gpu_train::modelfile::load(&native, None).unwrap().metrics().unwrap();
    let cli_train_loss: f64 = out
        .lines()
        .find_map(|l| l.split("train loss ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no train loss in:\n{out}"));
    let (pa, ca) = (f(&page, "test_accuracy"), f(&cli, "test_accuracy"));
    assert!(pa > 0.6, "one epoch on 2000 images should pass 60%: {page}");
    assert!((pa - ca).abs() < 0.01, "test accuracy: page {pa}, CLI {ca}");
    let (pl, cl) = (f(&page, "train_loss"), cli_train_loss);
    assert!((pl - cl).abs() < 0.02 * cl, "training loss: page {pl}, CLI {cl}");
    let (ptl, ctl) = (f(&page, "test_loss"), f(&cli, "test_loss"));
    assert!((ptl - ctl).abs() < 0.03 * ctl, "test loss: page {ptl}, CLI {ctl}");

    // The page's model file, evaluated by the library on the CPU, scores what the page said.
    let up = uploads.lock().unwrap().clone();
    let file = |name: &str| up.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).expect(name);
    let model_path = tmp.path().join("page.safetensors");
    std::fs::write(&model_path, file("model.safetensors")).unwrap();
    let model = gpu_train::modelfile::load(&model_path, None).unwrap();
    let (_, test) = gpu_train::data::load_dir(&mnist_dir()).unwrap();
    let mut cpu = gpu_train::cpu::CpuBackend::new();
    let scored = pollster::block_on(gpu_train::evaluate::score(&mut cpu, &model, "page", &test)).unwrap();
    let acc = scored.accuracy(&test.labels);
    assert!((acc - pa).abs() <= 2.0 / test.len() as f64, "the page said {pa}, its file scores {acc}");

    // The curves the page drew: the epoch's test accuracy (on the epochs' sample) where the
    // run ended, on labelled axes.
    let svg = String::from_utf8(file("accuracy.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the accuracy chart parses as XML");
    let text: String = doc.descendants().filter(|n| n.is_text()).filter_map(|n| n.text()).collect();
    assert!(text.contains("epoch") && text.contains("accuracy (%)"), "unlabelled axes: {text}");
    let meta = doc.descendants().find(|n| n.has_tag_name("metadata")).and_then(|n| n.text()).expect("chart metadata");
    let meta: Value = serde_json::from_str(meta).unwrap();
    let test_series = meta["series"].as_array().unwrap().iter().find(|s| s["label"] == "test").expect("a test series");
    let last = test_series["points"].as_array().unwrap().last().expect("a test point").clone();
    let epoch_acc = f(&page, "epoch_test_accuracy");
    assert!((last[1].as_f64().unwrap() - 100.0 * epoch_acc).abs() < 1e-6, "chart {last} against {epoch_acc}");
    let loss_svg = String::from_utf8(file("loss.svg")).unwrap();
    assert!(loss_svg.matches("<polyline").count() + loss_svg.matches("<path").count() >= 1, "no loss curve drawn");

    // The digit the page drew, predicted by the command line: the same three guesses.
    let digit = tmp.path().join("digit.png");
    std::fs::write(&digit, file("digit.png")).unwrap();
    let (code, out, err) =
        crate::common::gpu_train_cmd(&["predict", "--model", p(&model_path), "--backend", "cpu", p(&digit)]);
    assert_eq!(code, 0, "{out}\n{err}");
    let guesses = page["guesses"].as_array().expect("the page's guesses");
    assert_eq!(guesses.len(), 3, "{page}");
    let top = &guesses[0];
    let name = top["name"].as_str().unwrap();
    let prob = f(top, "probability");
    assert!(guesses.windows(2).all(|w| f(&w[0], "probability") >= f(&w[1], "probability")), "{page}");
    // "PATH: 3  [top 3: 3 (45.2%), 5 (20.1%), 8 (9.9%)]"
    let first = out.split("[top 3: ").nth(1).and_then(|t| t.split(", ").next()).unwrap_or("");
    let (cli_name, cli_pct) = first.split_once(" (").unwrap_or_else(|| panic!("unexpected predict output:\n{out}"));
    let cli_prob: f64 = cli_pct.trim_end_matches(['%', ')', ']', '\n']).parse::<f64>().unwrap() / 100.0;
    assert_eq!(cli_name, name, "the page guessed {name} ({prob}); the command line says:\n{out}");
    assert!((cli_prob - prob).abs() < 0.002, "the page gave {name} {prob}; the command line says:\n{out}");
}

/// The four IDX files of the first `n_train` MNIST training and `n_test` test images, in `dir`.
fn small_mnist(dir: &Path, n_train: usize, n_test: usize) {
    let (train, test) = gpu_train::data::load_dir(&mnist_dir()).unwrap();
    for (set, n, stem) in [(train, n_train, "train"), (test, n_test, "t10k")] {
        let set = set.take(n);
        let mut images = [0x0803u32, n as u32, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
        images.extend(&set.images);
        let mut labels = [0x0801u32, n as u32].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
        labels.extend(set.labels.iter().map(|&l| l as u8));
        std::fs::write(dir.join(format!("{stem}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{stem}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// A model file the page is given by URL, with residual blocks of every wiring (identity,
/// projection, nested, over flat features), gelu, silu, leaky relu, average and global
/// pooling, SGD with Nesterov momentum and weight decay, label smoothing and pad-and-crop
/// shifts, trains in the page as it does natively on the GPU.
#[test]
fn the_page_trains_a_residual_model_file_like_the_cli() {
    let Some(bin) = chromium() else { return };
    let Some(root) = dist() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Few steps: a software adapter runs small convolutions slowly (issue 32's kernels), and
    // the point is the same arithmetic, not accuracy.
    small_mnist(tmp.path(), 64, 64);
    std::fs::copy(repo().join("tests/fixtures/residual_small.toml"), tmp.path().join("residual.toml")).unwrap();
    let (port, _) = serve_with(root, Some(tmp.path().to_path_buf()));
    let url = format!(
        "http://127.0.0.1:{port}/?data=/extra/&modelfile=/extra/residual.toml&epochs=1&batch=32&seed=3&autostart=1&estimate=1&kernels=default&profile=1"
    );
    let flags = ["--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-webgpu-adapter=swiftshader"];
    let lines = console(&bin, &url, &flags, &["RESULT "], Duration::from_secs(600));
    let page = json_after(&lines, "RESULT ").unwrap_or_else(|| panic!("no RESULT line:\n{}", lines.join("\n")));
    assert_eq!(page["arch"], "residual-small", "{page}");
    // profile=1: every training step's kernels timed (the epoch's test left out), the
    // steps' wall time beside them.
    let prof = &page["profile"];
    assert_eq!((f(prof, "steps"), f(prof, "untimed")), (2.0, 0.0), "{prof}");
    let kernels = prof["kernels"].as_array().unwrap_or_else(|| panic!("no kernels in {prof}"));
    let names: Vec<&str> = kernels.iter().filter_map(|k| k[0].as_str()).collect();
    for k in ["conv2d_forward", "conv2d_backward_weight", "residual_add"] {
        assert!(names.iter().any(|n| n.starts_with(k)), "{k} not in {names:?}");
    }
    // The test's loss without a gradient is not a training step's.
    assert!(!names.contains(&"softmax_xent_forward"), "the test's kernels were timed: {names:?}");
    let kernel_sum: f64 = kernels.iter().map(|k| k[1].as_f64().unwrap()).sum();
    assert!((kernel_sum - f(prof, "kernel_seconds_per_step")).abs() < 1e-9 && kernel_sum > 0.0, "{prof}");
    assert!(f(&page, "seconds_per_step") > 0.0, "{page}");
    // Before training, the time per epoch measured on a few steps of this adapter.
    let e = json_after(&lines, "ESTIMATE ").unwrap_or_else(|| panic!("no ESTIMATE line:\n{}", lines.join("\n")));
    assert_eq!(
        (e["arch"].as_str(), f(&e, "steps_per_epoch"), f(&e, "batch")),
        (Some("residual-small"), 2.0, 32.0),
        "{e}"
    );
    assert!(f(&e, "seconds_per_step") > 0.0 && f(&e, "timed_steps") >= 1.0, "{e}");
    let (train, test) = (f(&e, "train_seconds"), f(&e, "test_seconds"));
    assert!((f(&e, "seconds_per_epoch") - train - test).abs() < 1e-9 && test > 0.0, "{e}");
    let native = tmp.path().join("native.safetensors");
    let model = tmp.path().join("residual.toml");
    let args = ["--arch", p(&model), "--data-dir", p(tmp.path()), "--epochs", "1", "--batch", "32"];
    let (code, out, err) = crate::common::gpu_train_cmd(
        &[&args[..], &["--seed", "3", "--backend", "gpu", "--kernels", "default", "--out", p(&native)]].concat(),
    );
    if code != 0 && !ci() && err.contains("adapter") {
        eprintln!("skipping the native comparison: no GPU adapter here ({err})");
        return;
    }
    assert_eq!(code, 0, "{out}\n{err}");
    let cli = gpu_train::modelfile::load(&native, None).unwrap().metrics().unwrap();
    let cli_train_loss: f64 = out
        .lines()
        .rev()
        .find_map(|l| l.split("train loss ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no train loss in:\n{out}"));
    // Drivers round differently (see the test above): 64 test images, so 2 points are one.
    let (pa, ca) = (f(&page, "test_accuracy"), f(&cli, "test_accuracy"));
    assert!((pa - ca).abs() <= 0.02, "test accuracy: page {pa}, CLI {ca}");
    assert_eq!(f(&page, "train_images"), 64.0, "{page}");
    let (pl, cl) = (f(&page, "train_loss"), cli_train_loss);
    assert!((pl - cl).abs() < 0.02 * cl, "training loss: page {pl}, CLI {cl}");
    let (ptl, ctl) = (f(&page, "test_loss"), f(&cli, "test_loss"));
    assert!((ptl - ctl).abs() < 0.03 * ctl, "test loss: page {ptl}, CLI {ctl}");
}

/// A shipped model loaded into the page scores there what it scored when it was saved.
#[test]
fn the_page_evaluates_a_shipped_model() {
    let Some(bin) = chromium() else { return };
    let Some(root) = dist() else { return };
    let (port, _) = serve(root);
    let url = format!("http://127.0.0.1:{port}/?model=/repo/models/fc-b.safetensors&data=mnist&evaluate=1");
    let flags = ["--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-webgpu-adapter=swiftshader"];
    let lines = console(&bin, &url, &flags, &["EVAL "], Duration::from_secs(300));
    let eval = json_after(&lines, "EVAL ").unwrap_or_else(|| panic!("no EVAL line:\n{}", lines.join("\n")));
    let saved = gpu_train::modelfile::load(&repo().join("models/fc-b.safetensors"), None).unwrap().metrics().unwrap();
    let (got, want) = (f(&eval, "accuracy"), f(&saved, "test_accuracy"));
    assert_eq!(f(&eval, "count"), 10_000.0, "{eval}");
    assert!((got - want).abs() <= 2e-4, "the page scores fc-b {got}, saved with {want}");
}

/// A browser without WebGPU gets the page's explanation (what to enable), not a blank page.
#[test]
fn the_page_explains_a_browser_without_webgpu() {
    let Some(bin) = chromium() else { return };
    let Some(root) = dist() else { return };
    let (port, _) = serve(root);
    let url = format!("http://127.0.0.1:{port}/");
    let lines = console(&bin, &url, &["--disable-features=WebGPU"], &[], Duration::from_secs(120));
    assert!(
        lines.iter().any(|l| l.starts_with("ERROR no WebGPU")),
        "the page should report the missing WebGPU:\n{}",
        lines.join("\n")
    );
}
