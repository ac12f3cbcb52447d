//! What a `process` run comes to: per-process figures, the least-squares growth rate with its R^2,
//! and the timeline kept for plots. Fed tick by tick, from a live run or from a saved log alike, so
//! `--input` gives exactly what the live run gave.

use std::collections::HashMap;

use crate::error::Result;

use super::model::{Label, Point, ProcessSeries, Tick, Timeline};
use super::run::TickObserver;

/// Least-squares fit of y = a + b t, accumulated one point at a time. Values are taken relative to
/// the first point, so long runs of large byte counts keep their precision in f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fit {
    n: f64,
    t0: f64,
    y0: f64,
    sum_t: f64,
    sum_y: f64,
    sum_tt: f64,
    sum_yy: f64,
    sum_ty: f64,
}

impl Fit {
    pub fn add(&mut self, t: f64, y: f64) {
        if self.n == 0.0 {
            self.t0 = t;
            self.y0 = y;
        }
        let (t, y) = (t - self.t0, y - self.y0);
        self.n += 1.0;
        self.sum_t += t;
        self.sum_y += y;
        self.sum_tt += t * t;
        self.sum_yy += y * y;
        self.sum_ty += t * y;
    }

    pub fn points(&self) -> u64 {
        self.n as u64
    }

    /// The slope (y units per t unit) and R^2, when there are at least three points spread in time.
    /// R^2 is 1 for a flat series that is exactly constant (a perfect, if dull, fit).
    pub fn slope_and_r2(&self) -> Option<(f64, f64)> {
        if self.n < 3.0 {
            return None;
        }
        let n = self.n;
        let var_t = self.sum_tt - self.sum_t * self.sum_t / n;
        if var_t <= f64::EPSILON {
            return None;
        }
        let cov = self.sum_ty - self.sum_t * self.sum_y / n;
        let var_y = self.sum_yy - self.sum_y * self.sum_y / n;
        let slope = cov / var_t;
        let r2 = if var_y <= 0.0 {
            1.0
        } else {
            (cov * cov / (var_t * var_y)).clamp(0.0, 1.0)
        };
        Some((slope, r2))
    }
}

/// RSS statistics of one series (a process, or the tree's total).
#[derive(Debug, Clone, Default)]
pub struct SeriesStats {
    pub first_seconds: f64,
    pub last_seconds: f64,
    pub start: u64,
    pub end: u64,
    pub min: u64,
    pub max: u64,
    sum: f64,
    pub fit: Fit,
}

impl SeriesStats {
    fn add(&mut self, seconds: f64, rss: u64) {
        if self.fit.points() == 0 {
            self.first_seconds = seconds;
            self.start = rss;
            self.min = rss;
        }
        self.last_seconds = seconds;
        self.end = rss;
        self.min = self.min.min(rss);
        self.max = self.max.max(rss);
        self.sum += rss as f64;
        self.fit.add(seconds, rss as f64);
    }

    pub fn mean(&self) -> f64 {
        let n = self.fit.points();
        if n == 0 {
            0.0
        } else {
            self.sum / n as f64
        }
    }

    pub fn seconds(&self) -> f64 {
        self.last_seconds - self.first_seconds
    }

    /// Whether the series climbs steadily enough to look like a leak: a fit over at least 10
    /// points, R^2 of 0.8 or more, and fitted growth over the run of at least 1 MiB and 5% of the
    /// mean. (Thresholds chosen so that a process that grows and frees in waves is not flagged.)
    pub fn looks_like_a_leak(&self) -> bool {
        let Some((slope, r2)) = self.fit.slope_and_r2() else {
            return false;
        };
        let fitted_growth = slope * self.seconds();
        self.fit.points() >= 10
            && r2 >= 0.8
            && fitted_growth >= (1024.0 * 1024.0_f64).max(0.05 * self.mean())
    }
}

/// Everything known of one process at the end.
#[derive(Debug, Clone)]
pub struct ProcessSummary {
    pub pid: u32,
    pub ppid: u32,
    pub depth: u32,
    pub command: String,
    pub rss: SeriesStats,
    /// The highest VmHWM seen: the peak between ticks too.
    pub peak_rss: u64,
    pub user_start: f64,
    pub user_end: f64,
    pub system_start: f64,
    pub system_end: f64,
    pub threads_max: u64,
    /// USS and PSS at the last tick, with `--smaps`.
    pub uss_end: Option<u64>,
    pub pss_end: Option<u64>,
}

impl ProcessSummary {
    fn new(tick: &Tick) -> ProcessSummary {
        ProcessSummary {
            pid: tick.pid,
            ppid: tick.ppid,
            depth: tick.depth,
            command: tick.command.clone(),
            rss: SeriesStats::default(),
            peak_rss: 0,
            user_start: tick.user_seconds,
            user_end: tick.user_seconds,
            system_start: tick.system_seconds,
            system_end: tick.system_seconds,
            threads_max: 0,
            uss_end: None,
            pss_end: None,
        }
    }

    fn add(&mut self, tick: &Tick) {
        if self.command != tick.command {
            self.command.clone_from(&tick.command);
        }
        self.rss.add(tick.seconds, tick.rss);
        self.peak_rss = self.peak_rss.max(tick.peak_rss).max(tick.rss);
        self.user_end = tick.user_seconds;
        self.system_end = tick.system_seconds;
        self.threads_max = self.threads_max.max(tick.threads);
        self.uss_end = tick.uss;
        self.pss_end = tick.pss;
    }

    /// CPU seconds used while watched.
    pub fn cpu_seconds(&self) -> f64 {
        (self.user_end - self.user_start) + (self.system_end - self.system_start)
    }
}

/// Points kept per process for plots before the series is thinned (about 2 MB per process).
/// Statistics are exact regardless: they are accumulated from every tick.
const MAX_POINTS_PER_PROCESS: usize = 40_000;

/// Collects ticks into per-process summaries, the tree's totals and the plot timeline.
#[derive(Debug, Default)]
pub struct Collector {
    /// In order of first appearance; the first is the root.
    pub processes: Vec<ProcessSummary>,
    index: HashMap<u32, usize>,
    /// Sum of RSS over the processes of each tick (only meaningful with several processes).
    pub tree: SeriesStats,
    pub ticks: u64,
    timeline: Timeline,
    series_index: HashMap<u32, usize>,
    /// Points to skip before the next one is kept, per process, once thinning started.
    stride: HashMap<u32, (usize, usize)>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    pub fn add_rows(&mut self, rows: &[Tick]) {
        let Some(first) = rows.first() else {
            return;
        };
        self.ticks += 1;
        let seconds = first.seconds;
        if self
            .processes
            .first()
            .is_none_or(|root| root.command != first.command)
        {
            // The root's latest command line: a launcher may have exec()ed the real program.
            self.timeline.title = format!(
                "PID {} {}",
                first.pid,
                crate::report::collapsed::truncate(&first.command, 60)
            );
        }
        let mut total = 0u64;
        for tick in rows {
            total = total.saturating_add(tick.rss);
            let slot = *self.index.entry(tick.pid).or_insert_with(|| {
                self.processes.push(ProcessSummary::new(tick));
                self.processes.len() - 1
            });
            self.processes[slot].add(tick);
            self.add_point(tick);
            if let Some(text) = &tick.label {
                self.timeline.labels.push(Label {
                    seconds: tick.seconds,
                    text: text.clone(),
                });
            }
        }
        self.tree.add(seconds, total);
    }

    fn add_point(&mut self, tick: &Tick) {
        let slot = *self.series_index.entry(tick.pid).or_insert_with(|| {
            self.timeline.processes.push(ProcessSeries {
                pid: tick.pid,
                ppid: tick.ppid,
                depth: tick.depth,
                command: tick.command.clone(),
                points: Vec::new(),
            });
            self.timeline.processes.len() - 1
        });
        let unix_time = humantime::parse_rfc3339_weak(&tick.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let point = Point::from_tick(tick, unix_time);
        let series = &mut self.timeline.processes[slot];
        if series.command != tick.command {
            series.command.clone_from(&tick.command);
        }
        let (stride, skipped) = self.stride.entry(tick.pid).or_insert((1, 0));
        *skipped += 1;
        if *skipped < *stride && tick.label.is_none() {
            // Thinned: keep the larger RSS of the points merged, so peaks stay on the plot.
            if let Some(last) = series.points.last_mut() {
                if point.rss > last.rss {
                    last.rss = point.rss;
                }
            }
            return;
        }
        *skipped = 0;
        series.points.push(point);
        if series.points.len() >= MAX_POINTS_PER_PROCESS {
            // Halve: merge each pair into the later point, keeping the pair's larger RSS.
            let merged: Vec<Point> = series
                .points
                .chunks(2)
                .map(|pair| {
                    let mut point = *pair.last().expect("chunks are not empty");
                    point.rss = pair.iter().map(|p| p.rss).max().unwrap_or(point.rss);
                    point
                })
                .collect();
            series.points = merged;
            *stride *= 2;
        }
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub fn root(&self) -> Option<&ProcessSummary> {
        self.processes.first()
    }
}

impl TickObserver for Collector {
    fn tick(&mut self, rows: &[Tick]) -> Result<()> {
        self.add_rows(rows);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_line_and_rejects_noise() {
        let mut fit = Fit::default();
        for i in 0..100 {
            fit.add(i as f64 * 0.5, 1e9 + 2e6 * i as f64 * 0.5);
        }
        let (slope, r2) = fit.slope_and_r2().unwrap();
        assert!((slope - 2e6).abs() < 1.0, "{slope}");
        assert!(r2 > 0.999_999, "{r2}");

        let mut waves = Fit::default();
        for i in 0..100 {
            let y = if i % 2 == 0 { 1e9 } else { 1.1e9 };
            waves.add(i as f64, y);
        }
        let (_, r2) = waves.slope_and_r2().unwrap();
        assert!(r2 < 0.1, "{r2}");
        assert_eq!(Fit::default().slope_and_r2(), None);
    }

    fn tick(seconds: f64, pid: u32, rss: u64) -> Tick {
        Tick {
            time: "2026-11-24T10:00:00.000Z".into(),
            seconds,
            pid,
            ppid: 1,
            depth: 0,
            command: "cmd".into(),
            rss,
            vms: rss,
            peak_rss: rss,
            swap: 0,
            minor_faults_per_second: 0.0,
            major_faults_per_second: 0.0,
            user_seconds: seconds,
            system_seconds: 0.0,
            cpu_percent_mean: 0.0,
            cpu_percent: 0.0,
            threads: 1,
            uss: None,
            pss: None,
            label: None,
        }
    }

    #[test]
    fn a_steady_climb_is_a_leak_and_a_flat_line_is_not() {
        let mut climbing = Collector::new();
        let mut flat = Collector::new();
        for i in 0..50 {
            climbing.add_rows(&[tick(i as f64, 7, 100_000_000 + i * 1_000_000)]);
            flat.add_rows(&[tick(i as f64, 7, 100_000_000 + (i % 3) * 4096)]);
        }
        let root = climbing.root().unwrap();
        assert!(root.rss.looks_like_a_leak());
        assert_eq!(root.rss.min, 100_000_000);
        assert_eq!(root.rss.max, 149_000_000);
        assert!((root.cpu_seconds() - 49.0).abs() < 1e-9);
        assert!(!flat.root().unwrap().rss.looks_like_a_leak());
    }

    #[test]
    fn long_runs_are_thinned_but_keep_their_peak() {
        let mut collector = Collector::new();
        let n = MAX_POINTS_PER_PROCESS as u64 * 3;
        for i in 0..n {
            let rss = if i == n / 2 { 9_000_000_000 } else { 1_000_000 };
            collector.add_rows(&[tick(i as f64, 7, rss)]);
        }
        let points = &collector.timeline().processes[0].points;
        assert!(points.len() < MAX_POINTS_PER_PROCESS, "{}", points.len());
        assert!(points.iter().any(|p| p.rss == 9_000_000_000));
        assert_eq!(collector.root().unwrap().rss.fit.points(), n);
    }
}
