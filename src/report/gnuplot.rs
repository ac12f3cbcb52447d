//! gnuplot files of a `process` timeline: `PREFIX.dat`, the data in the original pymemtrace's
//! columns, and `PREFIX.plt`, a script that draws it into `PREFIX.png` like our own plot.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use plotters::style::RGBColor;

use super::atomic::write_atomically;
use super::plot::{
    finite_points, fitting_exponent, legend_processes, power_of_ten_text, process_legend,
    single_line, with_minimum_span, CPU_COLOUR, FAULTS_COLOUR, LABEL_COLOUR, PLOT_SIZE,
    PROCESS_COLOURS, UNLISTED_PROCESS_COLOUR,
};
use crate::timeline::{Point, ProcessSeries, Timeline};

/// The first line of the `.dat` file, as the original pymemtrace wrote it.
pub const DAT_HEADER: &str = "#t(s) RSS PageFaults/s User Mean_CPU% Inst_CPU% Timestamp PID Label";

/// A label belongs to a row when their times differ by at most this (labels are stamped on ticks,
/// so they match exactly unless rounded on the way through a log).
const LABEL_MATCH_SECONDS: f64 = 1e-3;
/// Longest label text written into the script, in characters: longer ones run off the plot.
const LABEL_CHARS: usize = 60;

/// Writes `PREFIX.dat` and `PREFIX.plt` (each replacing any earlier file only once complete) and
/// returns their paths. The script refers to its data and image by name only, so it is run as
/// `gnuplot PREFIX.plt` from its own directory.
pub fn write_gnuplot(timeline: &Timeline, prefix: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let dat_path = with_suffix(prefix, ".dat")?;
    let plt_path = with_suffix(prefix, ".plt")?;
    let base_name = prefix
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let script = plt_text(timeline, &base_name);
    write_atomically(&dat_path, "", |temporary| {
        std::fs::write(temporary, dat_text(timeline))
    })?;
    write_atomically(&plt_path, "", |temporary| std::fs::write(temporary, script))?;
    Ok((dat_path, plt_path))
}

/// `PREFIX` with `suffix` appended to its file name (not replacing an extension: `run.1` gives
/// `run.1.dat`).
fn with_suffix(prefix: &Path, suffix: &str) -> io::Result<PathBuf> {
    let name = prefix.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the gnuplot prefix `{}` does not end in a file name",
                prefix.display()
            ),
        )
    })?;
    let mut name = name.to_owned();
    name.push(suffix);
    Ok(prefix.with_file_name(name))
}

/// One row of the `.dat` file before formatting.
struct Row<'a> {
    pid: u32,
    point: &'a Point,
    label: String,
}

/// The `.dat` file: the header, then one row per point of every process, by time then PID.
fn dat_text(timeline: &Timeline) -> String {
    let mut rows: Vec<Row> = Vec::new();
    for (index, process) in timeline.processes.iter().enumerate() {
        let is_root = index == 0;
        for point in finite_points(process) {
            let label = if is_root {
                labels_at(timeline, point.seconds)
            } else {
                String::new()
            };
            rows.push(Row {
                pid: process.pid,
                point,
                label,
            });
        }
    }
    rows.sort_by(|a, b| {
        a.point
            .seconds
            .total_cmp(&b.point.seconds)
            .then(a.pid.cmp(&b.pid))
    });

    let mut text = String::with_capacity(DAT_HEADER.len() + 1 + rows.len() * 100);
    text.push_str(DAT_HEADER);
    text.push('\n');
    for row in &rows {
        let point = row.point;
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "{} {} {} {} {} {} {} {} \"{}\"",
            fixed(point.seconds, 3),
            point.rss,
            fixed(point.faults_per_second, 1),
            fixed(point.user_seconds, 3),
            fixed(point.cpu_percent_mean, 1),
            fixed(point.cpu_percent, 1),
            timestamp(point.unix_time),
            row.pid,
            row.label,
        );
    }
    text
}

/// The texts of the labels stamped at `seconds`, made safe for a quoted data column.
fn labels_at(timeline: &Timeline, seconds: f64) -> String {
    let texts: Vec<String> = timeline
        .labels
        .iter()
        .filter(|label| (label.seconds - seconds).abs() <= LABEL_MATCH_SECONDS)
        .map(|label| data_column_text(&label.text))
        .collect();
    texts.join("; ")
}

/// Text for a double-quoted data column: gnuplot ends the column at the next `"` and the row at a
/// newline, so quotes become apostrophes and control characters spaces.
fn data_column_text(text: &str) -> String {
    single_line(text).replace('"', "'").trim().to_string()
}

/// `value` with `decimals` places; `NaN` (which gnuplot reads as missing) when not finite.
fn fixed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "NaN".to_string()
    }
}

/// ISO 8601 UTC to the millisecond, or `-` when the time is unknown (recorded as 0) or invalid.
fn timestamp(unix_time: f64) -> String {
    let since_epoch = if unix_time > 0.0 {
        Duration::try_from_secs_f64(unix_time).ok()
    } else {
        None
    };
    since_epoch
        .and_then(|duration| SystemTime::UNIX_EPOCH.checked_add(duration))
        .map_or_else(
            || "-".to_string(),
            |time| humantime::format_rfc3339_millis(time).to_string(),
        )
}

/// A gnuplot single-quoted string: no escape sequences are processed inside it, and `''` stands
/// for one apostrophe. Control characters become spaces so the string stays on its line.
fn quoted(text: &str) -> String {
    format!("'{}'", single_line(text).replace('\'', "''"))
}

/// Lines, or a dot for a process seen only once (a line through one point draws nothing).
fn curve_style(process: &ProcessSeries) -> &'static str {
    if finite_points(process).nth(1).is_some() {
        "lines"
    } else {
        "points pt 7 ps 0.8"
    }
}

fn hex(colour: RGBColor) -> String {
    format!("'#{:02x}{:02x}{:02x}'", colour.0, colour.1, colour.2)
}

/// The gnuplot script: RSS in MB per process on y1, the root's CPU % and scaled page faults on
/// y2, labels as dashed vertical lines, into a PNG the size of our own plots. `base_name` is the
/// prefix's file name: the script reads `base_name.dat` and writes `base_name.png` beside itself.
fn plt_text(timeline: &Timeline, base_name: &str) -> String {
    let dat_name = format!("{base_name}.dat");
    let png_name = format!("{base_name}.png");
    let processes: Vec<&ProcessSeries> = timeline
        .processes
        .iter()
        .filter(|process| finite_points(process).next().is_some())
        .collect();
    let root = timeline
        .processes
        .first()
        .filter(|root| finite_points(root).next().is_some());

    let peak_cpu = root
        .iter()
        .flat_map(|root| finite_points(root))
        .map(|point| point.cpu_percent)
        .filter(|cpu| cpu.is_finite())
        .fold(0.0, f64::max);
    let peak_faults = root
        .iter()
        .flat_map(|root| finite_points(root))
        .map(|point| point.faults_per_second)
        .filter(|faults| faults.is_finite())
        .fold(0.0, f64::max);
    let y2_top = (peak_cpu * 1.05).max(100.0);
    let faults_exponent = fitting_exponent(peak_faults, y2_top);

    let times = processes
        .iter()
        .flat_map(|process| finite_points(process).map(|point| point.seconds))
        .chain(
            timeline
                .labels
                .iter()
                .map(|label| label.seconds)
                .filter(|seconds| seconds.is_finite()),
        );
    let (first, last) = times.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    let x_range = with_minimum_span(first, last, 1.0);

    let mut script = String::new();
    let mut line = |text: &str| {
        script.push_str(text);
        script.push('\n');
    };
    line(&format!(
        "# pymemtrace process timeline: {}",
        single_line(&timeline.title)
    ));
    line(&format!(
        "# Run `gnuplot {base_name}.plt` in this file's directory: it reads {dat_name} and writes {png_name}."
    ));
    line("# Columns of the data: 1 t(s), 2 RSS (bytes), 3 page faults/s, 4 user CPU s, 5 mean CPU %,");
    line("# 6 instantaneous CPU %, 7 timestamp, 8 PID, 9 label. Rows of all processes are interleaved;");
    line("# each curve keeps its PID's rows and makes the others NaN, which `set datafile missing NaN`");
    line("# skips without breaking the line (gnuplot 5).");
    line("set encoding utf8");
    // pngcairo draws smoother lines and dashes; the libgd `png` terminal (gnuplot-nox) is the
    // fallback that every build has.
    line(&format!(
        "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {{ set terminal pngcairo size {w},{h} }} else {{ set terminal png size {w},{h} }}",
        w = PLOT_SIZE.0,
        h = PLOT_SIZE.1
    ));
    // Enhanced text would read _ ^ @ & { } in commands and labels as markup.
    line("set termoption noenhanced");
    line(&format!("set output {}", quoted(&png_name)));
    line("set datafile separator whitespace");
    line("set datafile missing NaN");
    line(&format!("set title {}", quoted(&timeline.title)));
    line("set xlabel 'time (s)'");
    line("set ylabel 'RSS (MB)'");
    line("set y2label 'CPU % / scaled faults'");
    line("set grid xtics ytics lt 1 lw 1 lc rgb '#e4e4e4'");
    line("set ytics nomirror");
    line("set y2tics");
    line(&format!("set xrange [{}:{}]", x_range.start, x_range.end));
    line("set yrange [0:*]");
    line(&format!("set y2range [0:{}]", y2_top.ceil()));
    // Below the plot so it never hides data; a smaller font lets long entries sit in two columns.
    line("set key below center horizontal reverse Left font ',10' height 1");

    for label in &timeline.labels {
        if !label.seconds.is_finite() {
            continue;
        }
        let text: String = single_line(&label.text)
            .trim()
            .chars()
            .take(LABEL_CHARS)
            .collect();
        line(&format!(
            "set arrow from {t}, graph 0 to {t}, graph 1 nohead dt 2 lc rgb {colour}",
            t = label.seconds,
            colour = hex(LABEL_COLOUR)
        ));
        // The text reads upwards beside its line: on the right, unless that runs off the plot.
        let near_right_edge =
            (label.seconds - x_range.start) > 0.97 * (x_range.end - x_range.start);
        let offset = if near_right_edge { -0.5 } else { 1.5 };
        line(&format!(
            "set label {} at {}, graph 0.97 rotate by 90 right offset character {offset}, 0 textcolor rgb {}",
            quoted(&text),
            label.seconds,
            hex(LABEL_COLOUR)
        ));
    }

    if processes.is_empty() {
        // gnuplot refuses to plot a file with no valid points; draw empty axes instead.
        line("set yrange [0:1]");
        line("set label 'no samples' at graph 0.5, graph 0.5 center");
        line("plot NaN notitle");
        return script;
    }

    let data = quoted(&dat_name);
    let listed = legend_processes(&processes);
    let mut clauses: Vec<String> = Vec::new();
    // Unlisted (grey) curves first so the coloured ones are drawn over them.
    for (index, process) in processes.iter().enumerate() {
        if !listed.contains(&index) {
            clauses.push(format!(
                "{data} using 1:($8=={pid} ? $2/1e6 : NaN) with {style} lw 1 lc rgb {colour} notitle",
                pid = process.pid,
                style = curve_style(process),
                colour = hex(UNLISTED_PROCESS_COLOUR)
            ));
        }
    }
    for (slot, &index) in listed.iter().enumerate() {
        let process = processes[index];
        clauses.push(format!(
            "{data} using 1:($8=={pid} ? $2/1e6 : NaN) with {style} lw 2 lc rgb {colour} title {title}",
            pid = process.pid,
            style = curve_style(process),
            colour = hex(PROCESS_COLOURS[slot % PROCESS_COLOURS.len()]),
            title = quoted(&process_legend(process)),
        ));
    }
    if listed.len() < processes.len() {
        // A key entry for the grey curves, like our own plot's; NaN draws nothing.
        clauses.push(format!(
            "NaN with lines lw 1 lc rgb {colour} title {title}",
            colour = hex(UNLISTED_PROCESS_COLOUR),
            title = quoted(&format!(
                "… {} more processes",
                processes.len() - listed.len()
            )),
        ));
    }
    if let Some(root) = root {
        // Only the root's CPU and faults: gnuplot cannot sum across rows of different PIDs
        // without a preprocessing step (our own PNG/SVG plots show the tree's totals).
        let faults_divisor = match faults_exponent {
            0 => String::new(),
            exponent => format!(" / {}", power_of_ten_text(exponent)),
        };
        clauses.push(format!(
            "{data} using 1:($8=={pid} ? $6 : NaN) axes x1y2 with {style} lw 1 lc rgb {colour} title {title}",
            colour = hex(CPU_COLOUR),
            pid = root.pid,
            style = curve_style(root),
            title = quoted(&format!("CPU % (PID {})", root.pid)),
        ));
        clauses.push(format!(
            "{data} using 1:($8=={pid} ? $3/1e{exponent} : NaN) axes x1y2 with {style} lw 1 dt 2 lc rgb {colour} title {title}",
            colour = hex(FAULTS_COLOUR),
            pid = root.pid,
            style = curve_style(root),
            exponent = faults_exponent,
            title = quoted(&format!("page faults/s{faults_divisor} (PID {})", root.pid)),
        ));
    }
    line(&format!("plot {}", clauses.join(", \\\n     ")));
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plot::tests::{point, series, small_timeline, ScratchDir};
    use crate::timeline::Label;

    fn timeline_with_labels(labels: Vec<Label>) -> Timeline {
        let mut root_point = point(0.5, 12_345_678, 99.94, 1234.56);
        root_point.unix_time = 1_795_000_000.5;
        root_point.user_seconds = 0.4996;
        root_point.cpu_percent_mean = 80.04;
        let mut child_point = point(0.5, 2_000_000, 0.0, 0.0);
        child_point.unix_time = 0.0;
        Timeline {
            title: "PID 7 python3 job.py".into(),
            processes: vec![
                series(7, 0, vec![point(0.0, 1_000_000, 0.0, 0.0), root_point]),
                // A lower PID than the root's: sorts first among rows of the same time.
                series(3, 1, vec![child_point]),
            ],
            labels,
        }
    }

    fn data_rows(text: &str) -> Vec<&str> {
        text.lines().skip(1).collect()
    }

    #[test]
    fn dat_has_the_original_header_and_one_row_per_point_by_time_then_pid() {
        let text = dat_text(&timeline_with_labels(vec![]));
        assert_eq!(text.lines().next(), Some(DAT_HEADER));
        assert_eq!(
            data_rows(&text),
            [
                "0.000 1000000 0.0 0.000 0.0 0.0 2026-11-18T11:06:40.000Z 7 \"\"",
                "0.500 2000000 0.0 0.000 0.0 0.0 - 3 \"\"",
                "0.500 12345678 1234.6 0.500 80.0 99.9 2026-11-18T11:06:40.500Z 7 \"\"",
            ]
        );
    }

    #[test]
    fn labels_go_on_the_roots_row_at_their_time_only() {
        let text = dat_text(&timeline_with_labels(vec![
            Label {
                seconds: 0.5004,
                text: "warm".into(),
            },
            Label {
                seconds: 0.25,
                text: "between ticks".into(),
            },
        ]));
        let rows = data_rows(&text);
        assert!(rows[0].ends_with(" 7 \"\""), "{}", rows[0]);
        assert!(rows[1].ends_with(" 3 \"\""), "{}", rows[1]);
        assert!(rows[2].ends_with(" 7 \"warm\""), "{}", rows[2]);
        assert!(!text.contains("between ticks"));
    }

    #[test]
    fn odd_label_text_stays_in_one_quoted_column() {
        let labels = vec![
            Label {
                seconds: 0.0,
                text: "say \"hi\"\nthen\ttab".into(),
            },
            Label {
                seconds: 0.0,
                text: " it's 100% _done_ \\ ".into(),
            },
        ];
        let timeline = timeline_with_labels(labels);
        let rows_text = dat_text(&timeline);
        assert!(
            rows_text
                .lines()
                .nth(1)
                .unwrap()
                .ends_with(" 7 \"say 'hi' then tab; it's 100% _done_ \\\""),
            "{rows_text}"
        );
        let script = plt_text(&timeline, "run");
        assert!(script.contains("set label 'say \"hi\" then tab' at 0, graph 0.97"));
        assert!(script.contains("set label 'it''s 100% _done_ \\' at 0, graph 0.97"));
        // Every statement stays on its line: no line holds a stray part of a label.
        assert!(script.lines().all(|line| !line.starts_with("then")));
    }

    #[test]
    fn plt_plots_each_pid_once_and_the_roots_activity_on_y2() {
        let script = plt_text(&small_timeline(), "run");
        assert_eq!(script.matches("? $2/1e6 : NaN)").count(), 2);
        assert_eq!(script.matches("($8==100 ? $2/1e6 : NaN)").count(), 1);
        assert_eq!(script.matches("($8==101 ? $2/1e6 : NaN)").count(), 1);
        assert!(script.contains("title '100 python3 job.py --size 10'"));
        assert!(script.contains("($8==100 ? $6 : NaN) axes x1y2"));
        // The root's faults peak at 7200/s, beyond the CPU axis's 100: divided by 100.
        assert!(script.contains("($8==100 ? $3/1e2 : NaN) axes x1y2"));
        assert!(script.contains("title 'page faults/s / 100 (PID 100)'"));
        assert!(script.contains("set y2range [0:100]"));
        assert!(script.contains("set output 'run.png'"));
        assert!(script.contains("'run.dat' using 1:"));
        assert!(script.contains("# Run `gnuplot run.plt` in this file's directory"));
        assert!(script.contains("set arrow from 2, graph 0 to 2, graph 1 nohead dt 2"));
        assert!(script.contains("set label 'load data' at 2, graph 0.97 rotate by 90 right"));
        assert!(script.contains("set terminal png size 1000,700"));
        assert!(script.contains("set datafile missing NaN"));
    }

    #[test]
    fn write_gnuplot_appends_to_the_prefix_and_leaves_no_temporary_files() {
        let dir = ScratchDir::new("gnuplot-writes");
        let (dat, plt) = write_gnuplot(&small_timeline(), &dir.0.join("run.1")).unwrap();
        assert_eq!(dat, dir.0.join("run.1.dat"));
        assert_eq!(plt, dir.0.join("run.1.plt"));
        let rows = std::fs::read_to_string(&dat).unwrap().lines().count();
        assert_eq!(rows, 1 + 41 + 23);
        assert!(std::fs::read_to_string(&plt)
            .unwrap()
            .contains("set output 'run.1.png'"));
        assert_eq!(dir.file_names(), ["run.1.dat", "run.1.plt"]);
        let err = write_gnuplot(&small_timeline(), Path::new("/")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn an_empty_timeline_gives_a_script_gnuplot_accepts() {
        let timeline = Timeline::default();
        assert_eq!(dat_text(&timeline), format!("{DAT_HEADER}\n"));
        let script = plt_text(&timeline, "empty");
        assert!(script.contains("plot NaN notitle"));
        assert!(!script.contains("'empty.dat' using"));
    }

    #[test]
    fn many_processes_share_grey_curves_and_one_key_entry() {
        let processes = (0..12u32)
            .map(|i| {
                series(
                    10 + i,
                    u32::from(i > 0),
                    vec![point(0.0, 1 + u64::from(i), 1.0, 1.0)],
                )
            })
            .collect();
        let script = plt_text(
            &Timeline {
                title: "tree".into(),
                processes,
                labels: vec![],
            },
            "tree",
        );
        assert_eq!(script.matches("? $2/1e6 : NaN)").count(), 12);
        assert_eq!(script.matches("notitle").count(), 2);
        assert!(script.contains("title '… 2 more processes'"));
        // Single points are drawn as dots.
        assert!(script.contains("with points pt 7"));
    }

    #[test]
    fn non_finite_values_are_written_as_nan() {
        let mut bad = point(1.0, 5, f64::NAN, f64::INFINITY);
        bad.unix_time = f64::NAN;
        let text = dat_text(&Timeline {
            title: String::new(),
            processes: vec![series(1, 0, vec![bad, point(f64::NAN, 1, 0.0, 0.0)])],
            labels: vec![],
        });
        assert_eq!(data_rows(&text), ["1.000 5 NaN NaN NaN NaN - 1 \"\""]);
    }
}
