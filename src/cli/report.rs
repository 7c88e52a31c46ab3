//! `gpu-train report`: runs as pictures, in one HTML file (and, with `--svg`, the charts as
//! SVG files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{BackendChoice, DataArgs, DeviceArgs, choose_backend, load_model};
use gpu_train::backend::Backend;
use gpu_train::data::{DataInfo, Dataset};
use gpu_train::evaluate::{self, Scored};
use gpu_train::modelfile::Loaded;
use gpu_train::plot;
use gpu_train::report::html::{Page, Section};
use gpu_train::report::runs::{self, Group};
use gpu_train::report::{Evaluation, ModelInfo, figures};

#[derive(Args)]
pub struct ReportArgs {
    /// Model files, metrics logs (.metrics.jsonl) or model arrays' manifests (.members.json);
    /// their curves are overlaid
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// The HTML file to write [default: runs/report.html, unless --svg is given alone]
    #[arg(long, value_name = "FILE.html")]
    out: Option<PathBuf>,
    /// Write the charts as SVG files into this folder (loss.svg, accuracy.svg, error.svg, lr.svg,
    /// confusion-<run>.svg)
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// How many of the most confidently wrong test pictures to show per run
    #[arg(long, value_name = "N", default_value_t = 24)]
    mistakes: usize,
    /// Curves and model records only: do not evaluate the models on the test set
    #[arg(long)]
    no_eval: bool,
    /// The seed that drew a --val-split test set [default: each model's training seed]
    #[arg(long)]
    seed: Option<u64>,
    /// Where to evaluate the models
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend: BackendChoice,
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    adapter: Option<usize>,
    /// CPU threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(a: ReportArgs) -> Result<()> {
    super::init_threads(a.threads)?;
    let groups = a
        .runs
        .iter()
        .map(|p| runs::resolve(p).with_context(|| format!("cannot read run {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let html_out = match (&a.out, &a.svg) {
        (Some(o), _) => Some(o.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(PathBuf::from("runs/report.html")),
    };
    let models = groups
        .iter()
        .map(|g| g.models().into_iter().map(|p| load_model(p, None)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let evals = if a.no_eval || models.iter().all(Vec::is_empty) {
        vec![None; groups.len()]
    } else {
        evaluate_all(&a, &groups, &models)?
    };

    let charts = figures::curves(&groups)
        .into_iter()
        .map(|(name, c)| Ok((name.to_string(), plot::line_chart(&c)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut matrices = Vec::new();
    let mut sections = Vec::new();
    for ((g, ms), eval) in groups.iter().zip(&models).zip(evals) {
        let confusion_svg = match eval.as_ref().filter(|e| !e.confusion.is_empty()) {
            Some(e) => {
                let title = format!("Confusion matrix: {}", g.title);
                let svg = plot::heatmap(&figures::confusion(&title, &e.classes, &e.confusion))?;
                matrices.push((format!("confusion-{}", g.title), svg.clone()));
                Some(svg)
            }
            None => None,
        };
        sections.push(Section { group: g, info: ms.first().map(ModelInfo::of), eval, confusion_svg });
    }
    if let Some(dir) = &a.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, svg) in charts.iter().chain(&matrices) {
            let path = dir.join(format!("{}.svg", safe_name(name)));
            std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if let Some(out) = html_out {
        let title = match groups.as_slice() {
            [g] => format!("gpu-train report: {}", g.title),
            _ => format!("gpu-train report: {} runs", groups.len()),
        };
        let page = Page { title, charts: charts.into_iter().map(|(_, svg)| svg).collect(), sections };
        let html = gpu_train::report::html::render(&page);
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&out, html).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// A file name from a run's title: letters, digits, '-', '_' and '.' kept, the rest '_'.
fn safe_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Evaluates every group's models on the test set on one backend: a model alone, an array's
/// members and their ensemble. Groups without a model file get None.
fn evaluate_all(a: &ReportArgs, groups: &[Group], models: &[Vec<Loaded>]) -> Result<Vec<Option<Evaluation>>> {
    let device = DeviceArgs { backend: a.backend, adapter: a.adapter, threads: a.threads };
    let chosen = choose_backend(&device)?;
    // Test sets by (input shape, seed): runs on the same data load it once.
    let mut tests: HashMap<([usize; 3], u64), Dataset> = HashMap::new();
    let evals = crate::with_backend!(chosen, b => {
        let mut evals = Vec::new();
        for (g, ms) in groups.iter().zip(models) {
            let Some(first) = ms.first() else {
                evals.push(None);
                continue;
            };
            let shape = first.arch.spec.input;
            if ms.iter().any(|m| m.arch.spec.input != shape) {
                bail!("{}: its members take different input shapes", g.source.display());
            }
            let seed = a.seed.or_else(|| first.metrics().and_then(|v| v["seed"].as_u64())).unwrap_or(1);
            if let std::collections::hash_map::Entry::Vacant(e) = tests.entry((shape, seed)) {
                e.insert(a.data.load(shape, seed)?.test);
            }
            let test = &tests[&(shape, seed)];
            for (m, p) in ms.iter().zip(g.models()) {
                check_classes(m, p, test)?;
            }
            let t0 = Instant::now();
            let mut scored = Vec::new();
            for (m, p) in ms.iter().zip(g.models()) {
                scored.push(pollster::block_on(evaluate::score(b, m, &p.display().to_string(), test))?);
            }
            let shown: Scored = if scored.len() > 1 {
                evaluate::ensemble(&scored, &test.labels)?
            } else {
                scored[0].clone()
            };
            let classes = if test.classes.is_empty() { first.class_names() } else { test.classes.clone() };
            let mut e = Evaluation::new(&shown, test, &classes, a.mistakes)?;
            e.data = a.data.path().display().to_string();
            e.backend = b.name();
            e.seconds = t0.elapsed().as_secs_f64();
            if scored.len() == 1 {
                e.loss_name = evaluate::loss_name(first.arch.recipe().loss);
            } else {
                let labels = g.runs.iter().filter(|r| r.model.is_some()).map(|r| r.label.clone());
                e.members = labels.zip(&scored).map(|(l, s)| (l, s.accuracy(&test.labels))).collect();
            }
            println!("{}: {} test accuracy {:.2}%", g.title, e.what, 100.0 * e.accuracy);
            evals.push(Some(e));
        }
        evals
    });
    Ok(evals)
}

/// A model trained on named classes must meet the same classes in the same order (as `eval`
/// checks).
fn check_classes(m: &Loaded, path: &Path, test: &Dataset) -> Result<()> {
    let recorded = DataInfo::recorded(&m.metadata).map(|d| d.classes).filter(|c| !c.is_empty());
    if let Some(names) = recorded
        && names != test.classes
    {
        bail!(
            "{} was trained on the classes [{}] but the data set has [{}]",
            path.display(),
            names.join(", "),
            test.classes.join(", ")
        );
    }
    Ok(())
}
