//! tracemalloc's raw traces, as `tracemalloc._get_traces()` gives them, read from the helper's
//! marshalled reply and compared here rather than in the target: the same filtering, grouping,
//! comparison and order as `Snapshot.filter_traces(...).compare_to(old, key_type)`.
//!
//! A trace is `(domain, size, traceback)` (3.4-3.8) or `(domain, size, traceback, total_nframe)`
//! (3.9+); a traceback is a tuple of `(filename, lineno)` frames, the newest (allocating) first.
//! Traces are summed per distinct traceback as they are read, so a million traces never exist
//! here one by one; a traceback shared by many traces arrives once, then as back references.

use std::collections::HashMap;
use std::rc::Rc;

use crate::inject::marshal::{MarshalError, Object, Reader};

use super::Granularity;

/// One frame: file and line.
pub type Frame = (Rc<str>, i64);

/// Size and count of the blocks with one traceback (or in one group).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub size: i64,
    pub count: i64,
}

/// One snapshot's traces, summed per distinct traceback, with the measurement's own left out.
#[derive(Debug, Default)]
pub struct Traces {
    by_traceback: HashMap<Rc<[Frame]>, Totals>,
    /// Traces read, and those left out as the measurement's own.
    pub read: u64,
    pub own: u64,
}

fn not_a_trace(what: &str) -> MarshalError {
    MarshalError(format!("a trace's {what} is not what tracemalloc gives"))
}

/// tracemalloc's `_normalize_filename` on Linux: a `.pyc` names its `.py`.
fn normalized(file: &str) -> &str {
    file.strip_suffix('c')
        .filter(|f| f.ends_with(".py"))
        .unwrap_or(file)
}

fn frames_of(traceback: &[Object]) -> Result<Rc<[Frame]>, MarshalError> {
    traceback
        .iter()
        .map(|frame| match frame.as_seq() {
            Some([file, line]) => Ok((
                file.as_str().ok_or_else(|| not_a_trace("file"))?.clone(),
                line.as_int().ok_or_else(|| not_a_trace("line"))?,
            )),
            _ => Err(not_a_trace("frame")),
        })
        .collect()
}

impl Traces {
    /// Reads a list of traces.
    pub fn read(reader: &mut Reader) -> Result<Traces, MarshalError> {
        // Summed first per traceback object: a shared traceback comes back as the same Rc.
        let mut by_object: HashMap<*const Object, (Rc<[Object]>, Totals)> = HashMap::new();
        let mut traces = Traces::default();
        reader.sequence(|reader| {
            let trace = reader.object()?;
            let (size, traceback) = match trace {
                Object::Seq(ref items) if items.len() == 3 || items.len() == 4 => (
                    items[1].as_int().ok_or_else(|| not_a_trace("size"))?,
                    match &items[2] {
                        Object::Seq(frames) => frames.clone(),
                        _ => return Err(not_a_trace("traceback")),
                    },
                ),
                _ => return Err(not_a_trace("shape")),
            };
            traces.read += 1;
            let entry = by_object
                .entry(Rc::as_ptr(&traceback) as *const Object)
                .or_insert_with(|| (traceback, Totals::default()));
            entry.1.size += size;
            entry.1.count += 1;
            Ok(())
        })?;
        for (_, (traceback, totals)) in by_object {
            let sum = traces
                .by_traceback
                .entry(frames_of(&traceback)?)
                .or_default();
            sum.size += totals.size;
            sum.count += totals.count;
        }
        Ok(traces)
    }

    /// Leaves out the traces whose newest frame is in one of `own_files` (tracemalloc's module
    /// and the helper), as `Filter(False, file)` does with its default `all_frames=False`. File
    /// names are compared exactly, where tracemalloc's filter is an fnmatch pattern: the same
    /// unless the name holds `*`, `?` or `[`.
    pub fn leave_out(&mut self, own_files: &[&str]) {
        let own: Vec<&str> = own_files.iter().map(|f| normalized(f)).collect();
        let mut left_out = 0;
        self.by_traceback.retain(|frames, totals| {
            let newest = frames.first().map_or("", |(file, _)| normalized(file));
            let keep = !own.contains(&newest);
            if !keep {
                left_out += totals.count as u64;
            }
            keep
        });
        self.own += left_out;
    }

    /// Sums per group (tracemalloc's `Snapshot._group_by`, not cumulative).
    fn grouped(&self, granularity: Granularity) -> HashMap<Vec<Frame>, Totals> {
        let mut groups: HashMap<Vec<Frame>, Totals> = HashMap::new();
        for (frames, totals) in &self.by_traceback {
            let key = match (granularity, frames.first()) {
                (Granularity::Traceback, _) | (_, None) => frames.to_vec(),
                (Granularity::Lineno, Some(newest)) => vec![newest.clone()],
                (Granularity::Filename, Some((file, _))) => vec![(file.clone(), 0)],
            };
            let sum = groups.entry(key).or_default();
            sum.size += totals.size;
            sum.count += totals.count;
        }
        groups
    }
}

/// One group of the comparison, as tracemalloc's `StatisticDiff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The newest (allocating) frame first.
    pub frames: Vec<Frame>,
    pub size: i64,
    pub size_diff: i64,
    pub count: i64,
    pub count_diff: i64,
}

/// `new.compare_to(old, granularity)`: every group of either, sorted as tracemalloc sorts
/// (largest absolute size change first, then size, absolute count change, count, and the
/// traceback, all descending). `oldest_first` is true from Python 3.7, whose `Traceback` keeps
/// its frames oldest first and so compares them in that order.
pub fn compare(
    old: &Traces,
    new: &Traces,
    granularity: Granularity,
    oldest_first: bool,
) -> Vec<Difference> {
    let mut old_groups = old.grouped(granularity);
    let mut differences: Vec<Difference> = new
        .grouped(granularity)
        .into_iter()
        .map(|(frames, now)| {
            let before = old_groups.remove(&frames).unwrap_or_default();
            Difference {
                frames,
                size: now.size,
                size_diff: now.size - before.size,
                count: now.count,
                count_diff: now.count - before.count,
            }
        })
        .collect();
    differences.extend(old_groups.into_iter().map(|(frames, before)| Difference {
        frames,
        size: 0,
        size_diff: -before.size,
        count: 0,
        count_diff: -before.count,
    }));
    let order = |d: &Difference| {
        (
            d.size_diff.unsigned_abs(),
            d.size,
            d.count_diff.unsigned_abs(),
            d.count,
        )
    };
    differences.sort_by(|a, b| {
        order(b).cmp(&order(a)).then_with(|| {
            if oldest_first {
                b.frames.iter().rev().cmp(a.frames.iter().rev())
            } else {
                b.frames.cmp(&a.frames)
            }
        })
    });
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces(list: &[(i64, &[(&str, i64)])]) -> Traces {
        let mut traces = Traces::default();
        for (size, frames) in list {
            let frames: Rc<[Frame]> = frames.iter().map(|(f, l)| (Rc::from(*f), *l)).collect();
            let sum = traces.by_traceback.entry(frames).or_default();
            sum.size += size;
            sum.count += 1;
        }
        traces
    }

    #[test]
    fn compares_and_orders_as_tracemalloc_does() {
        let old = traces(&[(100, &[("a.py", 1), ("m.py", 9)]), (50, &[("gone.py", 3)])]);
        let new = traces(&[
            (100, &[("a.py", 1), ("m.py", 9)]),
            (300, &[("a.py", 1), ("n.py", 2)]),
            (300, &[("b.py", 7)]),
            (300, &[("b.py", 7)]),
        ]);
        let by_line = compare(&old, &new, Granularity::Lineno, true);
        let rows: Vec<_> = by_line
            .iter()
            .map(|d| (d.frames[0].0.to_string(), d.size, d.size_diff, d.count_diff))
            .collect();
        assert_eq!(
            rows,
            [
                ("b.py".to_string(), 600, 600, 2),
                ("a.py".to_string(), 400, 300, 1),
                ("gone.py".to_string(), 0, -50, -1),
            ]
        );
        let by_traceback = compare(&old, &new, Granularity::Traceback, true);
        assert_eq!(by_traceback.len(), 4);
        assert_eq!(by_traceback[1].frames[1].0.as_ref(), "n.py");
        assert_eq!((by_traceback[3].size, by_traceback[3].size_diff), (100, 0));
        let by_file = compare(&old, &new, Granularity::Filename, true);
        assert_eq!(by_file[1].frames, vec![(Rc::from("a.py"), 0)]);
    }

    /// Groups equal in every figure: ordered by traceback, descending, compared oldest frame first
    /// from Python 3.7 and newest first before.
    #[test]
    fn ties_are_ordered_by_traceback_as_each_python_does() {
        let new = traces(&[
            (10, &[("x.py", 1), ("z.py", 1)]),
            (10, &[("y.py", 1), ("a.py", 1)]),
        ]);
        let empty = Traces::default();
        let first = |oldest_first| {
            compare(&empty, &new, Granularity::Traceback, oldest_first)[0].frames[0]
                .0
                .to_string()
        };
        assert_eq!(first(true), "x.py");
        assert_eq!(first(false), "y.py");
    }

    #[test]
    fn a_pyc_names_its_py() {
        assert_eq!(normalized("/x/tracemalloc.pyc"), "/x/tracemalloc.py");
        assert_eq!(normalized("/x/tracemalloc.py"), "/x/tracemalloc.py");
        assert_eq!(normalized("<pymemtrace>"), "<pymemtrace>");
    }
}
