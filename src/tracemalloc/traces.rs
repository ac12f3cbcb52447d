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
        self.by_traceback.retain(|frames, _| {
            !own.contains(&frames.first().map_or("", |(file, _)| normalized(file)))
        });
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

    /// The same two trace lists compared by each interpreter's own tracemalloc
    /// (`Snapshot(...).filter_traces(...).compare_to(...)`, the code the helper used to run in
    /// the target) and by this module: every group, every figure and the order agree, for each
    /// granularity, with 3.8's three-item traces and 3.9+'s four.
    #[test]
    fn agrees_with_tracemalloc_itself() {
        let script = r#"
import marshal, sys, tracemalloc
tracemalloc.start(5)
def make(n, k):
    return [bytes(k) for _ in range(n)]
def outer(n):
    return make(n, 40) + [str(i) * 3 for i in range(n)]
kept = [outer(200), make(50, 1000)]
old = tracemalloc._get_traces()
kept.append(outer(300))
del kept[1]
kept.append(dict((i, (i, str(i))) for i in range(100)))
new = tracemalloc._get_traces()
tracemalloc.stop()
own = [tracemalloc.__file__, "<pymemtrace>"]
filters = [tracemalloc.Filter(False, f) for f in own]
older = tracemalloc.Snapshot(old, 5).filter_traces(filters)
newer = tracemalloc.Snapshot(new, 5).filter_traces(filters)
expected = {}
for key in ("lineno", "filename", "traceback"):
    rows = []
    for stat in newer.compare_to(older, key):
        frames = [[frame.filename, frame.lineno] for frame in stat.traceback]
        if sys.version_info >= (3, 7):
            frames.reverse()
        rows.append([frames, stat.size, stat.size_diff, stat.count, stat.count_diff])
    expected[key] = rows
data = {"version": list(sys.version_info[:2]), "own": own, "old": old, "new": new,
        "expected": expected}
sys.stdout.write(marshal.dumps(data, 4).hex())
"#;
        let mut checked = 0;
        for python in [
            "/root/.pyenv/versions/3.8.18/bin/python",
            "/root/.pyenv/versions/3.13.0/bin/python",
            "/usr/bin/python3.11",
        ] {
            let Ok(out) = std::process::Command::new(python)
                .args(["-c", script])
                .output()
            else {
                continue;
            };
            assert!(out.status.success(), "{python}: {out:?}");
            let hex = String::from_utf8(out.stdout).unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let mut reader = Reader::new(&bytes);
            let (mut old, mut new) = (None, None);
            let mut rest = serde_json::Map::new();
            reader
                .dict(|reader, key| {
                    match key.as_str().unwrap().as_ref() {
                        "old" => old = Some(Traces::read(reader)?),
                        "new" => new = Some(Traces::read(reader)?),
                        other => {
                            rest.insert(other.to_string(), reader.object()?.to_json());
                        }
                    }
                    Ok(())
                })
                .unwrap();
            let (mut old, mut new) = (old.unwrap(), new.unwrap());
            let own: Vec<&str> = rest["own"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            old.leave_out(&own);
            new.leave_out(&own);
            let version = &rest["version"];
            let oldest_first = (version[0].as_i64(), version[1].as_i64()) >= (Some(3), Some(7));
            for (key, granularity) in [
                ("lineno", Granularity::Lineno),
                ("filename", Granularity::Filename),
                ("traceback", Granularity::Traceback),
            ] {
                let ours: Vec<serde_json::Value> = compare(&old, &new, granularity, oldest_first)
                    .iter()
                    .map(|d| {
                        serde_json::json!([
                            d.frames
                                .iter()
                                .map(|(f, l)| serde_json::json!([f.as_ref(), l]))
                                .collect::<Vec<_>>(),
                            d.size,
                            d.size_diff,
                            d.count,
                            d.count_diff
                        ])
                    })
                    .collect();
                let expected = rest["expected"][key].as_array().unwrap();
                // One file (the script) when grouped by file; several groups otherwise.
                let enough = if key == "filename" { 1 } else { 4 };
                assert!(
                    expected.len() >= enough,
                    "{python} {key}: too few groups to tell"
                );
                assert_eq!(&ours, expected, "{python} {key}");
            }
            checked += 1;
        }
        assert!(checked > 0, "no interpreter to compare with");
    }

    #[test]
    fn a_pyc_names_its_py() {
        assert_eq!(normalized("/x/tracemalloc.pyc"), "/x/tracemalloc.py");
        assert_eq!(normalized("/x/tracemalloc.py"), "/x/tracemalloc.py");
        assert_eq!(normalized("<pymemtrace>"), "<pymemtrace>");
    }
}
