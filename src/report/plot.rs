//! PNG and SVG plots of a `process` timeline: the RSS of every process on the left axis, CPU % and
//! page faults per second on the right axis, and the user's labels as dashed vertical lines.
//!
//! Text is drawn with DejaVu Sans compiled into the binary, so plotting needs no system fonts (many
//! servers and CI machines have no fontconfig).

use std::fs;
use std::io;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

use super::atomic::write_atomically;
use crate::timeline::{Point, ProcessSeries, Timeline};

/// The size of the original pymemtrace's gnuplot PNG, kept so plots of both tools compare.
pub const PLOT_SIZE: (u32, u32) = (1000, 700);

/// The image formats a plot can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    Png,
    Svg,
}

/// The format a plot path asks for by its extension (case-insensitive), if it is one we write.
pub fn plot_kind(path: &Path) -> Option<PlotKind> {
    let extension = path.extension()?.to_string_lossy().to_ascii_lowercase();
    match extension.as_str() {
        "png" => Some(PlotKind::Png),
        "svg" => Some(PlotKind::Svg),
        _ => None,
    }
}

/// Draws `timeline` into `path` (PNG or SVG by extension), replacing any earlier file only once
/// the new one is complete.
pub fn write_plot(timeline: &Timeline, path: &Path) -> io::Result<()> {
    let kind = plot_kind(path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot plot to `{}`: the file name must end in .png or .svg",
                path.display()
            ),
        )
    })?;
    register_embedded_font()?;
    let figure = Figure::from_timeline(timeline);
    match kind {
        PlotKind::Png => write_atomically(path, ".png", |temporary| {
            // The PNG encoder picks the format from the extension, hence the ".png" suffix above.
            without_panics(|| {
                let root = BitMapBackend::new(temporary, PLOT_SIZE).into_drawing_area();
                draw_figure(&root, &figure)?;
                root.present().map_err(drawing_error)
            })
        }),
        PlotKind::Svg => {
            let mut svg = String::new();
            without_panics(|| {
                let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
                draw_figure(&root, &figure)?;
                root.present().map_err(drawing_error)
            })?;
            write_atomically(path, "", |temporary| fs::write(temporary, svg.as_bytes()))
        }
    }
}

/// The family name every text style of the plot asks for.
const FONT: &str = "sans-serif";

/// Registers the embedded font under [`FONT`], once per process.
fn register_embedded_font() -> io::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
        .map_err(io::Error::other)
}

/// Runs the drawing code, turning a panic into an error. Our inputs are sanitised so plotters'
/// internal assertions (e.g. on NaN ranges) should never fire, but a plot is a by-product of a
/// long recording and must not take the run's other outputs down with it.
fn without_panics(draw: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    panic::catch_unwind(AssertUnwindSafe(draw))
        .unwrap_or_else(|_| Err(io::Error::other("drawing the plot failed (internal error)")))
}

fn drawing_error<E: std::error::Error + Send + Sync>(err: DrawingAreaErrorKind<E>) -> io::Error {
    io::Error::other(format!("drawing the plot failed: {err}"))
}

/// Processes given their own colour and legend entry; the others are drawn in grey.
pub(super) const LEGEND_PROCESSES: usize = 10;
/// Longest command shown in a legend entry, in characters.
const COMMAND_CHARS: usize = 40;
/// Ticks of different processes closer than this are the same moment.
const SAME_TIME_SECONDS: f64 = 1e-3;

/// Tableau 10 with its grey replaced by navy: greys are kept for CPU %, page faults and the
/// processes left out of the legend.
pub(super) const PROCESS_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(0, 0, 128),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
pub(super) const UNLISTED_PROCESS_COLOUR: RGBColor = RGBColor(200, 200, 200);
pub(super) const CPU_COLOUR: RGBColor = RGBColor(80, 80, 80);
pub(super) const FAULTS_COLOUR: RGBColor = RGBColor(140, 140, 140);
pub(super) const LABEL_COLOUR: RGBColor = RGBColor(90, 90, 90);

/// How a line is drawn, in the plot and in its legend swatch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stroke {
    colour: RGBColor,
    width: u32,
    dashed: bool,
}

impl Stroke {
    fn style(self) -> ShapeStyle {
        ShapeStyle {
            color: self.colour.to_rgba(),
            filled: false,
            stroke_width: self.width,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Line {
    stroke: Stroke,
    points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
struct LegendEntry {
    stroke: Stroke,
    text: String,
}

/// CPU use and page-fault rate at one moment (of one process, or summed over the tree).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Activity {
    seconds: f64,
    cpu_percent: f64,
    faults_per_second: f64,
}

/// Everything drawn, in data units, worked out before any drawing so it can be tested.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    title: String,
    seconds: Range<f64>,
    rss_mb: Range<f64>,
    /// CPU % and scaled faults share the right axis.
    right: Range<f64>,
    /// RSS lines in drawing order: grey ones first, the root last so it stays on top.
    rss_lines: Vec<Line>,
    cpu: Line,
    faults: Line,
    /// Faults are divided by 10 to this power to fit the CPU % range.
    faults_exponent: i32,
    labels: Vec<(f64, String)>,
    legend: Vec<LegendEntry>,
    has_data: bool,
}

impl Figure {
    fn from_timeline(timeline: &Timeline) -> Figure {
        let processes: Vec<&ProcessSeries> = timeline
            .processes
            .iter()
            .filter(|process| process.points.iter().any(|point| point.seconds.is_finite()))
            .collect();
        let listed = legend_processes(&processes);

        let mut rss_lines = Vec::new();
        let mut legend = Vec::new();
        let mut unlisted_lines = Vec::new();
        for (index, process) in processes.iter().enumerate() {
            let points: Vec<(f64, f64)> = finite_points(process)
                .map(|point| (point.seconds, point.rss as f64 / 1e6))
                .collect();
            match listed
                .iter()
                .position(|&listed_index| listed_index == index)
            {
                Some(slot) => {
                    let stroke = Stroke {
                        colour: PROCESS_COLOURS[slot % PROCESS_COLOURS.len()],
                        width: 2,
                        dashed: false,
                    };
                    legend.push(LegendEntry {
                        stroke,
                        text: process_legend(process),
                    });
                    rss_lines.push(Line { stroke, points });
                }
                None => unlisted_lines.push(Line {
                    stroke: Stroke {
                        colour: UNLISTED_PROCESS_COLOUR,
                        width: 1,
                        dashed: false,
                    },
                    points,
                }),
            }
        }
        if !unlisted_lines.is_empty() {
            legend.push(LegendEntry {
                stroke: unlisted_lines[0].stroke,
                text: format!("… {} more processes", unlisted_lines.len()),
            });
        }
        rss_lines.reverse();
        unlisted_lines.extend(rss_lines);
        let rss_lines = unlisted_lines;

        let activity = tree_activity(&processes);
        let peak_cpu = activity.iter().map(|a| a.cpu_percent).fold(0.0, f64::max);
        let peak_faults = activity
            .iter()
            .map(|a| a.faults_per_second)
            .fold(0.0, f64::max);
        let right = 0.0..(peak_cpu * 1.05).max(100.0);
        let faults_exponent = fitting_exponent(peak_faults, right.end);
        let faults_divisor = 10f64.powi(faults_exponent);
        let cpu = Line {
            stroke: Stroke {
                colour: CPU_COLOUR,
                width: 1,
                dashed: false,
            },
            points: activity
                .iter()
                .map(|a| (a.seconds, a.cpu_percent))
                .collect(),
        };
        let faults = Line {
            stroke: Stroke {
                colour: FAULTS_COLOUR,
                width: 1,
                dashed: true,
            },
            points: activity
                .iter()
                .map(|a| (a.seconds, a.faults_per_second / faults_divisor))
                .collect(),
        };
        let scope = if processes.len() > 1 {
            format!(", all {} processes", processes.len())
        } else {
            String::new()
        };
        let faults_text = match faults_exponent {
            0 => "page faults/s".to_string(),
            exponent => format!("page faults/s ÷ {}", power_of_ten_text(exponent)),
        };
        if !processes.is_empty() {
            legend.push(LegendEntry {
                stroke: cpu.stroke,
                text: format!("CPU %{scope}"),
            });
            legend.push(LegendEntry {
                stroke: faults.stroke,
                text: format!("{faults_text}{scope}"),
            });
        }

        let labels: Vec<(f64, String)> = timeline
            .labels
            .iter()
            .filter(|label| label.seconds.is_finite())
            .map(|label| (label.seconds, single_line(&label.text)))
            .collect();

        let times = processes
            .iter()
            .flat_map(|process| finite_points(process).map(|point| point.seconds))
            .chain(labels.iter().map(|(seconds, _)| *seconds));
        let (first, last) = times.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), t| {
            (lo.min(t), hi.max(t))
        });
        let seconds = with_minimum_span(first, last, 1.0);
        let peak_mb = rss_lines
            .iter()
            .flat_map(|line| line.points.iter().map(|&(_, mb)| mb))
            .fold(0.0, f64::max);
        let rss_mb = 0.0..(peak_mb * 1.05).max(1.0);

        Figure {
            title: single_line(&timeline.title),
            seconds,
            rss_mb,
            right,
            rss_lines,
            cpu,
            faults,
            faults_exponent,
            labels,
            legend,
            has_data: !processes.is_empty(),
        }
    }
}

/// The points of a series that can be placed on an axis.
pub(super) fn finite_points(process: &ProcessSeries) -> impl Iterator<Item = &Point> {
    process
        .points
        .iter()
        .filter(|point| point.seconds.is_finite())
}

/// `lo..hi`, widened to at least `minimum` when the data is a single moment (or nothing).
pub(super) fn with_minimum_span(lo: f64, hi: f64, minimum: f64) -> Range<f64> {
    if hi - lo >= minimum * 1e-3 {
        lo..hi
    } else {
        lo..lo + minimum
    }
}

/// Indices (into `processes`) of the processes that get a colour and a legend entry: all of them
/// when few, else the root and the largest others by peak RSS, in their original order.
pub(super) fn legend_processes(processes: &[&ProcessSeries]) -> Vec<usize> {
    if processes.len() <= LEGEND_PROCESSES {
        return (0..processes.len()).collect();
    }
    let peak = |process: &ProcessSeries| process.points.iter().map(|p| p.rss).max().unwrap_or(0);
    let mut others: Vec<usize> = (1..processes.len()).collect();
    others.sort_by_key(|&index| std::cmp::Reverse(peak(processes[index])));
    others.truncate(LEGEND_PROCESSES - 1);
    let mut listed = vec![0];
    listed.extend(others);
    listed.sort_unstable();
    listed
}

/// `PID command`, the command cut to [`COMMAND_CHARS`].
pub(super) fn process_legend(process: &ProcessSeries) -> String {
    let command = single_line(&process.command);
    let command = command.trim();
    if command.is_empty() {
        return process.pid.to_string();
    }
    if command.chars().count() > COMMAND_CHARS {
        let cut: String = command.chars().take(COMMAND_CHARS - 1).collect();
        format!("{} {}…", process.pid, cut.trim_end())
    } else {
        format!("{} {command}", process.pid)
    }
}

/// Text on one line: control characters (newlines, tabs) become spaces, and runs of spaces one.
pub(super) fn single_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if !(c == ' ' && line.ends_with(' ')) {
            line.push(c);
        }
    }
    line
}

/// The smallest power of ten (not below 10^0) that brings `peak` down to at most `limit`.
pub(super) fn fitting_exponent(peak: f64, limit: f64) -> i32 {
    if !(peak.is_finite() && limit > 0.0) || peak <= limit {
        return 0;
    }
    let mut exponent = (peak / limit).log10().ceil().max(0.0) as i32;
    // log10 of an exact power of ten can come out a hair high or low.
    if exponent > 0 && peak / 10f64.powi(exponent - 1) <= limit {
        exponent -= 1;
    }
    while peak / 10f64.powi(exponent) > limit {
        exponent += 1;
    }
    exponent
}

/// 10 to the power `exponent` as a reader would write it: "10", "100", then "1e3", "1e4"...
pub(super) fn power_of_ten_text(exponent: i32) -> String {
    match exponent {
        0..=2 => 10u32.pow(exponent as u32).to_string(),
        _ => format!("1e{exponent}"),
    }
}

/// A non-negative finite number, or 0: one bad reading must not spoil a whole axis.
fn sane(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

/// CPU % and faults/s over time: the root's own when it is alone, else the sum over the tree.
///
/// Processes are sampled at the same ticks, but their series may be thinned differently and start
/// and end at different times, so they are matched on a common clock: the root's times, plus the
/// times of others before the root appeared or after it ended. At each clock time a process
/// alive then (within its first and last point) contributes its nearest point.
fn tree_activity(processes: &[&ProcessSeries]) -> Vec<Activity> {
    let Some(root) = processes.first() else {
        return Vec::new();
    };
    let root_times: Vec<f64> = finite_points(root).map(|point| point.seconds).collect();
    let (root_first, root_last) = match (root_times.first(), root_times.last()) {
        (Some(&first), Some(&last)) => (first, last),
        _ => (f64::INFINITY, f64::NEG_INFINITY),
    };
    let mut clock = root_times.clone();
    for process in &processes[1..] {
        clock.extend(
            finite_points(process)
                .map(|point| point.seconds)
                .filter(|&t| {
                    t < root_first - SAME_TIME_SECONDS || t > root_last + SAME_TIME_SECONDS
                }),
        );
    }
    clock.sort_by(f64::total_cmp);
    clock.dedup_by(|later, earlier| *later - *earlier < SAME_TIME_SECONDS);

    let mut activity: Vec<Activity> = clock
        .iter()
        .map(|&seconds| Activity {
            seconds,
            cpu_percent: 0.0,
            faults_per_second: 0.0,
        })
        .collect();
    for process in processes {
        let points: Vec<&Point> = finite_points(process).collect();
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            continue;
        };
        let alive = (first.seconds - SAME_TIME_SECONDS)..=(last.seconds + SAME_TIME_SECONDS);
        for moment in activity.iter_mut().filter(|m| alive.contains(&m.seconds)) {
            let point = nearest_point(&points, moment.seconds);
            moment.cpu_percent += sane(point.cpu_percent);
            moment.faults_per_second += sane(point.faults_per_second);
        }
    }
    activity
}

/// The point nearest in time to `seconds`; `points` is non-empty and in time order.
fn nearest_point<'a>(points: &[&'a Point], seconds: f64) -> &'a Point {
    let after = points.partition_point(|point| point.seconds < seconds);
    match (after.checked_sub(1).map(|i| points[i]), points.get(after)) {
        (Some(before), Some(&after)) => {
            if seconds - before.seconds <= after.seconds - seconds {
                before
            } else {
                after
            }
        }
        (Some(before), None) => before,
        (None, Some(&after)) => after,
        (None, None) => points[0],
    }
}

/// A tick label: as few digits as the value needs ("12.5", "300"), exponent form when huge.
fn tick_text(value: &f64) -> String {
    let value = *value;
    if value.abs() >= 1e7 {
        return format!("{value:.2e}");
    }
    let fixed = format!("{value:.3}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

const TITLE_SIZE: f64 = 22.0;
const AXIS_DESCRIPTION_SIZE: f64 = 16.0;
const TICK_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 14.0;
const LABEL_SIZE: f64 = 14.0;
const LEGEND_ROW_HEIGHT: u32 = 22;
const LEGEND_SWATCH_WIDTH: i32 = 28;
const LEGEND_COLUMN_GAP: u32 = 30;
const LEGEND_TEXT_GAP: i32 = 8;
/// Space around the figure's edges.
const OUTER_MARGIN: u32 = 14;

fn text_style(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// The width of `text` in pixels as drawn in `style` (an estimate; 0 if the font cannot tell).
fn text_width(text: &str, style: &TextStyle) -> u32 {
    style.font.box_size(text).map_or(0, |(width, _)| width)
}

/// `text`, cut with an ellipsis so it is at most `max_width` pixels wide in `style`.
fn fit_text(text: &str, style: &TextStyle, max_width: u32) -> String {
    if text_width(text, style) <= max_width {
        return text.to_string();
    }
    // No line of the plot holds more than a few hundred characters; starting there bounds the
    // work below for absurdly long text.
    let mut chars: Vec<char> = text.chars().take(400).collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate = format!("{}…", chars.iter().collect::<String>().trim_end());
        if text_width(&candidate, style) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// Where the legend's entries go below the chart: a table filled row by row, with as many
/// columns as fit the width, each as wide as its widest entry.
#[derive(Debug, Clone, PartialEq)]
struct LegendGrid {
    /// Pixels from a column's start to the next one's; empty when there is no legend.
    column_widths: Vec<u32>,
    rows: usize,
}

impl LegendGrid {
    fn new(entries: &[LegendEntry], style: &TextStyle, available_width: u32) -> LegendGrid {
        let entry_widths: Vec<u32> = entries
            .iter()
            .map(|entry| {
                LEGEND_SWATCH_WIDTH as u32 + LEGEND_TEXT_GAP as u32 + text_width(&entry.text, style)
            })
            .collect();
        for columns in (1..=entry_widths.len()).rev() {
            let column_widths: Vec<u32> = (0..columns)
                .map(|column| {
                    let widest = entry_widths.iter().skip(column).step_by(columns).max();
                    widest.copied().unwrap_or(0) + LEGEND_COLUMN_GAP
                })
                .collect();
            let total: u32 = column_widths.iter().sum::<u32>() - LEGEND_COLUMN_GAP;
            if total <= available_width || columns == 1 {
                return LegendGrid {
                    column_widths,
                    rows: entry_widths.len().div_ceil(columns),
                };
            }
        }
        LegendGrid {
            column_widths: Vec::new(),
            rows: 0,
        }
    }

    fn width(&self) -> u32 {
        self.column_widths
            .iter()
            .sum::<u32>()
            .saturating_sub(LEGEND_COLUMN_GAP)
    }

    fn height(&self) -> u32 {
        if self.rows == 0 {
            0
        } else {
            self.rows as u32 * LEGEND_ROW_HEIGHT + OUTER_MARGIN
        }
    }
}

fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> io::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(drawing_error)?;
    let (width, height) = root.dim_in_pixel();
    let legend_style = text_style(LEGEND_SIZE);
    let legend_width = width.saturating_sub(2 * OUTER_MARGIN);
    let grid = LegendGrid::new(&figure.legend, &legend_style, legend_width);
    let (chart_area, legend_area) =
        root.split_vertically(height.saturating_sub(grid.height()).max(height / 2));

    let title_style = text_style(TITLE_SIZE);
    let title = fit_text(
        &figure.title,
        &title_style,
        width.saturating_sub(2 * OUTER_MARGIN),
    );
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, title_style)
        .margin_top(OUTER_MARGIN / 2)
        .margin_left(OUTER_MARGIN)
        .margin_right(OUTER_MARGIN)
        .margin_bottom(4)
        .x_label_area_size(50)
        .y_label_area_size(66)
        .right_y_label_area_size(74)
        .build_cartesian_2d(figure.seconds.clone(), figure.rss_mb.clone())
        .map_err(drawing_error)?
        .set_secondary_coord(figure.seconds.clone(), figure.right.clone());

    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("RSS (MB)")
        .x_labels(12)
        .y_labels(10)
        .x_label_formatter(&tick_text)
        .y_label_formatter(&tick_text)
        .label_style(text_style(TICK_SIZE))
        .axis_desc_style(text_style(AXIS_DESCRIPTION_SIZE))
        .bold_line_style(BLACK.mix(0.12))
        // Grid lines at the labelled ticks only: finer ones make the data hard to follow.
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(drawing_error)?;
    chart
        .configure_secondary_axes()
        .y_desc("CPU % / scaled faults")
        .y_labels(10)
        .y_label_formatter(&tick_text)
        .label_style(text_style(TICK_SIZE))
        .axis_desc_style(text_style(AXIS_DESCRIPTION_SIZE))
        .draw()
        .map_err(drawing_error)?;

    let label_stroke = Stroke {
        colour: LABEL_COLOUR,
        width: 1,
        dashed: true,
    };
    for (seconds, _) in &figure.labels {
        let ends = [
            (*seconds, figure.rss_mb.start),
            (*seconds, figure.rss_mb.end),
        ];
        chart
            .draw_series(DashedLineSeries::new(ends, 6, 4, label_stroke.style()))
            .map_err(drawing_error)?;
    }
    for line in [&figure.faults, &figure.cpu] {
        if line.stroke.dashed {
            chart
                .draw_secondary_series(DashedLineSeries::new(
                    line.points.iter().copied(),
                    4,
                    3,
                    line.stroke.style(),
                ))
                .map_err(drawing_error)?;
        } else {
            chart
                .draw_secondary_series(LineSeries::new(
                    line.points.iter().copied(),
                    line.stroke.style(),
                ))
                .map_err(drawing_error)?;
        }
        // A line through one point is invisible: mark it.
        if let [point] = line.points[..] {
            chart
                .draw_secondary_series(std::iter::once(Circle::new(
                    point,
                    2,
                    line.stroke.style().filled(),
                )))
                .map_err(drawing_error)?;
        }
    }
    for line in &figure.rss_lines {
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                line.stroke.style(),
            ))
            .map_err(drawing_error)?;
        // A line through one point is invisible: mark it.
        if let [point] = line.points[..] {
            chart
                .draw_series(std::iter::once(Circle::new(
                    point,
                    3,
                    line.stroke.style().filled(),
                )))
                .map_err(drawing_error)?;
        }
    }

    // Backend pixels, as are the chart's coordinates below.
    let (plot_x, plot_y) = chart.plotting_area().get_pixel_range();
    draw_label_texts(
        &chart_area,
        figure,
        |seconds| chart.backend_coord(&(seconds, figure.rss_mb.end)).0,
        plot_x.clone(),
        plot_y.clone(),
    )?;

    if !figure.has_data {
        let (area_left, area_top) = chart_area.get_base_pixel();
        let centre = (
            (plot_x.start + plot_x.end) / 2 - area_left,
            (plot_y.start + plot_y.end) / 2 - area_top,
        );
        chart_area
            .draw(&Text::new(
                "no samples",
                centre,
                text_style(AXIS_DESCRIPTION_SIZE)
                    .color(&LABEL_COLOUR)
                    .pos(Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(drawing_error)?;
    }

    draw_legend(&legend_area, &figure.legend, &grid, &legend_style)
}

/// Writes each label's text beside its dashed line, reading upwards and ending near the top of
/// the plot; on the left of the line when the right would run off the plot.
fn draw_label_texts<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    figure: &Figure,
    pixel_x: impl Fn(f64) -> i32,
    plot_x: Range<i32>,
    plot_y: Range<i32>,
) -> io::Result<()>
where
    DB::ErrorType: 'static,
{
    let style = text_style(LABEL_SIZE)
        .color(&LABEL_COLOUR)
        .transform(FontTransform::Rotate270)
        .pos(Pos::new(HPos::Right, VPos::Top));
    let upright = text_style(LABEL_SIZE);
    let text_height = LABEL_SIZE.ceil() as i32;
    // Room between a text and its line, and around the text for its backing.
    let gap = 6;
    let padding = 2;
    let max_length = (plot_y.end - plot_y.start - 4 * gap).max(0) as u32;
    let top = plot_y.start + gap;
    // Chart coordinates are relative to the backend, the area's to itself.
    let (area_left, area_top) = area.get_base_pixel();
    for (seconds, text) in &figure.labels {
        let text = fit_text(text, &upright, max_length);
        if text.is_empty() {
            continue;
        }
        let length = text_width(&text, &upright) as i32;
        let x = pixel_x(*seconds);
        let left_of_line = x + gap + text_height > plot_x.end;
        let text_x = if left_of_line {
            x - gap - text_height
        } else {
            x + gap
        };
        // A translucent backing keeps the text readable where it crosses the data.
        let backing = Rectangle::new(
            [
                (text_x - padding - area_left, top - padding - area_top),
                (
                    text_x + text_height + padding - area_left,
                    top + length + padding - area_top,
                ),
            ],
            WHITE.mix(0.8).filled(),
        );
        area.draw(&backing).map_err(drawing_error)?;
        let position = (text_x - area_left, top - area_top);
        area.draw(&Text::new(text, position, style.clone()))
            .map_err(drawing_error)?;
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
    grid: &LegendGrid,
    style: &TextStyle,
) -> io::Result<()>
where
    DB::ErrorType: 'static,
{
    let (width, _) = area.dim_in_pixel();
    let left = (width.saturating_sub(grid.width()) / 2) as i32;
    let columns = grid.column_widths.len().max(1);
    let text_style = style.pos(Pos::new(HPos::Left, VPos::Center));
    for (index, entry) in entries.iter().enumerate() {
        let column = index % columns;
        let row = (index / columns) as i32;
        let x = left + grid.column_widths[..column].iter().sum::<u32>() as i32;
        let y = row * LEGEND_ROW_HEIGHT as i32 + LEGEND_ROW_HEIGHT as i32 / 2 + 2;
        let swatch = vec![(x, y), (x + LEGEND_SWATCH_WIDTH, y)];
        let swatch_style = Stroke {
            width: entry.stroke.width.max(2),
            ..entry.stroke
        }
        .style();
        if entry.stroke.dashed {
            area.draw(&plotters::element::DashedPathElement::new(
                swatch,
                5,
                3,
                swatch_style,
            ))
        } else {
            area.draw(&PathElement::new(swatch, swatch_style))
        }
        .map_err(drawing_error)?;
        area.draw(&Text::new(
            entry.text.clone(),
            (x + LEGEND_SWATCH_WIDTH + LEGEND_TEXT_GAP, y),
            text_style.clone(),
        ))
        .map_err(drawing_error)?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::timeline::Label;

    pub(in crate::report) fn point(seconds: f64, rss: u64, cpu: f64, faults: f64) -> Point {
        Point {
            seconds,
            unix_time: 1_795_000_000.0 + seconds,
            rss,
            faults_per_second: faults,
            user_seconds: seconds * cpu / 100.0,
            cpu_percent_mean: cpu,
            cpu_percent: cpu,
        }
    }

    pub(in crate::report) fn series(pid: u32, depth: u32, points: Vec<Point>) -> ProcessSeries {
        ProcessSeries {
            pid,
            ppid: if depth == 0 { 1 } else { 100 },
            depth,
            command: format!("python3 worker_{pid}.py"),
            points,
        }
    }

    /// A root that grows to 250 MB with a child that starts at 2 s, and two labels.
    pub(in crate::report) fn small_timeline() -> Timeline {
        let root = (0..=40)
            .map(|i| {
                let t = i as f64 * 0.25;
                point(
                    t,
                    50_000_000 + (t * 20e6) as u64,
                    95.0,
                    1200.0 * (i % 7) as f64,
                )
            })
            .collect();
        let child = (8..=30)
            .map(|i| {
                let t = i as f64 * 0.25;
                point(t, 30_000_000 + (t * 3e6) as u64, 40.0, 300.0)
            })
            .collect();
        Timeline {
            title: "PID 100 python3 job.py --size 10".to_string(),
            processes: vec![
                ProcessSeries {
                    command: "python3 job.py --size 10".to_string(),
                    ..series(100, 0, root)
                },
                series(101, 1, child),
            ],
            labels: vec![
                Label {
                    seconds: 2.0,
                    text: "load data".to_string(),
                },
                Label {
                    seconds: 7.5,
                    text: "say \"done\"".to_string(),
                },
            ],
        }
    }

    /// A fresh directory under the system's temporary one, removed when dropped.
    pub(in crate::report) struct ScratchDir(pub PathBuf);

    impl ScratchDir {
        pub fn new(name: &str) -> ScratchDir {
            let path = std::env::temp_dir().join(format!(
                "pymemtrace-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            ScratchDir(path)
        }

        pub fn file_names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    use std::path::PathBuf;

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = fs::read(path).unwrap();
        let mut reader = png::Decoder::new(io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        // Decoding the whole image checks the file is complete, not only its header.
        reader.next_frame(&mut pixels).unwrap();
        (reader.info().width, reader.info().height)
    }

    fn assert_svg_size(path: &Path) {
        let text = fs::read_to_string(path).unwrap();
        let document = roxmltree::Document::parse(&text).unwrap();
        let svg = document.root_element();
        assert_eq!(svg.tag_name().name(), "svg");
        assert_eq!(svg.attribute("width"), Some("1000"));
        assert_eq!(svg.attribute("height"), Some("700"));
    }

    #[test]
    fn plot_kind_follows_the_extension_in_any_case() {
        assert_eq!(plot_kind(Path::new("a/run.png")), Some(PlotKind::Png));
        assert_eq!(plot_kind(Path::new("run.PNG")), Some(PlotKind::Png));
        assert_eq!(plot_kind(Path::new("run.Svg")), Some(PlotKind::Svg));
        assert_eq!(plot_kind(Path::new("run.pdf")), None);
        assert_eq!(plot_kind(Path::new("png")), None);
        assert_eq!(plot_kind(Path::new("run.")), None);
    }

    #[test]
    fn other_extensions_are_refused_before_anything_is_written() {
        let dir = ScratchDir::new("plot-refused");
        let err = write_plot(&small_timeline(), &dir.0.join("run.pdf")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(".png or .svg"), "{err}");
        assert!(dir.file_names().is_empty());
    }

    #[test]
    fn writes_a_png_and_an_svg_of_the_plot_size_leaving_no_temporary_files() {
        let dir = ScratchDir::new("plot-writes");
        let timeline = small_timeline();
        let png_path = dir.0.join("run.png");
        let svg_path = dir.0.join("run.SVG");
        write_plot(&timeline, &png_path).unwrap();
        write_plot(&timeline, &svg_path).unwrap();
        assert_eq!(png_size(&png_path), PLOT_SIZE);
        assert_svg_size(&svg_path);
        let svg = fs::read_to_string(&svg_path).unwrap();
        for text in [
            "RSS (MB)",
            "time (s)",
            "100 python3 job.py --size 10",
            "load data",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        // Written again over the old files.
        write_plot(&timeline, &png_path).unwrap();
        assert_eq!(dir.file_names(), ["run.SVG", "run.png"]);
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = ScratchDir::new("plot-fails");
        let missing = dir.0.join("no such dir").join("run.png");
        assert!(write_plot(&small_timeline(), &missing).is_err());
        assert!(write_plot(&small_timeline(), &dir.0.join("no such dir/run.svg")).is_err());
        assert!(dir.file_names().is_empty());
    }

    #[test]
    fn degenerate_timelines_still_plot() {
        let dir = ScratchDir::new("plot-degenerate");
        let mut bad = point(f64::NAN, 0, f64::NAN, f64::INFINITY);
        bad.unix_time = f64::NAN;
        let cases = [
            ("empty", Timeline::default()),
            (
                "no-points",
                Timeline {
                    title: String::new(),
                    processes: vec![series(1, 0, vec![]), series(2, 1, vec![])],
                    labels: vec![Label {
                        seconds: 3.0,
                        text: "only a label".into(),
                    }],
                },
            ),
            (
                "single-point",
                Timeline {
                    title: "one".into(),
                    processes: vec![series(1, 0, vec![point(0.0, 1_000_000, 0.0, 0.0)])],
                    labels: vec![],
                },
            ),
            (
                "all-zero",
                Timeline {
                    title: "zeros".into(),
                    processes: vec![series(
                        1,
                        0,
                        (0..5).map(|i| point(i as f64, 0, 0.0, 0.0)).collect(),
                    )],
                    labels: vec![],
                },
            ),
            (
                "huge-and-invalid",
                Timeline {
                    title: "x".repeat(500),
                    processes: vec![
                        series(1, 0, vec![bad]),
                        series(
                            2,
                            1,
                            vec![
                                point(0.0, u64::MAX, 1e12, 1e300),
                                point(1e9, u64::MAX / 2, -5.0, f64::NAN),
                            ],
                        ),
                    ],
                    labels: vec![Label {
                        seconds: f64::INFINITY,
                        text: "\u{0}\n\"".repeat(200),
                    }],
                },
            ),
        ];
        for (name, timeline) in cases {
            for extension in ["png", "svg"] {
                let path = dir.0.join(format!("{name}.{extension}"));
                write_plot(&timeline, &path).unwrap_or_else(|err| panic!("{name}: {err}"));
                match extension {
                    "png" => assert_eq!(png_size(&path), PLOT_SIZE),
                    _ => assert_svg_size(&path),
                }
            }
        }
    }

    #[test]
    fn tick_labels_use_as_few_digits_as_needed() {
        assert_eq!(tick_text(&12.5), "12.5");
        assert_eq!(tick_text(&300.0), "300");
        assert_eq!(tick_text(&(0.1 + 0.2)), "0.3");
        assert_eq!(tick_text(&-0.0001), "0");
        assert_eq!(tick_text(&0.025), "0.025");
        assert_eq!(tick_text(&1.5e10), "1.50e10");
    }

    #[test]
    fn faults_are_scaled_by_the_smallest_power_of_ten_that_fits() {
        assert_eq!(fitting_exponent(0.0, 100.0), 0);
        assert_eq!(fitting_exponent(100.0, 100.0), 0);
        assert_eq!(fitting_exponent(100.5, 100.0), 1);
        assert_eq!(fitting_exponent(1000.0, 100.0), 1);
        assert_eq!(fitting_exponent(1001.0, 100.0), 2);
        assert_eq!(fitting_exponent(54_321.0, 100.0), 3);
        assert_eq!(fitting_exponent(1e300, 100.0), 298);
        assert_eq!(fitting_exponent(f64::INFINITY, 100.0), 0);
        assert_eq!(fitting_exponent(f64::NAN, 100.0), 0);
    }

    #[test]
    fn the_figure_sums_activity_over_the_tree_and_names_the_scale() {
        let figure = Figure::from_timeline(&small_timeline());
        // Before the child starts only the root counts; then both.
        assert_eq!(figure.cpu.points[0], (0.0, 95.0));
        assert_eq!(figure.cpu.points[8], (2.0, 135.0));
        assert_eq!(figure.right, 0.0..135.0 * 1.05);
        // Peak faults 7200 + 300 do not fit 141.75: divided by 100.
        assert_eq!(figure.faults_exponent, 2);
        let legend: Vec<&str> = figure.legend.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            legend,
            [
                "100 python3 job.py --size 10",
                "101 python3 worker_101.py",
                "CPU %, all 2 processes",
                "page faults/s ÷ 100, all 2 processes",
            ]
        );
        assert_eq!(figure.seconds, 0.0..10.0);
        // The root is drawn last, on top.
        assert_eq!(figure.rss_lines.last().unwrap().points[0], (0.0, 50.0));
    }

    #[test]
    fn activity_matches_processes_by_nearest_time_while_each_is_alive() {
        // The root ends at 2 s; the child, thinned to every other tick, lives on to 4 s.
        let root = series(
            1,
            0,
            (0..=4)
                .map(|i| point(i as f64 * 0.5, 1, 10.0, 1.0))
                .collect(),
        );
        let child = series(
            2,
            1,
            (1..=4)
                .map(|i| point(i as f64 + 0.0002, 1, 1.0, 100.0))
                .collect(),
        );
        let activity = tree_activity(&[&root, &child]);
        let summary: Vec<(f64, f64, f64)> = activity
            .iter()
            .map(|a| (a.seconds, a.cpu_percent, a.faults_per_second))
            .collect();
        assert_eq!(
            summary,
            [
                (0.0, 10.0, 1.0),
                (0.5, 10.0, 1.0),
                (1.0, 11.0, 101.0),
                (1.5, 11.0, 101.0),
                (2.0, 11.0, 101.0),
                (3.0002, 1.0, 100.0),
                (4.0002, 1.0, 100.0),
            ]
        );
    }

    #[test]
    fn many_processes_legend_the_root_and_the_largest_others() {
        let processes: Vec<ProcessSeries> = (0..14u32)
            .map(|i| {
                let peak = if i == 0 { 1 } else { u64::from(i) * 1_000_000 };
                series(100 + i, u32::from(i > 0), vec![point(0.0, peak, 1.0, 1.0)])
            })
            .collect();
        let figure = Figure::from_timeline(&Timeline {
            title: "tree".into(),
            processes,
            labels: vec![],
        });
        let legend: Vec<&str> = figure.legend.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(legend.len(), 10 + 3);
        assert!(legend[0].starts_with("100 "));
        // The smallest children (101 to 104) are left out.
        assert!(legend[1].starts_with("105 "), "{legend:?}");
        assert!(legend[9].starts_with("113 "));
        assert_eq!(legend[10], "… 4 more processes");
        let grey = figure
            .rss_lines
            .iter()
            .filter(|line| line.stroke.colour == UNLISTED_PROCESS_COLOUR)
            .count();
        assert_eq!(grey, 4);
    }

    #[test]
    fn long_commands_are_cut_in_the_legend() {
        let process = ProcessSeries {
            command: format!("python3 {}", "a".repeat(100)),
            ..series(7, 0, vec![])
        };
        let text = process_legend(&process);
        assert!(text.starts_with("7 python3 aaa"));
        assert!(text.ends_with('…'));
        assert_eq!(text.chars().count(), "7 ".len() + COMMAND_CHARS);
    }
}
