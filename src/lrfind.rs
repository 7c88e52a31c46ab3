//! The learning-rate range test (Leslie Smith's, as fastai's `lr_find` runs it): from a fresh
//! initialisation, train with a rate that rises exponentially from `start` to `end` over
//! `steps` steps, smooth the loss, stop once it diverges, and suggest a rate from the curve.
//!
//! fastai's defaults are the anchor: 1e-7 to 10, an exponential ramp, the loss smoothed by an
//! exponential moving average with beta 0.98 (debiased), stopped when the smoothed loss
//! exceeds 4x its minimum. Our models are small and their steps cheap, so the ramp takes 300
//! steps (fastai: 100), about 37 per decade, which makes the smoothed curve steadier.
//!
//! Rules, as fastai states them (both skip the first tenth of the steps and the last five,
//! where the smoothing has not settled or the loss is already blowing up):
//! - `minimum`: a tenth of the rate at the smoothed loss's minimum (the minimum itself is
//!   already too fast: the loss is about to rise);
//! - `steep`: the rate where the smoothed loss falls fastest against log(rate).

use crate::backend::Backend;
use crate::data::Dataset;
use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::model::spec::Normalize;
use crate::network::{DeviceData, Members, Network, StepArgs};
use crate::plot::{LineChart, Marker, Rgb, Series, Stroke, palette};
use crate::rng;

/// How the test runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub start: f64,
    pub end: f64,
    pub steps: usize,
    /// Smoothing of the loss: avg = beta avg + (1 - beta) loss, debiased.
    pub beta: f64,
    /// Stop when the smoothed loss exceeds this many times its minimum.
    pub diverge: f64,
    pub batch: usize,
    pub seed: u64,
}

impl Settings {
    pub fn new(batch: usize, seed: u64) -> Self {
        Settings { start: 1e-7, end: 10.0, steps: 300, beta: 0.98, diverge: 4.0, batch, seed }
    }

    /// The rate of step `i` (0-based): `start` at the first step, `end` at the last.
    pub fn lr_at(&self, i: usize) -> f64 {
        let t = if self.steps > 1 { i as f64 / (self.steps - 1) as f64 } else { 0.0 };
        self.start * (self.end / self.start).powf(t)
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.start > 0.0 && self.end > self.start && self.start.is_finite() && self.end.is_finite();
        if !ok {
            return Err(Error::Config(format!(
                "the rates must rise from a positive start: got {} to {}",
                self.start, self.end
            )));
        }
        if self.steps < 20 {
            return Err(Error::Config(format!("--steps {} is too few for a curve; use at least 20", self.steps)));
        }
        if !(0.0..1.0).contains(&self.beta) {
            return Err(Error::Config(format!("the smoothing beta must be in [0, 1), got {}", self.beta)));
        }
        Ok(())
    }
}

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: usize,
    pub lr: f64,
    /// The batch's mean loss.
    pub loss: f64,
    pub smoothed: f64,
}

/// Why the test ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// Every step ran.
    Finished,
    /// The smoothed loss passed `diverge` times its minimum at this step.
    Diverged(usize),
    /// The loss became NaN or infinite at this step.
    NotFinite(usize),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub points: Vec<Point>,
    pub stop: Stop,
}

/// The rule that turns the curve into a suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rule {
    /// A tenth of the rate at the smoothed loss's minimum
    Minimum,
    /// The rate where the smoothed loss falls fastest against log(rate)
    Steep,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Minimum => "minimum/10: a tenth of the rate at which the smoothed loss is lowest (fastai's lr_min)",
            Rule::Steep => {
                "steepest descent: the rate at which the smoothed loss falls fastest against log(rate) \
                            (fastai's lr_steep)"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Suggestion {
    pub rule: Rule,
    pub lr: f64,
    /// The step the rule read (the minimum's, or the steepest fall's).
    pub step: usize,
}

/// The points a rule reads: without the first tenth and the last five (as fastai's
/// `lr_find`), or all of them when that would leave fewer than three.
fn trimmed(points: &[Point], steps: usize) -> &[Point] {
    let (skip, end) = (steps / 10, points.len().saturating_sub(5));
    if end >= skip + 3 { &points[skip..end] } else { points }
}

/// The rate `rule` suggests from a test's points (to three significant digits), if there are
/// enough to read one.
pub fn suggest(points: &[Point], steps: usize, rule: Rule) -> Option<Suggestion> {
    let p = trimmed(points, steps);
    if p.len() < 3 {
        return None;
    }
    match rule {
        Rule::Minimum => {
            let best = p.iter().min_by(|a, b| a.smoothed.total_cmp(&b.smoothed))?;
            Some(Suggestion { rule, lr: round3(best.lr / 10.0), step: best.step })
        }
        Rule::Steep => {
            let (i, _) = p
                .windows(2)
                .map(|w| (w[1].smoothed - w[0].smoothed) / (w[1].lr.ln() - w[0].lr.ln()))
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            Some(Suggestion { rule, lr: round3(p[i].lr), step: p[i].step })
        }
    }
}

/// The debiased exponential moving average of the loss, and the divergence check.
#[derive(Debug, Clone)]
pub struct Smoother {
    beta: f64,
    avg: f64,
    n: i32,
    pub min: f64,
}

impl Smoother {
    pub fn new(beta: f64) -> Self {
        Smoother { beta, avg: 0.0, n: 0, min: f64::INFINITY }
    }

    /// Takes one step's loss; returns the smoothed value.
    pub fn push(&mut self, loss: f64) -> f64 {
        self.n += 1;
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss;
        let smoothed = self.avg / (1.0 - self.beta.powi(self.n));
        self.min = self.min.min(smoothed);
        smoothed
    }
}

/// Steps run between read-backs of their losses: few enough that a diverged test stops soon
/// after, enough that reading back costs nothing next to the steps.
const CHUNK: usize = 8;

/// What every step of a test shares.
struct Ctx {
    seed: u64,
    augment: Option<Augment>,
    batch: usize,
}

/// One training step of the test: the `index`-th step overall at the rate of row `index`
/// (`run` writes every step's rate first), the batch at `start` of pass `pass` over the data,
/// its loss summed into `stats[2 * slot]`. The one place that knows how the network takes a
/// step.
fn step<B: Backend>(
    b: &mut B,
    net: &mut Network<B>,
    data: &DeviceData<B>,
    perm: &B::IBuf,
    stats: &mut B::Buf,
    ctx: &Ctx,
    (index, pass, start, slot): (usize, usize, usize, usize),
) {
    let args = StepArgs {
        start,
        n: ctx.batch,
        slot,
        global_step: index as u32,
        epoch: pass as u32 + 1,
        row: index,
        data_seed: ctx.seed,
        augment: ctx.augment,
    };
    net.train_step(b, data, perm, stats, &args);
}

/// Runs the test for `arch` (its recipe's optimizer, initialisation, augmentation and
/// normalisation, `s.batch` per step) on `train`, passing each point to `progress` as it is
/// read back.
pub async fn run<B: Backend>(
    b: &mut B,
    arch: &Arch,
    train: &Dataset,
    s: &Settings,
    mut progress: impl FnMut(&Point),
) -> Result<Outcome> {
    s.validate()?;
    crate::train::check_data(arch, train, "training")?;
    if train.len() < s.batch {
        return Err(Error::Data(format!("{} training images are fewer than one batch of {}", train.len(), s.batch)));
    }
    let mut arch = arch.clone();
    if arch.recipe().normalize.is_auto() {
        let (mean, std) = train.channel_stats();
        arch.spec.train.normalize = Normalize::values(mean, std);
        arch = Arch::new(arch.spec)?;
    }
    let recipe = arch.recipe().clone();
    let (params, state) = arch.init(recipe.init, s.seed);
    let data = DeviceData::upload(b, train)?;
    let mut net = Network::array(b, Members::one(arch.clone(), s.seed), s.batch, &params, &state)?;
    // Every step's rate, one row each, written to the device once.
    net.set_rates(b, (0..s.steps).map(|i| vec![s.lr_at(i) as f32]).collect())?;
    let mut stats = b.alloc(2 * CHUNK)?;
    let mut perm = b.alloc_u32(train.len())?;
    let ctx = Ctx { seed: s.seed, augment: recipe.augment, batch: s.batch };
    // Whole batches only, so every loss is a mean over the same number of examples.
    let per_pass = train.len() / s.batch;
    let mut smoother = Smoother::new(s.beta);
    let mut points = Vec::with_capacity(s.steps);
    let mut first = 0;
    while first < s.steps {
        let end = (first + CHUNK).min(s.steps);
        for i in first..end {
            let (pass, within) = (i / per_pass, i % per_pass);
            if within == 0 {
                b.upload_u32(&mut perm, &rng::epoch_permutation(s.seed, pass, train.len()))?;
            }
            step(b, &mut net, &data, &perm, &mut stats, &ctx, (i, pass, within * s.batch, i - first));
        }
        b.flush()?;
        let sums = b.download(&stats, 2 * (end - first)).await?;
        for (i, pair) in (first..end).zip(sums.chunks(2)) {
            let loss = pair[0] as f64 / s.batch as f64;
            if !loss.is_finite() {
                return Ok(Outcome { points, stop: Stop::NotFinite(i) });
            }
            let p = Point { step: i, lr: s.lr_at(i), loss, smoothed: smoother.push(loss) };
            points.push(p);
            progress(&p);
            if p.smoothed > s.diverge * smoother.min {
                return Ok(Outcome { points, stop: Stop::Diverged(i) });
            }
        }
        first = end;
    }
    Ok(Outcome { points, stop: Stop::Finished })
}

/// The test as a chart: the smoothed loss (bold) and each step's loss (dots) against the
/// rate on a log axis, with the suggestions marked (the first is the one suggested). The loss axis stops a little above the
/// smoothed curve's range, so that the first steps' spikes do not flatten it.
pub fn chart(title: &str, o: &Outcome, suggestions: &[Suggestion]) -> LineChart {
    let mut c = LineChart::new(title, "learning rate (log scale)", "training loss");
    c.x_log = true;
    c.size = (680, 380);
    let (lo, hi) = o
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.smoothed), hi.max(p.smoothed)));
    let top = hi + 0.1 * (hi - lo);
    let raw = o.points.iter().filter(|p| p.loss <= top && p.loss >= lo - 0.1 * (hi - lo)).map(|p| (p.lr, p.loss));
    c.series.push(Series {
        label: Some("loss per step".into()),
        points: raw.collect(),
        color: Rgb::GREY,
        stroke: Stroke::Dots,
    });
    c.series.push(Series {
        label: Some("smoothed (beta 0.98)".into()),
        points: o.points.iter().map(|p| (p.lr, p.smoothed)).collect(),
        color: palette(0),
        stroke: Stroke::Bold,
    });
    for (k, s) in suggestions.iter().enumerate() {
        let name = match s.rule {
            Rule::Minimum => "minimum/10",
            Rule::Steep => "steepest",
        };
        let chosen = if k == 0 { " (suggested)" } else { "" };
        c.markers.push(Marker { x: s.lr, label: format!("{name}: {}{chosen}", short(s.lr)), color: palette(k + 1) });
    }
    c
}

/// Three significant digits: what is printed, plotted and written is the same number.
fn round3(lr: f64) -> f64 {
    short(lr).parse().unwrap_or(lr)
}

/// A rate with three significant digits, as the command prints it: `1.23e-3`.
pub fn short(lr: f64) -> String {
    let s = format!("{lr:.2e}");
    match s.split_once('e') {
        Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
        None => s,
    }
}

/// A model file's text with its learning rate (and, if given, batch size) set: the file's
/// own comments and layout kept, the `[train]` table and its `optimizer` entry made if the
/// file leaves them to their defaults.
pub fn with_lr(source: &str, origin: &str, lr: f32, batch: Option<usize>) -> Result<String> {
    let bad = |e: &dyn std::fmt::Display| Error::arch(origin, e.to_string().replace('\n', " "));
    let mut doc: toml_edit::DocumentMut = source.parse().map_err(|e| bad(&e))?;
    let train = doc
        .entry("train")
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or_else(|| bad(&"`train` is not a table"))?;
    if let Some(bs) = batch {
        train.insert("batch", toml_edit::value(bs as i64));
    }
    // A file without an optimizer trains with the default one: name its type, which the
    // entry needs once it exists.
    let default_type = serde_json::to_value(crate::model::spec::Optimizer::default())
        .ok()
        .and_then(|v| v["type"].as_str().map(String::from))
        .unwrap_or_default();
    let optimizer = train
        .entry("optimizer")
        .or_insert_with(|| {
            let mut t = toml_edit::InlineTable::new();
            t.insert("type", default_type.into());
            toml_edit::value(t)
        })
        .as_table_like_mut()
        .ok_or_else(|| bad(&"`train.optimizer` is not a table"))?;
    // f32 -> f64 through its shortest decimal form, so that 6.8e-3 is written as 0.0068.
    let lr64: f64 = lr.to_string().parse().unwrap_or(lr as f64);
    optimizer.insert("lr", toml_edit::value(lr64));
    let text = doc.to_string();
    // The edit must say what was meant: the same model with that rate.
    let spec = crate::model::presets::parse(&text, origin)?;
    if spec.train.optimizer.lr() != lr {
        return Err(bad(&format!("the learning rate reads back as {}, not {lr}", spec.train.optimizer.lr())));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: impl Fn(f64) -> f64, s: &Settings) -> Vec<Point> {
        let mut sm = Smoother::new(0.0);
        (0..s.steps)
            .map(|i| {
                let lr = s.lr_at(i);
                let loss = f(lr);
                Point { step: i, lr, loss, smoothed: sm.push(loss) }
            })
            .collect()
    }

    #[test]
    fn the_ramp_runs_from_start_to_end_exponentially() {
        let s = Settings::new(16, 1);
        assert!((s.lr_at(0) - 1e-7).abs() < 1e-18);
        assert!((s.lr_at(s.steps - 1) - 10.0).abs() < 1e-9);
        let r = s.lr_at(11) / s.lr_at(10);
        assert!((s.lr_at(101) / s.lr_at(100) - r).abs() < 1e-9, "a constant ratio per step");
    }

    #[test]
    fn smoothing_is_debiased() {
        let mut sm = Smoother::new(0.98);
        assert!((sm.push(2.0) - 2.0).abs() < 1e-12, "the first value comes back as is");
        assert!((sm.push(2.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_rules_read_a_valley() {
        // Loss falls fastest at lr 1e-3 (a logistic step in log lr) and is lowest near 1e-1,
        // rising after.
        let s = Settings::new(16, 1);
        let f = |lr: f64| {
            let x = lr.log10();
            2.0 - 1.5 / (1.0 + (-(x + 3.0) * 3.0).exp()) + if x > -1.0 { (x + 1.0).powi(2) } else { 0.0 }
        };
        let p = curve(f, &s);
        let steep = suggest(&p, s.steps, Rule::Steep).unwrap();
        assert!((steep.lr.log10() + 3.0).abs() < 0.1, "{steep:?}");
        let min = suggest(&p, s.steps, Rule::Minimum).unwrap();
        assert!((min.lr.log10() + 2.0).abs() < 0.2, "{min:?}");
    }

    #[test]
    fn a_model_file_keeps_its_comments_with_the_new_rate() {
        let src = "# mine\nname = \"m\"\nlayers = [{ type = \"flatten\" }, { type = \"dense\", units = 10 }]\n\n\
                   [train]\noptimizer = { type = \"adam\", lr = 0.001 }  # note\n";
        let out = with_lr(src, "m", 0.0068, Some(32)).unwrap();
        assert!(out.starts_with("# mine\n") && out.contains("# note"), "{out}");
        let spec = crate::model::presets::parse(&out, "m").unwrap();
        assert_eq!((spec.train.optimizer.lr(), spec.train.batch), (0.0068, 32));
        assert!(out.contains("lr = 0.0068"), "{out}");
        let bare = with_lr("name = \"m\"\nlayers = [{ type = \"flatten\" }]\n", "m", 0.5, None).unwrap();
        assert_eq!(crate::model::presets::parse(&bare, "m").unwrap().train.optimizer.lr(), 0.5);
    }

    #[test]
    fn rates_print_with_three_digits() {
        assert_eq!(short(0.001234567), "1.23e-3");
        assert_eq!(short(0.01), "1e-2");
    }
}
