//! Pictures as SVG strings, from plain data: line charts (training curves, the learning-rate
//! range test) and heat maps (confusion matrices). Every picture the project draws goes
//! through here (`report`, `lr-find`, and the browser page, since plotters' SVG backend builds
//! for wasm32 as well), so they share one look and one set of axes.
//!
//! Text is laid out by whatever shows the SVG: plotters only places it (with its crude
//! built-in metrics natively, the browser's on the web), so no font files are involved.
//!
//! Each SVG carries what it shows in a `<metadata>` element (JSON: the data ranges, the
//! plotting area in pixels and every series' points), so a test, or a reader, can hold the
//! drawn lines against the numbers they came from.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

/// A colour, as plain data (no plotters type in this module's interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    pub const BLACK: Rgb = Rgb(0, 0, 0);
    pub const GREY: Rgb = Rgb(127, 127, 127);

    fn color(self) -> RGBColor {
        RGBColor(self.0, self.1, self.2)
    }

    /// `#rrggbb`, as SVG writes it.
    pub fn hex(self) -> String {
        format!("#{:02X}{:02X}{:02X}", self.0, self.1, self.2)
    }
}

/// The i-th of ten colours that stay apart from each other (Tableau 10, matplotlib's
/// default cycle), cycling.
pub fn palette(i: usize) -> Rgb {
    const TAB10: [Rgb; 10] = [
        Rgb(31, 119, 180),
        Rgb(255, 127, 14),
        Rgb(44, 160, 44),
        Rgb(214, 39, 40),
        Rgb(148, 103, 189),
        Rgb(140, 86, 75),
        Rgb(227, 119, 194),
        Rgb(127, 127, 127),
        Rgb(188, 189, 34),
        Rgb(23, 190, 207),
    ];
    TAB10[i % TAB10.len()]
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stroke {
    /// A bold line (test figures, the smoothed loss).
    Bold,
    /// A thin, pale line in the same colour (training figures, raw loss).
    Faint,
    /// Unconnected dots.
    Dots,
}

/// One line of a chart: its points in data coordinates, in order. Points that a log axis
/// cannot show (zero or negative) and non-finite ones are left out.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The legend entry; None keeps the series out of the legend.
    pub label: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub color: Rgb,
    pub stroke: Stroke,
}

/// A vertical line across the chart at `x` (a suggested learning rate, say), labelled.
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: Rgb,
}

/// A line chart: series over shared axes, either of which may be logarithmic.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
    /// Pixels: (width, height), the legend included.
    pub size: (u32, u32),
}

impl LineChart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_log: false,
            y_log: false,
            series: Vec::new(),
            markers: Vec::new(),
            size: (560, 330),
        }
    }
}

/// A grid of labelled, shaded cells: a confusion matrix, with per-class accuracy as one more
/// column if the caller adds one.
#[derive(Debug, Clone, Serialize)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Top to bottom.
    pub rows: Vec<String>,
    /// Left to right.
    pub cols: Vec<String>,
    /// (rows, cols).
    pub cells: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub text: String,
    /// 0 (white) to 1 (`color` at full strength).
    pub shade: f64,
    pub color: Rgb,
}

/// A picture that could not be drawn (plotters' error, as text: its type is the backend's).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the plot '{title}': {reason}")]
pub struct PlotError {
    pub title: String,
    pub reason: String,
}

fn fail(title: &str) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError { title: title.into(), reason: e.to_string() }
}

/// What a chart's `<metadata>` says: enough to map its pixels back to data.
#[derive(Serialize)]
struct LineMeta<'a> {
    x_log: bool,
    y_log: bool,
    x_range: (f64, f64),
    y_range: (f64, f64),
    /// The plotting area in pixels: (left, right, top, bottom).
    area: (i32, i32, i32, i32),
    series: Vec<SeriesMeta<'a>>,
    markers: &'a [Marker],
}

#[derive(Serialize)]
struct SeriesMeta<'a> {
    label: &'a Option<String>,
    color: String,
    stroke: Stroke,
    points: Vec<(f64, f64)>,
}

const FONT: &str = "sans-serif";

/// Draws a line chart as one SVG document.
pub fn line_chart(c: &LineChart) -> Result<String, PlotError> {
    let shown: Vec<Vec<(f64, f64)>> = c.series.iter().map(|s| visible(&s.points, c.x_log, c.y_log)).collect();
    let all = shown.iter().flatten().copied();
    let xs = range(all.clone().map(|p| p.0).chain(c.markers.iter().map(|m| m.x)), c.x_log, 0.0);
    let ys = range(all.map(|p| p.1), c.y_log, 0.05);
    let mut svg = String::new();
    let area = {
        let root = SVGBackend::with_string(&mut svg, c.size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&c.title)(&e))?;
        let legend_width = legend_width(c);
        let (plot, legend) = root.split_horizontally(c.size.0.saturating_sub(legend_width));
        let log = |(lo, hi): (f64, f64)| {
            let (labels, lines) = log_ticks((lo, hi));
            (lo..hi).log_scale().with_key_points(labels).with_light_points(lines)
        };
        let area = match (c.x_log, c.y_log) {
            (false, false) => draw_lines(c, &shown, &plot, xs.0..xs.1, ys.0..ys.1),
            (true, false) => draw_lines(c, &shown, &plot, log(xs), ys.0..ys.1),
            (false, true) => draw_lines(c, &shown, &plot, xs.0..xs.1, log(ys)),
            (true, true) => draw_lines(c, &shown, &plot, log(xs), log(ys)),
        }?;
        if legend_width > 0 {
            draw_legend(c, &legend).map_err(|e| fail(&c.title)(&e))?;
        }
        root.present().map_err(|e| fail(&c.title)(&e))?;
        area
    };
    let meta = LineMeta {
        x_log: c.x_log,
        y_log: c.y_log,
        x_range: xs,
        y_range: ys,
        area,
        series: c
            .series
            .iter()
            .zip(shown)
            .map(|(s, points)| SeriesMeta { label: &s.label, color: s.color.hex(), stroke: s.stroke, points })
            .collect(),
        markers: &c.markers,
    };
    Ok(with_metadata(svg, &meta))
}

/// The points a chart can show: finite, and positive on a log axis.
fn visible(points: &[(f64, f64)], x_log: bool, y_log: bool) -> Vec<(f64, f64)> {
    let ok = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    points.iter().copied().filter(|&(x, y)| ok(x, x_log) && ok(y, y_log)).collect()
}

/// An axis range covering `values`: padded by `pad` of its width on a linear axis; on a log
/// axis padded by a factor of 1.2 and widened to the next 1-2-5 values (1e-3, 2e-3, 5e-3,
/// 1e-2, ...), so that its ends are labelled values and no line runs along an edge. Empty or
/// flat data gets a range around it.
fn range(values: impl Iterator<Item = f64>, log: bool, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        return (one_two_five(lo / 1.2, false), one_two_five(hi * 1.2, true));
    }
    if lo == hi {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// `m * 10^k` for m in 1, 2, 5 at `k`, through its decimal text so that 0.02 is 0.02, not
/// 0.020000000000000004.
fn decimal(m: u32, k: i32) -> f64 {
    format!("{m}e{k}").parse().unwrap_or(f64::NAN)
}

/// The nearest 1-2-5 value at or above (`up`) or at or below a positive `v`.
fn one_two_five(v: f64, up: bool) -> f64 {
    let k = v.log10().floor() as i32;
    let candidates = [(1, k), (2, k), (5, k), (1, k + 1)].map(|(m, k)| decimal(m, k));
    let pick = if up { candidates.iter().find(|&&c| c >= v) } else { candidates.iter().rev().find(|&&c| c <= v) };
    pick.copied().unwrap_or(v)
}

/// The axes, grid, series and markers of a line chart on `area`; returns the plotting area
/// in pixels.
fn draw_lines<X, Y>(
    c: &LineChart,
    shown: &[Vec<(f64, f64)>],
    area: &DrawingArea<SVGBackend, Shift>,
    x: X,
    y: Y,
) -> Result<(i32, i32, i32, i32), PlotError>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = fail(&c.title);
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FONT, 18))
        .margin(8)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| number(*v))
        .y_label_formatter(&|v| number(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(|e| err(&e))?;
    for (s, points) in c.series.iter().zip(shown) {
        let color = s.color.color();
        match s.stroke {
            Stroke::Bold => chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2))),
            Stroke::Faint => {
                chart.draw_series(LineSeries::new(points.iter().copied(), color.mix(0.45).stroke_width(1)))
            }
            Stroke::Dots => chart.draw_series(points.iter().map(|&p| Circle::new(p, 2, color.mix(0.5).filled()))),
        }
        .map_err(|e| err(&e))?;
        // A line of one point draws nothing: after a run's first epoch it is a dot.
        if let ([p], Stroke::Bold | Stroke::Faint) = (points.as_slice(), s.stroke) {
            chart.draw_series(std::iter::once(Circle::new(*p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
    }
    let (y_lo, y_hi) = {
        let r = chart.y_range();
        (r.start, r.end)
    };
    // Markers are named in the legend, not on the chart, where their labels would collide
    // when two sit close together.
    for m in &c.markers {
        let style = m.color.color().stroke_width(2);
        chart.draw_series(LineSeries::new([(m.x, y_lo), (m.x, y_hi)], style)).map_err(|e| err(&e))?;
    }
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    Ok((xr.start, xr.end, yr.start, yr.end))
}

/// A log axis's labelled values and grid lines: over at most 2.5 decades the 1-2-5 multiples
/// of each power of ten (grid lines at every multiple), over at most five the powers of ten
/// (grid lines at every multiple), over more the powers of ten alone. (Plotters' own log
/// ticks label nothing below the lowest power of ten in the range and some values twice.)
fn log_ticks((lo, hi): (f64, f64)) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let labelled: &[u32] = if decades <= 2.5 { &[1, 2, 5] } else { &[1] };
    let lines: &[u32] = if decades <= 5.0 { &[1, 2, 3, 4, 5, 6, 7, 8, 9] } else { &[1] };
    let within = |v: &f64| *v >= lo && *v <= hi;
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let pick =
        |ms: &[u32]| (first..=last).flat_map(|k| ms.iter().map(move |&m| decimal(m, k))).filter(within).collect();
    (pick(labelled), pick(lines))
}

/// Pixels the legend beside a chart needs: none without labels.
fn legend_width(c: &LineChart) -> u32 {
    let labels = c.series.iter().filter_map(|s| s.label.as_ref()).chain(c.markers.iter().map(|m| &m.label));
    labels.map(|l| l.chars().count()).max().map_or(0, |n| (n as u32 * 7 + 44).clamp(90, 260))
}

/// The legend as a column to the right of the chart, so that it never hides a curve: the
/// labelled series, then the markers.
fn draw_legend(
    c: &LineChart,
    area: &DrawingArea<SVGBackend, Shift>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let font = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 48;
    for s in c.series.iter().filter(|s| s.label.is_some()) {
        let color = s.color.color();
        match s.stroke {
            Stroke::Bold => area.draw(&PathElement::new(vec![(4, y), (26, y)], color.stroke_width(2)))?,
            Stroke::Faint => area.draw(&PathElement::new(vec![(4, y), (26, y)], color.mix(0.45).stroke_width(1)))?,
            Stroke::Dots => area.draw(&Circle::new((15, y), 3, color.mix(0.5).filled()))?,
        }
        area.draw(&Text::new(s.label.clone().unwrap_or_default(), (32, y), font.clone()))?;
        y += 20;
    }
    for m in &c.markers {
        area.draw(&PathElement::new(vec![(15, y - 7), (15, y + 7)], m.color.color().stroke_width(2)))?;
        area.draw(&Text::new(m.label.clone(), (32, y), font.clone()))?;
        y += 20;
    }
    Ok(())
}

/// A tick label: integers plain, other values with up to four significant digits, very
/// large or small ones as 1e-5.
pub fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// Draws a heat map as one SVG document: row labels on the left, column labels below, each
/// cell's text in it (white on dark cells).
pub fn heatmap(h: &Heatmap) -> Result<String, PlotError> {
    let err = fail(&h.title);
    let (rows, cols) = (h.rows.len(), h.cols.len());
    let longest = h.rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as u32;
    let y_area = (longest * 8 + 30).clamp(48, 160);
    let cell = if cols > 12 { 34 } else { 46 };
    let size = (y_area + cell * cols as u32 + 30, cell * rows as u32 + 110);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&h.title, (FONT, 18))
            .margin(8)
            .x_label_area_size(48)
            .y_label_area_size(y_area)
            .build_cartesian_2d(0..cols as i32, 0..rows as i32)
            .map_err(|e| err(&e))?;
        // Rows run top to bottom: row r sits at y = rows - 1 - r.
        let row_at = |y: i32| rows as i32 - 1 - y;
        let (row_names, col_names) = (&h.rows, &h.cols);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(h.x_label.as_str())
            .y_desc(h.y_label.as_str())
            .x_labels(cols + 1)
            .y_labels(rows + 1)
            .x_label_offset(cell as i32 / 2)
            .y_label_offset(-(cell as i32) / 2)
            .x_label_formatter(&|&x| col_names.get(x as usize).cloned().unwrap_or_default())
            .y_label_formatter(&|&y| {
                usize::try_from(row_at(y)).ok().and_then(|r| row_names.get(r)).cloned().unwrap_or_default()
            })
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(|e| err(&e))?;
        for (r, row) in h.cells.iter().enumerate() {
            let y = row_at(r as i32);
            for (c, cell) in row.iter().enumerate() {
                let fill = mix_white(cell.color, cell.shade);
                let rect = Rectangle::new([(c as i32, y), (c as i32 + 1, y + 1)], fill.filled());
                chart.draw_series(std::iter::once(rect)).map_err(|e| err(&e))?;
            }
        }
        // Cell text: centred by pixel, since a cell's centre is not a value of the i32 axes.
        let area = chart.plotting_area();
        let (xr, yr) = area.get_pixel_range();
        let (w, hgt) =
            ((xr.end - xr.start) as f64 / cols.max(1) as f64, (yr.end - yr.start) as f64 / rows.max(1) as f64);
        for (r, row) in h.cells.iter().enumerate() {
            for (c, cell) in row.iter().enumerate().filter(|(_, cell)| !cell.text.is_empty()) {
                let ink = if cell.shade > 0.55 { WHITE } else { BLACK };
                let pos = (((c as f64 + 0.5) * w) as i32, ((r as f64 + 0.5) * hgt) as i32);
                let style =
                    TextStyle::from((FONT, 13).into_font()).color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                area.strip_coord_spec().draw(&Text::new(cell.text.clone(), pos, style)).map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(with_metadata(svg, h))
}

fn mix_white(c: Rgb, shade: f64) -> RGBColor {
    let s = shade.clamp(0.0, 1.0);
    let ch = |v: u8| (255.0 - (255.0 - v as f64) * s).round() as u8;
    RGBColor(ch(c.0), ch(c.1), ch(c.2))
}

/// Puts `meta` as JSON in a `<metadata>` element right after the `<svg ...>` tag, and drops
/// any XML declaration so the document can also sit inline in HTML.
fn with_metadata(svg: String, meta: &impl Serialize) -> String {
    let json = serde_json::to_string(meta).unwrap_or_default();
    let body = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => &svg,
    };
    match body.find('>') {
        Some(end) => format!("{}\n<metadata>{}</metadata>{}", &body[..=end], escape(&json), &body[end + 1..]),
        None => body.to_string(),
    }
}

/// Text made safe for XML and HTML: `&`, `<`, `>` and quotes escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After one epoch a curve has one point: it shows as a dot, not as nothing.
    #[test]
    fn a_series_of_one_point_is_drawn() {
        let dots = |n: usize| {
            let mut c = LineChart::new("t", "x", "y");
            let points = (0..n).map(|i| (1.0 + i as f64, 50.0 + i as f64)).collect();
            c.series = vec![Series { label: None, points, color: palette(0), stroke: Stroke::Bold }];
            line_chart(&c).unwrap().matches("<circle").count()
        };
        assert_eq!(dots(1), 1);
        assert_eq!(dots(3), 0);
    }

    #[test]
    fn tick_labels_read_plainly() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(5.0), "5");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(98.5), "98.5");
        assert_eq!(number(1e-5), "1e-5");
        assert_eq!(number(2.0000000000000004e-6), "2e-6");
        assert_eq!(number(0.001), "0.001");
        assert_eq!(number(1e6), "1e6");
    }

    #[test]
    fn log_axes_label_round_values() {
        let (labels, lines) = log_ticks((0.007, 0.36));
        assert_eq!(labels, vec![0.01, 0.02, 0.05, 0.1, 0.2]);
        assert_eq!(lines.len(), 3 + 9 + 3, "0.007 0.008 0.009, 0.01..0.09, 0.1 0.2 0.3");
        let (labels, _) = log_ticks((1e-7, 10.0));
        assert_eq!(labels.len(), 9);
    }

    #[test]
    fn log_ranges_end_at_one_two_five_values() {
        assert_eq!(range([2e-3, 5e-3].into_iter(), true, 0.0), (1e-3, 1e-2));
        assert_eq!(range([1e-3].into_iter(), true, 0.0), (5e-4, 2e-3));
        assert_eq!(range([0.0085, 0.3].into_iter(), true, 0.0), (5e-3, 0.5));
        assert_eq!(one_two_five(0.03, true), 0.05);
        assert_eq!(one_two_five(0.03, false), 0.02);
        assert_eq!(range(std::iter::empty(), false, 0.05), (0.0, 1.0));
        let (lo, hi) = range([1.0, 3.0].into_iter(), false, 0.5);
        assert!((lo + 0.0).abs() < 1e-12 && (hi - 4.0).abs() < 1e-12);
    }
}
