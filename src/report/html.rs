//! The report page: one HTML file with its CSS, SVG charts and PNG pictures inline and no
//! scripts, so it opens offline and anywhere. It is also well-formed XML (every tag closed,
//! text escaped), so a test can parse it as such.

use std::fmt::Write;

use serde_json::Value;

use super::runs::Group;
use super::{Evaluation, ModelInfo};
use crate::plot::escape;

/// One group's part of the page.
pub struct Section<'a> {
    pub group: &'a Group,
    /// The first model's record (an array's members share architecture and recipe).
    pub info: Option<ModelInfo>,
    pub eval: Option<Evaluation>,
    /// The confusion matrix, drawn.
    pub confusion_svg: Option<String>,
}

pub struct Page<'a> {
    pub title: String,
    /// The curves, drawn (inline SVG documents).
    pub charts: Vec<String>,
    pub sections: Vec<Section<'a>>,
}

const CSS: &str = "
body { font-family: sans-serif; margin: 24px auto; max-width: 1320px; color: #222; padding: 0 16px; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 21px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
.sub, .note { color: #666; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(564px, 1fr)); gap: 12px; }
.charts svg, .matrix svg { max-width: 100%; height: auto; border: 1px solid #eee; }
.mistakes { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 112px; font-size: 12px; text-align: center; }
figure img { width: 84px; height: 84px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption b { color: #b22; }
pre { background: #f7f7f7; padding: 8px 12px; font-size: 13px; overflow-x: auto; }
.notes li { color: #8a5a00; }
";

/// The whole page.
pub fn render(p: &Page) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n");
    h.push_str("<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(h, "<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>", escape(&p.title));
    let _ = writeln!(h, "<h1>{}</h1>", escape(&p.title));
    let sources: Vec<String> = p.sections.iter().map(|s| s.group.source.display().to_string()).collect();
    let _ = writeln!(
        h,
        "<p class=\"sub\">from {} &#183; gpu-train {}</p>",
        escape(&sources.join(", ")),
        env!("CARGO_PKG_VERSION")
    );
    summary(&mut h, p);
    if !p.charts.is_empty() {
        h.push_str("<h2 id=\"curves\">Curves</h2>\n<div class=\"charts\">\n");
        for svg in &p.charts {
            h.push_str(svg);
            h.push('\n');
        }
        h.push_str(
            "</div>\n<p class=\"note\">Per epoch. Bold lines: test figures; pale lines: training \
                    figures (the running mean over the epoch, with dropout and augmentation); dots: validation; \
                    black: an array's ensemble (averaged probabilities).</p>\n",
        );
    }
    for s in &p.sections {
        section(&mut h, s);
    }
    let notes: Vec<&String> = p.sections.iter().flat_map(|s| &s.group.notes).collect();
    if !notes.is_empty() {
        h.push_str("<h2 id=\"notes\">Notes</h2>\n<ul class=\"notes\">\n");
        for n in notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// One row per run: what its model file records, else its manifest entry or its log's last
/// epoch; an array's members have a status column (finished, stopped early, diverged).
fn summary(h: &mut String, p: &Page) {
    let statuses = p.sections.iter().any(|s| s.group.manifest.is_some());
    let mut head = vec!["run", "architecture", "epochs", "best epoch", "test accuracy", "test loss", "training time"];
    head.push("device");
    if statuses {
        head.push("status");
    }
    h.push_str("<h2 id=\"runs\">Runs</h2>\n<table>\n<tr>");
    head.iter().for_each(|c| {
        let _ = write!(h, "<th>{c}</th>");
    });
    h.push_str("</tr>\n");
    for s in &p.sections {
        let g = s.group;
        for i in 0..g.runs.len() {
            let mut cells = run_cells(s, i);
            if !statuses {
                cells.pop();
            }
            h.push_str("<tr>");
            for (k, c) in cells.iter().enumerate() {
                let class = if (2..7).contains(&k) { " class=\"num\"" } else { "" };
                let _ = write!(h, "<td{class}>{}</td>", c.as_deref().map_or_else(|| "&#8211;".to_string(), escape));
            }
            h.push_str("</tr>\n");
        }
        if let Some(acc) = g.manifest.as_ref().and_then(|m| m.ensemble_test_accuracy) {
            let _ = write!(h, "<tr><td>{} ensemble</td><td></td><td></td><td></td>", escape(&g.title));
            let _ = writeln!(h, "<td class=\"num\">{}</td>{}</tr>", pct(acc), "<td></td>".repeat(head.len() - 5));
        }
    }
    h.push_str("</table>\n");
}

/// The summary cells of run `i` of a section, in the header's order, status last.
fn run_cells(s: &Section, i: usize) -> Vec<Option<String>> {
    let g = s.group;
    let run = &g.runs[i];
    let member = g.manifest.as_ref().and_then(|m| m.members.get(i));
    let last = run.epochs.last();
    // An array's record is its first member's: its metrics are not every member's.
    let metrics = s.info.as_ref().filter(|_| g.runs.len() == 1).map(|info| &info.metrics);
    let acc = metrics
        .and_then(|m| num(m, "test_accuracy"))
        .or_else(|| member.and_then(|m| m.test_accuracy))
        .or_else(|| last.and_then(|e| e.test_acc));
    let loss = metrics.and_then(|m| num(m, "test_loss")).or_else(|| last.and_then(|e| e.test_loss));
    let epochs = metrics.and_then(|m| num(m, "epochs")).map(|e| e as usize).or(last.map(|e| e.epoch));
    let best = metrics
        .and_then(|m| num(m, "best_epoch"))
        .map(|e| e as usize)
        .or_else(|| member.and_then(|m| m.best_epoch))
        .filter(|&b| b > 0);
    let seconds = metrics
        .and_then(|m| num(m, "train_seconds"))
        .or_else(|| (!run.epochs.is_empty()).then(|| run.epochs.iter().filter_map(|e| e.seconds).sum()));
    let device = s.info.as_ref().map(|i| {
        let backend = i.run.get("backend").and_then(Value::as_str).unwrap_or("");
        // The CPU backend names its device "cpu (2 threads, ...)": say it once.
        if i.device.starts_with(backend) { i.device.clone() } else { format!("{backend}, {}", i.device) }
    });
    let name = if g.runs.len() > 1 { format!("{} {}", g.title, run.label) } else { run.label.clone() };
    vec![
        Some(name),
        s.info.as_ref().map(|i| i.arch.clone()),
        epochs.map(|e| e.to_string()),
        best.map(|e| e.to_string()),
        acc.map(pct),
        loss.map(|l| format!("{l:.4}")),
        seconds.map(duration),
        device,
        member.and_then(|m| m.status.clone()),
    ]
}

/// Seconds as "42.1 s", "12 min 5 s" or "2 h 3 min".
pub fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {} s", (s / 60.0).floor(), (s % 60.0).round())
    } else {
        format!("{} h {} min", (s / 3600.0).floor(), ((s % 3600.0) / 60.0).round())
    }
}

fn section(h: &mut String, s: &Section) {
    let g = s.group;
    let _ =
        writeln!(h, "<h2>{}</h2>\n<p class=\"sub\">{}</p>", escape(&g.title), escape(&g.source.display().to_string()));
    if let Some(e) = &s.eval {
        evaluation(h, e, s.confusion_svg.as_deref());
    }
    if let Some(i) = &s.info {
        model(h, i);
    }
}

fn evaluation(h: &mut String, e: &Evaluation, matrix: Option<&str>) {
    let _ = writeln!(
        h,
        "<h3>On the test set</h3>\n<p>{}: accuracy <b>{}</b> (error {}), {} loss {:.4}, on {} test images from {} \
         ({}, {:.1} s)</p>",
        escape(&e.what),
        pct(e.accuracy),
        pct(1.0 - e.accuracy),
        e.loss_name,
        e.loss,
        e.count,
        escape(&e.data),
        escape(&e.backend),
        e.seconds
    );
    if !e.members.is_empty() {
        h.push_str("<table>\n<tr><th>member</th><th>test accuracy</th></tr>\n");
        for (label, acc) in &e.members {
            let _ = writeln!(h, "<tr><td>{}</td><td class=\"num\">{}</td></tr>", escape(label), pct(*acc));
        }
        h.push_str("</table>\n");
    }
    match matrix {
        Some(svg) => {
            let _ = writeln!(h, "<div class=\"matrix\">\n{svg}\n</div>");
        }
        None => {
            // Too many classes for a matrix: the worst classes' accuracy.
            let mut order: Vec<usize> = (0..e.per_class.len()).filter(|&c| e.per_class[c].1 > 0).collect();
            let acc = |c: usize| e.per_class[c].0 as f64 / e.per_class[c].1 as f64;
            order.sort_by(|&a, &b| acc(a).total_cmp(&acc(b)));
            let _ = writeln!(
                h,
                "<p>{} classes: no matrix; the 30 classes with the lowest accuracy:</p>\n<table>\n\
                 <tr><th>class</th><th>accuracy</th><th>correct / images</th></tr>",
                e.per_class.len()
            );
            for c in order.into_iter().take(30) {
                let name = e.classes.get(c).cloned().unwrap_or_else(|| c.to_string());
                let (hit, seen) = e.per_class[c];
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{hit} / {seen}</td></tr>",
                    escape(&name),
                    pct(acc(c))
                );
            }
            h.push_str("</table>\n");
        }
    }
    if e.mistakes.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h3>The {} most confidently wrong test pictures</h3>\n<p class=\"note\">Each with its index in the \
             test set, its true class, the class the model said with the score it gave that class, and the score it \
             gave the true one.</p>\n<div class=\"mistakes\">",
        e.mistakes.len()
    );
    let name = |c: usize| e.classes.get(c).cloned().unwrap_or_else(|| c.to_string());
    for m in &e.mistakes {
        let _ = writeln!(
            h,
            "<figure><img src=\"{}\" alt=\"test picture {}\"/><figcaption>#{}<br/>true {}<br/><b>said {}</b> {:.0}%\
             <br/>p({}) {:.0}%</figcaption></figure>",
            m.data_uri(),
            m.index,
            m.index,
            escape(&name(m.label)),
            escape(&name(m.predicted)),
            100.0 * m.confidence,
            escape(&name(m.label)),
            100.0 * m.true_score
        );
    }
    h.push_str("</div>\n");
}

fn model(h: &mut String, i: &ModelInfo) {
    h.push_str("<h3>Model</h3>\n<table>\n");
    let mut row = |k: &str, v: String| {
        if !v.is_empty() {
            let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
    };
    row("architecture", format!("{} ({} parameters)", i.arch, i.params));
    row("description", i.description.clone());
    row("training data", i.data.clone());
    let m = &i.metrics;
    if let Some(s) = num(m, "train_seconds") {
        let epochs = num(m, "epochs").map_or(String::new(), |e| format!(" for {e} epochs"));
        row("training time", format!("{}{epochs}", duration(s)));
    }
    row("seed", m.get("seed").map_or(String::new(), Value::to_string));
    let r = &i.run;
    row("backend", r.get("backend").and_then(Value::as_str).unwrap_or("").to_string());
    row("device", i.device.clone());
    row("training images", r.get("train_images").map_or(String::new(), Value::to_string));
    row("precision", r.get("precision").and_then(Value::as_str).unwrap_or("").to_string());
    h.push_str("</table>\n");
    let _ = writeln!(h, "<h3>Layers</h3>\n<pre>{}</pre>", escape(&i.summary));
    let _ = writeln!(h, "<h3>Recipe</h3>\n<pre>{}</pre>", escape(&i.recipe));
}
