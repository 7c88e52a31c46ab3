//! The report's charts as plot descriptions: curves of every run overlaid (loss, accuracy,
//! learning rate), and the confusion matrix as a heat map.

use crate::plot::{Cell, Heatmap, LineChart, Rgb, Series, Stroke, palette};

use super::runs::{EpochLine, Group};

/// Loss, accuracy, error and learning-rate charts over epochs, one colour per run (an array's
/// members each their own), bold for test figures, pale for training ones, dots for
/// validation, and each array's ensemble in black.
pub fn curves(groups: &[Group]) -> Vec<(&'static str, LineChart)> {
    let mut loss = LineChart::new("Loss", "epoch", "loss (log scale)");
    loss.y_log = true;
    let mut acc = LineChart::new("Accuracy", "epoch", "accuracy (%)");
    // Accuracy near 100% crowds against the top of a linear axis: the error on a log axis
    // tells 0.4% from 0.6% apart.
    let mut err = LineChart::new("Error", "epoch", "error (%, log scale)");
    err.y_log = true;
    let mut lr = LineChart::new("Learning rate", "epoch", "learning rate (log scale)");
    lr.y_log = true;
    let runs = groups.iter().flat_map(|g| g.runs.iter().map(move |r| (g, r)));
    for (k, (_, run)) in runs.enumerate() {
        let color = palette(k);
        let pick = |f: fn(&EpochLine) -> Option<f64>, scale: f64| -> Vec<(f64, f64)> {
            run.epochs.iter().filter_map(|e| f(e).map(|v| (e.epoch as f64, v * scale))).collect()
        };
        let add = |chart: &mut LineChart, f: fn(&EpochLine) -> Option<f64>, scale: f64, stroke, label: Option<&str>| {
            let points = pick(f, scale);
            if !points.is_empty() {
                chart.series.push(Series { label: label.map(String::from), points, color, stroke });
            }
        };
        add(&mut loss, |e| e.train_loss, 1.0, Stroke::Faint, None);
        add(&mut loss, |e| e.val_loss, 1.0, Stroke::Dots, None);
        add(&mut loss, |e| e.test_loss, 1.0, Stroke::Bold, Some(&run.label));
        add(&mut acc, |e| e.train_acc, 100.0, Stroke::Faint, None);
        add(&mut acc, |e| e.val_acc, 100.0, Stroke::Dots, None);
        add(&mut acc, |e| e.test_acc, 100.0, Stroke::Bold, Some(&run.label));
        add(&mut err, |e| e.train_acc.map(|a| 1.0 - a), 100.0, Stroke::Faint, None);
        add(&mut err, |e| e.val_acc.map(|a| 1.0 - a), 100.0, Stroke::Dots, None);
        add(&mut err, |e| e.test_acc.map(|a| 1.0 - a), 100.0, Stroke::Bold, Some(&run.label));
        add(&mut lr, |e| e.lr, 1.0, Stroke::Bold, Some(&run.label));
    }
    for g in groups.iter().filter(|g| !g.ensemble.is_empty()) {
        let label = Some(format!("{} ensemble", g.title));
        let (mut a, mut e, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for &(epoch, ea, el) in &g.ensemble {
            a.extend(ea.map(|v| (epoch as f64, 100.0 * v)));
            e.extend(ea.map(|v| (epoch as f64, 100.0 * (1.0 - v))));
            l.extend(el.map(|v| (epoch as f64, v)));
        }
        acc.series.push(Series { label: label.clone(), points: a, color: Rgb::BLACK, stroke: Stroke::Bold });
        err.series.push(Series { label: label.clone(), points: e, color: Rgb::BLACK, stroke: Stroke::Bold });
        loss.series.push(Series { label, points: l, color: Rgb::BLACK, stroke: Stroke::Bold });
    }
    [("loss", loss), ("accuracy", acc), ("error", err), ("lr", lr)]
        .into_iter()
        .filter(|(_, c)| c.series.iter().any(|s| !s.points.is_empty()))
        .collect()
}

const BLUE: Rgb = Rgb(31, 119, 180);
const RED: Rgb = Rgb(214, 39, 40);

/// The confusion matrix `counts[true][predicted]` as a heat map: the diagonal in blue by the
/// class's accuracy, mistakes in red by their count against the largest confusion (so the
/// common confusions stand out however rare they are next to the hits), and one more column
/// with each class's accuracy.
pub fn confusion(title: &str, classes: &[String], counts: &[Vec<usize>]) -> Heatmap {
    let worst = counts
        .iter()
        .enumerate()
        .flat_map(|(t, row)| row.iter().enumerate().filter(move |(p, _)| *p != t).map(|(_, &c)| c))
        .max()
        .unwrap_or(0)
        .max(1);
    let short = |s: &String| s.chars().take(14).collect::<String>();
    let cells = counts
        .iter()
        .enumerate()
        .map(|(t, row)| {
            let total: usize = row.iter().sum();
            let acc = if total == 0 { 0.0 } else { row.get(t).copied().unwrap_or(0) as f64 / total as f64 };
            let mut cells: Vec<Cell> = row
                .iter()
                .enumerate()
                .map(|(p, &c)| {
                    let text = if c == 0 { String::new() } else { c.to_string() };
                    if p == t {
                        Cell { text, shade: 0.25 + 0.75 * acc, color: BLUE }
                    } else {
                        Cell { text, shade: 0.85 * c as f64 / worst as f64, color: RED }
                    }
                })
                .collect();
            cells.push(Cell { text: format!("{:.1}", 100.0 * acc), shade: 0.12, color: Rgb::GREY });
            cells
        })
        .collect();
    Heatmap {
        title: title.into(),
        x_label: "predicted class (last column: accuracy %)".into(),
        y_label: "true class".into(),
        rows: classes.iter().map(short).collect(),
        cols: classes.iter().map(short).chain(std::iter::once("acc %".to_string())).collect(),
        cells,
    }
}
