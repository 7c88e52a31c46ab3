//! `report` and `lr-find` as a user runs them: the page and the plots parse as XML, the
//! plotted points are the metrics logs' values (and the drawn lines sit where those values
//! belong), an array's manifest overlays its members and its ensemble, the page opens in
//! headless Chromium without console errors, and lr-find's suggestion trains at least as well
//! as ten times more and ten times less.

use std::path::{Path, PathBuf};

use crate::common::*;
use base64::Engine;
use serde_json::Value;

fn run_ok(args: &[&str]) -> String {
    let (code, out, err) = gpu_train_cmd(args);
    assert_eq!(code, 0, "{args:?} failed:\n{out}\n{err}");
    out
}

/// The page as XML: well formed, with its `<!DOCTYPE html>` (a DTD, which roxmltree only
/// reads when told to).
fn parse_page(html: &str) -> roxmltree::Document<'_> {
    let opt = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    roxmltree::Document::parse_with_options(html, opt).expect("the page parses as XML")
}

/// A metrics log's lines.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// An SVG document's `<metadata>` (the JSON the plot module puts there).
fn metadata(doc: &roxmltree::Document) -> Value {
    let m = doc.descendants().find(|n| n.has_tag_name("metadata")).expect("a <metadata> element");
    serde_json::from_str(m.text().unwrap_or("")).expect("metadata is JSON")
}

/// The series labelled `label` with stroke `stroke` in a chart's metadata, as (x, y) points.
fn series(meta: &Value, label: &str, stroke: &str) -> Vec<(f64, f64)> {
    let s = meta["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == label && s["stroke"] == stroke)
        .unwrap_or_else(|| panic!("no {stroke} series '{label}' in {}", meta["series"]));
    s["points"].as_array().unwrap().iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect()
}

fn assert_points(what: &str, got: &[(f64, f64)], want: &[(f64, f64)]) {
    assert_eq!(got.len(), want.len(), "{what}: {} points plotted, the log has {}", got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        // Accuracy is plotted in percent: 100 * acc may differ from the log in the last bit.
        assert!((g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() <= 1e-12 * w.1.abs().max(1.0), "{what}: {g:?} vs {w:?}");
    }
}

/// Every bold series of a chart is drawn as one polyline of its colour, each vertex within
/// two pixels of where its value belongs on the chart's axes.
fn assert_drawn_where_they_belong(svg: &str) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
    let meta = metadata(&doc);
    let area: Vec<f64> = meta["area"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (left, right, top, bottom) = (area[0], area[1] - 1.0, area[2], area[3] - 1.0);
    let axis = |v: f64, range: &Value, log: bool| {
        let (lo, hi) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
        if log { (v.ln() - lo.ln()) / (hi.ln() - lo.ln()) } else { (v - lo) / (hi - lo) }
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .map(|n| {
            let pts = n.attribute("points").unwrap_or("").split_whitespace().map(|xy| {
                let (x, y) = xy.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            });
            (n.attribute("stroke").unwrap_or("").to_string(), pts.collect())
        })
        .collect();
    let mut checked = 0;
    for s in meta["series"].as_array().unwrap().iter().filter(|s| s["stroke"] == "bold") {
        let points: Vec<(f64, f64)> =
            s["points"].as_array().unwrap().iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect();
        if points.len() < 3 {
            continue;
        }
        let want: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| {
                let px = left + axis(x, &meta["x_range"], meta["x_log"] == true) * (right - left);
                let py = bottom - axis(y, &meta["y_range"], meta["y_log"] == true) * (bottom - top);
                (px, py)
            })
            .collect();
        let color = s["color"].as_str().unwrap();
        let found = lines.iter().any(|(stroke, got)| {
            stroke == color
                && got.len() == want.len()
                && got.iter().zip(&want).all(|(g, w)| (g.0 - w.0).abs() <= 2.0 && (g.1 - w.1).abs() <= 2.0)
        });
        assert!(found, "series {} ({color}): no polyline at its values' pixels {want:?}", s["label"]);
        checked += 1;
    }
    assert!(checked > 0, "no bold series checked in {}", meta["series"]);
}

/// The files the report wrote: the page, and the SVGs by name.
fn report(args: &[&str], dir: &Path) -> (String, Vec<(String, String)>) {
    let (html, svg) = (dir.join("report.html"), dir.join("svg"));
    let mut all = vec!["report", "--out", p(&html), "--svg", p(&svg)];
    all.extend_from_slice(args);
    run_ok(&all);
    let mut svgs: Vec<(String, String)> = std::fs::read_dir(&svg)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    svgs.sort();
    (std::fs::read_to_string(&html).unwrap(), svgs)
}

fn svg<'a>(svgs: &'a [(String, String)], name: &str) -> &'a str {
    &svgs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name} among {svgs:?}")).1
}

#[test]
fn a_report_of_two_models_shows_their_logs_matrix_and_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let (html, svgs) = report(&["models/mlp.safetensors", "models/fc-b.safetensors", "--mistakes", "6"], tmp.path());
    let doc = parse_page(&html);
    // The curves are the logs' values, drawn where they belong.
    for (name, log) in [("mlp", "models/logs/mlp.metrics.jsonl"), ("fc-b", "models/logs/fc-b.metrics.jsonl")] {
        let lines = log_lines(&repo().join(log));
        let pick = |k: &str, scale: f64| -> Vec<(f64, f64)> {
            lines.iter().map(|l| (l["epoch"].as_f64().unwrap(), scale * l[k].as_f64().unwrap())).collect()
        };
        let loss = roxmltree::Document::parse(svg(&svgs, "loss.svg")).unwrap();
        assert_points(name, &series(&metadata(&loss), name, "bold"), &pick("test_loss", 1.0));
        let acc = roxmltree::Document::parse(svg(&svgs, "accuracy.svg")).unwrap();
        assert_points(name, &series(&metadata(&acc), name, "bold"), &pick("test_acc", 100.0));
        let lr = roxmltree::Document::parse(svg(&svgs, "lr.svg")).unwrap();
        assert_points(name, &series(&metadata(&lr), name, "bold"), &pick("lr", 1.0));
    }
    for name in ["loss.svg", "accuracy.svg", "error.svg", "lr.svg"] {
        assert_drawn_where_they_belong(svg(&svgs, name));
    }
    // The confusion matrix covers the whole test set; its last column is per-class accuracy.
    let matrix = roxmltree::Document::parse(svg(&svgs, "confusion-mlp.svg")).unwrap();
    let m = metadata(&matrix);
    assert_eq!(m["rows"].as_array().unwrap().len(), 10);
    let count = |c: &Value| c["text"].as_str().unwrap().parse::<usize>().unwrap_or(0);
    let total: usize =
        m["cells"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()[..10].iter().map(count)).sum();
    assert_eq!(total, 10_000);
    // Every chart is inline, and the mistakes are pictures that decode.
    let svgs_inline = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
    assert_eq!(svgs_inline, 4 + 2, "four charts and two matrices");
    let imgs: Vec<&str> =
        doc.descendants().filter(|n| n.has_tag_name("img")).filter_map(|n| n.attribute("src")).collect();
    assert_eq!(imgs.len(), 12, "six mistakes per model");
    for src in imgs {
        let b64 = src.strip_prefix("data:image/png;base64,").expect("an inline PNG");
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28));
    }
    for want in ["Layers", "Recipe", "cross_entropy", "training time", "true class", "said"] {
        assert!(html.contains(want), "the page lacks '{want}'");
    }
    assert!(!html.contains("<script"), "the page needs no scripts");
}

/// A residual model's report draws its layer table with the blocks: each block a line of its
/// own, its body's and shortcut's layers indented under it.
#[test]
fn a_residual_model_reports_its_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("res.safetensors");
    let fixture = repo().join("tests/fixtures/residual_small.toml");
    run_ok(&["--arch", p(&fixture), "--backend", "cpu", "--limit", "200", "--out", p(&model)]);
    let (html, _) = report(&[p(&model), "--mistakes", "0"], tmp.path());
    let doc = parse_page(&html);
    let layers = doc
        .descendants()
        .filter(|n| n.has_tag_name("pre"))
        .filter_map(|n| n.text())
        .find(|t| t.contains("parameters"))
        .expect("a layer table");
    let lines: Vec<&str> = layers.lines().collect();
    let block = lines.iter().position(|l| l.trim_start().starts_with("5 ") && l.contains("residual")).expect("block 5");
    assert!(lines[block + 1].starts_with("    body.0") && lines[block + 1].contains("conv2d 3x3 /2"), "{layers}");
    assert!(lines.iter().any(|l| l.starts_with("      body.0") && l.contains("conv2d")), "the nested block: {layers}");
    assert!(lines.iter().any(|l| l.contains("shortcut.1") && l.contains("batch_norm")), "{layers}");
    assert!(lines.iter().any(|l| l.contains("residual, identity shortcut")), "{layers}");
}

/// A model array as its writer leaves it: member files with their logs (trained here, small),
/// a manifest naming them with their seeds and swept rates, and the array's log.
fn array_fixture(dir: &Path) -> PathBuf {
    let mut members = Vec::new();
    for (seed, lr) in [(1, 0.001), (2, 0.002)] {
        let file = format!("arr-s{seed}-lr{lr}.safetensors");
        let (s, l, out) = (seed.to_string(), lr.to_string(), dir.join(&file));
        run_ok(
            &["--arch", "fc-b", "--backend", "cpu", "--epochs", "3", "--limit", "2000", "--seed", &s, "--lr", &l]
                .into_iter()
                .chain(["--no-checkpoint", "--out", p(&out)])
                .collect::<Vec<_>>(),
        );
        let lines = log_lines(&dir.join(format!("arr-s{seed}-lr{lr}.metrics.jsonl")));
        members.push((file, seed, lr, lines));
    }
    let manifest = serde_json::json!({
        "members": members.iter().map(|(file, seed, lr, lines)| serde_json::json!({
            "file": file, "seed": seed, "lr": lr, "best_epoch": 3,
            "test_accuracy": lines.last().unwrap()["test_acc"], "status": "finished",
        })).collect::<Vec<_>>(),
        "ensemble_test_accuracy": 0.9,
    });
    std::fs::write(dir.join("arr.members.json"), manifest.to_string()).unwrap();
    let mut log = String::new();
    for epoch in 1..=3 {
        let line = serde_json::json!({
            "epoch": epoch,
            "ensemble_test_acc": 0.8 + 0.03 * epoch as f64,
            "ensemble_test_loss": 0.9 / epoch as f64,
            "members": members.iter().map(|(file, seed, lr, lines)| {
                let l = &lines[epoch - 1];
                serde_json::json!({"file": file, "seed": seed, "train_loss": l["train_loss"], "train_acc": l["train_acc"],
                    "test_loss": l["test_loss"], "test_acc": l["test_acc"], "lr": lr, "status": "training"})
            }).collect::<Vec<_>>(),
        });
        log.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("arr.metrics.jsonl"), log).unwrap();
    dir.join("arr.members.json")
}

#[test]
fn an_array_overlays_its_members_and_ensemble() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = array_fixture(tmp.path());
    let out = tmp.path().join("out");
    let (html, svgs) = report(&[p(&manifest), "--mistakes", "4"], &out);
    parse_page(&html);
    let acc = roxmltree::Document::parse(svg(&svgs, "accuracy.svg")).unwrap();
    let meta = metadata(&acc);
    for (seed, lr) in [(1, "0.001"), (2, "0.002")] {
        let lines = log_lines(&tmp.path().join(format!("arr-s{seed}-lr{lr}.metrics.jsonl")));
        let want: Vec<(f64, f64)> =
            lines.iter().map(|l| (l["epoch"].as_f64().unwrap(), 100.0 * l["test_acc"].as_f64().unwrap())).collect();
        assert_points("member", &series(&meta, &format!("s{seed} lr={lr}"), "bold"), &want);
    }
    let ensemble: Vec<(f64, f64)> = (1..=3).map(|e| (e as f64, 100.0 * (0.8 + 0.03 * e as f64))).collect();
    assert_points("ensemble", &series(&meta, "arr ensemble", "bold"), &ensemble);
    assert!(html.contains("ensemble of 2") && html.contains("s2 lr=0.002"), "the members and their ensemble evaluated");
    assert!(svgs.iter().any(|(n, _)| n == "confusion-arr.svg"));
    // The array's log alone finds its manifest beside it.
    let (again, _) = report(&["--no-eval", p(&tmp.path().join("arr.metrics.jsonl"))], &tmp.path().join("again"));
    assert!(again.contains("arr ensemble"));
}

#[test]
fn a_log_without_its_model_shows_curves_and_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("mlp.metrics.jsonl");
    std::fs::copy(repo().join("models/logs/mlp.metrics.jsonl"), &log).unwrap();
    let html_path = tmp.path().join("r.html");
    run_ok(&["report", p(&log), "--out", p(&html_path)]);
    let html = std::fs::read_to_string(&html_path).unwrap();
    let doc = parse_page(&html);
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("svg")).count(), 4);
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("img")).count(), 0);
    assert!(html.contains("need the model file"), "the page says why there is no matrix");
}

#[test]
fn bad_runs_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r.html");
    let line = one_line_error(&["report", "/nonexistent/run.safetensors", "--out", p(&out)]);
    assert!(line.contains("/nonexistent/run.safetensors"), "{line}");
    let log = tmp.path().join("bad.metrics.jsonl");
    std::fs::write(&log, "{\"epoch\": 1, \"test_acc\": 0.5}\nnot json\n").unwrap();
    assert!(one_line_error(&["report", p(&log), "--out", p(&out)]).contains("line 2"));
    let manifest = tmp.path().join("x.members.json");
    std::fs::write(&manifest, "{\"members\": 3}").unwrap();
    assert!(one_line_error(&["report", p(&manifest), "--out", p(&out)]).contains("manifest"));
    assert!(one_line_error(&["lr-find", "--arch", "fc-b", "--steps", "5"]).contains("steps"));
    assert!(one_line_error(&["lr-find", "--arch", "fc-b", "--start-lr", "1", "--end-lr", "0.1"]).contains("rise"));
}

/// Chromium, or None (skip, with a message) outside CI.
fn chromium() -> Option<String> {
    let bin = std::env::var("GPU_TRAIN_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    match std::process::Command::new(&bin).arg("--version").output() {
        Ok(o) if o.status.success() => Some(bin),
        other => {
            let msg = format!("{bin} is not runnable ({other:?}); install Debian's chromium");
            assert!(!ci(), "CI=true but {msg}");
            eprintln!("skipping: {msg}");
            None
        }
    }
}

#[test]
fn the_page_opens_in_headless_chromium_without_console_errors() {
    let Some(bin) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let html = tmp.path().join("report.html");
    run_ok(&["report", "models/mlp.safetensors", "--mistakes", "6", "--out", p(&html)]);
    let shot = tmp.path().join("shot.png");
    let profile = tmp.path().join("profile");
    let out = std::process::Command::new(bin)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", p(&profile)))
        .args(["--disable-background-networking", "--disable-component-update", "--no-first-run"])
        .args(["--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1200,3000"])
        .arg(format!("--screenshot={}", p(&shot)))
        .arg(format!("file://{}", p(&html)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {err}");
    // The page's console messages come as `INFO:CONSOLE... "message", source: file://...`.
    let console: Vec<&str> = err.lines().filter(|l| l.contains(":CONSOLE") || l.contains("source: file://")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = image::open(&shot).expect("a screenshot");
    assert_eq!((png.width(), png.height()), (1200, 3000));
    // Something was drawn: the screenshot is not one flat colour.
    let rgb = png.to_rgb8();
    let first = rgb.get_pixel(0, 0);
    assert!(rgb.pixels().filter(|px| *px != first).count() > 10_000, "a blank screenshot");
}

/// lr-find's printed suggestion, and its plot's metadata.
fn lr_find(args: &[&str], plot: &Path) -> (f64, Value, String) {
    let mut all = vec!["lr-find", "--plot", p(plot)];
    all.extend_from_slice(args);
    let out = run_ok(&all);
    let last = out.lines().last().unwrap_or("");
    let lr: f64 = last
        .strip_prefix("suggested lr: ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the last line should be 'suggested lr: <value>':\n{out}"));
    let svg = std::fs::read_to_string(plot).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the plot parses as XML");
    (lr, metadata(&doc), out)
}

/// Test accuracy after one short epoch at `lr`.
fn short_run(arch: &str, lr: f64, dir: &Path) -> f64 {
    let out = dir.join(format!("{arch}-{lr}.safetensors"));
    let lr = lr.to_string();
    let args = ["--arch", arch, "--backend", "cpu", "--epochs", "1", "--limit", "6000", "--lr", &lr];
    run_ok(&args.into_iter().chain(["--no-checkpoint", "--out", p(&out)]).collect::<Vec<_>>());
    let m = gpu_train::modelfile::load(&out, None).unwrap();
    m.metrics().unwrap()["test_accuracy"].as_f64().unwrap()
}

#[test]
fn lr_find_suggests_a_rate_that_trains_at_least_as_well_as_ten_times_more_or_less() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["fc-b", "cnn2"] {
        let plot = tmp.path().join(format!("{arch}.svg"));
        let written = tmp.path().join(format!("{arch}-lr.toml"));
        let args = ["--arch", arch, "--backend", "cpu", "--limit", "6000", "--write", p(&written)];
        let (lr, meta, out) = lr_find(&args, &plot);
        assert!(out.contains("minimum/10"), "the rule is stated:\n{out}");
        // The plot is the test: the smoothed curve's points are the ramp's rates, and the
        // suggestion is marked.
        let smoothed = series(&meta, "smoothed (beta 0.98)", "bold");
        assert!(smoothed.len() >= 100, "{} points", smoothed.len());
        assert!(smoothed.windows(2).all(|w| w[1].0 > w[0].0), "rates rise");
        assert!((smoothed[0].0 - 1e-7).abs() < 1e-15);
        assert_eq!(meta["x_log"], true);
        assert!((meta["markers"][0]["x"].as_f64().unwrap() - lr).abs() < 1e-12 * lr);
        assert_drawn_where_they_belong(&std::fs::read_to_string(&plot).unwrap());
        // --write: the model file with that rate.
        let spec = gpu_train::model::presets::load(p(&written)).unwrap();
        assert!((spec.train.optimizer.lr() as f64 - lr).abs() < 1e-6 * lr);
        let accs: Vec<f64> = [lr / 10.0, lr, lr * 10.0].iter().map(|&r| short_run(arch, r, tmp.path())).collect();
        eprintln!("{arch}: suggested {lr}; test accuracy at lr/10, lr, 10 lr: {accs:?}");
        assert!(accs[1] >= accs[0] && accs[1] >= accs[2], "{arch}: suggested {lr}, accuracies {accs:?}");
    }
}

#[test]
fn lr_find_runs_on_the_gpu_like_training() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |backend: &'static str, plot: &Path| -> Vec<String> {
        ["lr-find", "--arch", "fc-b", "--steps", "40", "--limit", "1000", "--backend", backend, "--plot", p(plot)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let gpu = args("gpu", &tmp.path().join("gpu.svg"));
    let (code, out, err) = gpu_train_cmd(&gpu.iter().map(String::as_str).collect::<Vec<_>>());
    if code != 0 && (err.contains("adapter") || err.contains("GPU")) {
        assert!(!ci(), "CI=true but the GPU run failed: {err}");
        return eprintln!("skipping GPU test: {err}");
    }
    assert_eq!(code, 0, "{out}\n{err}");
    let cpu = args("cpu", &tmp.path().join("cpu.svg"));
    let cpu_out = run_ok(&cpu.iter().map(String::as_str).collect::<Vec<_>>());
    // The first step's loss (fresh weights, the same batch) agrees to the printed digits.
    let first = |text: &str| -> f64 {
        let row = text.lines().find(|l| l.split_whitespace().next() == Some("0")).unwrap();
        row.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert!((first(&out) - first(&cpu_out)).abs() < 2e-3, "gpu {out}\ncpu {cpu_out}");
    assert!(out.lines().last().unwrap().starts_with("suggested lr: "));
}
