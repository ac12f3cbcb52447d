//! From parsed script output to the report: a plain data model (also the `--json` output) and
//! its table. Pure: parsed text in, figures out.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde::Serialize;

use super::parse::{Bucket, Parsed, Section, Value};

/// Calls and bytes of one allocator function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Total {
    pub function: String,
    pub calls: i64,
    /// Requested bytes; none for free (not known without tracking each block).
    pub bytes: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerSecond {
    pub second: u64,
    pub calls: BTreeMap<String, i64>,
    pub bytes: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Histogram {
    /// The function whose requested sizes these are.
    pub function: String,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadRow {
    pub tid: i64,
    pub calls: i64,
    pub bytes: i64,
}

/// A Python code object as the probes saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PyFunction {
    /// co_qualname (3.11+) or co_name; `<no Python frame>` when none was found.
    pub function: String,
    pub file: String,
    /// The code object's first line.
    pub line: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PyRow {
    #[serde(flatten)]
    pub code: PyFunction,
    pub calls: i64,
    pub bytes: i64,
}

/// Allocations still live at the end, grouped by Python function and native stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutstandingGroup {
    pub blocks: i64,
    pub bytes: i64,
    /// The block sizes in this group, with how many blocks of each.
    pub sizes: BTreeMap<i64, i64>,
    pub oldest_ms: f64,
    pub python: Option<PyFunction>,
    /// Where the allocator returned to: `symbol+offset (file)` or `file+0xoffset`.
    pub caller: String,
    /// The first native stack seen for the group, innermost first (may be partial or empty).
    pub stack: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outstanding {
    pub min_age_ms: u64,
    /// All tracked blocks live at the end, then those at least min_age_ms old.
    pub live_blocks: i64,
    pub blocks: i64,
    pub bytes: i64,
    pub groups: Vec<OutstandingGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collection {
    pub generation: i64,
    pub duration_ns: i64,
    pub collected: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowEvent {
    pub ns: u64,
    pub tid: i64,
    /// malloc, calloc, realloc or free.
    pub event: String,
    pub bytes: i64,
    pub pointer: String,
    pub python: Option<PyFunction>,
}

/// Everything a run produced. The default is the header alone, before `build` fills the figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub script: String,
    pub backend: String,
    pub pid: i32,
    pub command: String,
    pub python: Option<String>,
    /// Seconds between the probes being attached and the end.
    pub seconds: f64,
    /// Why the run ended: interrupted, duration reached, target exited.
    pub end: String,
    /// False when the tracer stopped before printing its final figures.
    pub complete: bool,
    pub per_second: Vec<PerSecond>,
    pub totals: Vec<Total>,
    pub histograms: Vec<Histogram>,
    pub threads: Vec<ThreadRow>,
    pub python_functions: Vec<PyRow>,
    pub outstanding: Option<Outstanding>,
    pub collections: Vec<Collection>,
    pub flow: Vec<FlowEvent>,
    /// Flow events seen (the list keeps the first `FLOW_KEPT`).
    pub flow_events: usize,
}

/// Flow events kept in the report.
pub const FLOW_KEPT: usize = 100_000;

fn function_name(key: &str) -> String {
    key.trim_end_matches("()").to_string()
}

fn ints(section: &Section, map: &str) -> Vec<(Vec<String>, i64)> {
    section
        .map(map)
        .filter_map(|e| match e.value {
            Value::Int(v) => Some((e.key.clone(), v)),
            _ => None,
        })
        .collect()
}

fn texts(section: &Section, map: &str) -> HashMap<String, String> {
    section
        .map(map)
        .filter_map(|e| {
            let key = e.key.first()?.clone();
            match &e.value {
                Value::Text(t) => Some((key, t.clone())),
                Value::Int(v) => Some((key, v.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// The Python functions named in the final section (bpftrace's @py_name maps) or in
/// `PMT code CODE name=N file=F line=L` events (the D scripts), by code object address.
fn code_names(parsed: &Parsed, end: &Section) -> HashMap<String, PyFunction> {
    let mut names = texts(end, "py_name");
    let mut files = texts(end, "py_file");
    let mut lines = texts(end, "py_line");
    for event in parsed.sections.iter().flat_map(|s| &s.events) {
        let Some(rest) = event.strip_prefix("code ") else {
            continue;
        };
        let code = rest.split_whitespace().next().unwrap_or("").to_string();
        let fields = event_fields(rest);
        if let Some(name) = fields.get("name") {
            names.insert(code.clone(), name.to_string());
        }
        if let Some(file) = fields.get("file") {
            files.insert(code.clone(), file.to_string());
        }
        if let Some(line) = fields.get("line") {
            lines.insert(code, line.to_string());
        }
    }
    names
        .into_iter()
        .map(|(code, name)| {
            let function = PyFunction {
                function: if name.is_empty() {
                    "<unnamed>".to_string()
                } else {
                    name
                },
                file: files.get(&code).cloned().unwrap_or_default(),
                line: lines.get(&code).and_then(|l| l.parse().ok()).unwrap_or(0),
            };
            (code, function)
        })
        .collect()
}

fn python_of(code: &str, names: &HashMap<String, PyFunction>) -> PyFunction {
    if code == "0" {
        return PyFunction {
            function: "<no Python frame>".to_string(),
            file: String::new(),
            line: 0,
        };
    }
    names.get(code).cloned().unwrap_or(PyFunction {
        function: format!("<code {code}>"),
        file: String::new(),
        line: 0,
    })
}

/// `7fd20c5af898 malloc+0 (/usr/lib/x86_64-linux-gnu/libc.so.6)` → `malloc+0 (libc.so.6)`.
pub fn clean_frame(frame: &str) -> String {
    let frame = frame.trim();
    let frame = match frame.split_once(' ') {
        Some((address, rest)) if address.bytes().all(|b| b.is_ascii_hexdigit()) => rest,
        _ => frame,
    };
    match frame.rsplit_once(" (") {
        Some((symbol, path)) => {
            let path = path.trim_end_matches(')');
            format!("{symbol} ({})", path.rsplit('/').next().unwrap_or(path))
        }
        None => frame.to_string(),
    }
}

/// `key=value` words of an event line.
fn event_fields(event: &str) -> HashMap<&str, &str> {
    event
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// Options that change how the output is read (from `-D`, with the script's defaults).
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub min_age_ms: u64,
    /// The target's /proc/PID/maps at the end, to name addresses the tracer could not.
    pub maps: String,
}

/// `address` as `file+0xoffset` from /proc/PID/maps text, when a file mapping holds it.
pub fn locate(address: u64, maps: &str) -> Option<String> {
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, _perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
        let path = fields.nth(2).unwrap_or("");
        let (start, end) = range.split_once('-')?;
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(start, 16),
            u64::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        if (start..end).contains(&address) && path.starts_with('/') {
            let file = path.rsplit('/').next().unwrap_or(path);
            return Some(format!("{file}+{:#x}", address - start + offset));
        }
    }
    None
}

/// A frame, with an address bpftrace could not name replaced by its file and offset.
fn name_frame(frame: &str, maps: &str) -> String {
    let clean = clean_frame(frame);
    if clean.ends_with("([unknown])") {
        let address = clean.split_whitespace().next().unwrap_or("");
        if let Ok(address) = u64::from_str_radix(address.trim_start_matches("0x"), 16) {
            if let Some(located) = locate(address, maps) {
                return located;
            }
        }
    }
    clean
}

/// Builds the report from the parsed output; `meta` fills the descriptive fields.
pub fn build(parsed: &Parsed, meta: Report, options: &ReadOptions) -> Report {
    let mut report = meta;
    report.complete = parsed.ended;
    for (second, section) in parsed.seconds() {
        let calls: BTreeMap<String, i64> = ints(section, "s_calls")
            .into_iter()
            .map(|(k, v)| (function_name(&k.join(",")), v))
            .collect();
        let bytes: BTreeMap<String, i64> = ints(section, "s_bytes")
            .into_iter()
            .map(|(k, v)| (function_name(&k.join(",")), v))
            .collect();
        report.per_second.push(PerSecond {
            second,
            calls,
            bytes,
        });
    }
    let Some(end) = parsed.end() else {
        return report;
    };
    // Totals and histograms (malloc_count, pymalloc).
    let bytes: HashMap<String, i64> = ints(end, "bytes")
        .into_iter()
        .map(|(k, v)| (function_name(&k.join(",")), v))
        .collect();
    let mut totals: Vec<Total> = ints(end, "calls")
        .into_iter()
        .map(|(k, calls)| {
            let function = function_name(&k.join(","));
            Total {
                bytes: bytes.get(&function).copied(),
                function,
                calls,
            }
        })
        .collect();
    totals.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.function.cmp(&b.function)));
    report.totals = totals;
    for entry in end.map("sizes") {
        if let Value::Hist(buckets) = &entry.value {
            report.histograms.push(Histogram {
                function: function_name(&entry.key.join(",")),
                buckets: buckets.clone(),
            });
        }
    }
    let thread_bytes: HashMap<i64, i64> = ints(end, "thread_bytes")
        .into_iter()
        .filter_map(|(k, v)| Some((k.first()?.parse().ok()?, v)))
        .collect();
    report.threads = ints(end, "thread_calls")
        .into_iter()
        .filter_map(|(k, calls)| {
            let tid: i64 = k.first()?.parse().ok()?;
            Some(ThreadRow {
                tid,
                calls,
                bytes: thread_bytes.get(&tid).copied().unwrap_or(0),
            })
        })
        .collect();
    report.threads.sort_by_key(|t| std::cmp::Reverse(t.calls));

    // Python functions (py_malloc, py_flow_malloc_free).
    let names = code_names(parsed, end);
    let py_bytes: HashMap<String, i64> = ints(end, "py_bytes")
        .into_iter()
        .filter_map(|(k, v)| Some((k.first()?.clone(), v)))
        .collect();
    let mut rows: Vec<PyRow> = ints(end, "py_calls")
        .into_iter()
        .filter_map(|(k, calls)| {
            let code = k.first()?.clone();
            Some(PyRow {
                code: python_of(&code, &names),
                calls,
                bytes: py_bytes.get(&code).copied().unwrap_or(0),
            })
        })
        .collect();
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.calls.cmp(&a.calls)));
    report.python_functions = rows;

    // Outstanding blocks (malloc_outstanding).
    let sizes = ints(end, "live_size");
    if end.map("live_size").next().is_some() || report.script == "malloc_outstanding" {
        let end_ns = match end.label {
            super::parse::Label::End(ns) => ns,
            _ => 0,
        };
        let born: HashMap<String, i64> = ints(end, "live_ns")
            .into_iter()
            .filter_map(|(k, v)| Some((k.first()?.clone(), v)))
            .collect();
        let codes: HashMap<String, i64> = ints(end, "live_code")
            .into_iter()
            .filter_map(|(k, v)| Some((k.first()?.clone(), v)))
            .collect();
        let callers: HashMap<String, String> = ints(end, "live_caller")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = locate(v as u64, &options.maps).unwrap_or_else(|| format!("{v:#x}"));
                Some((k.first()?.clone(), name))
            })
            .collect();
        let stacks: HashMap<String, Vec<String>> = end
            .map("live_stack")
            .filter_map(|e| match &e.value {
                Value::Stack(frames) => Some((
                    e.key.first()?.clone(),
                    frames
                        .iter()
                        .map(|f| name_frame(f, &options.maps))
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        // Grouped by Python function and the allocator's caller (always right), with the first
        // native stack seen for the group (frame-pointer stacks are partial or missing at times).
        let mut groups: BTreeMap<(Option<i64>, String), OutstandingGroup> = BTreeMap::new();
        let mut live_blocks = 0;
        let (mut blocks, mut total) = (0, 0);
        for (key, size) in &sizes {
            let Some(pointer) = key.first() else { continue };
            live_blocks += 1;
            let age_ms = born
                .get(pointer)
                .map(|&ns| end_ns.saturating_sub(ns.max(0) as u64) as f64 / 1e6)
                .unwrap_or(0.0);
            if age_ms < options.min_age_ms as f64 {
                continue;
            }
            blocks += 1;
            total += size;
            let code = codes.get(pointer).copied();
            let caller = callers.get(pointer).cloned().unwrap_or_default();
            let stack = stacks.get(pointer).cloned().unwrap_or_default();
            let group = groups
                .entry((code, caller.clone()))
                .or_insert_with(|| OutstandingGroup {
                    blocks: 0,
                    bytes: 0,
                    sizes: BTreeMap::new(),
                    oldest_ms: 0.0,
                    python: code.map(|c| python_of(&c.to_string(), &names)),
                    caller,
                    stack: Vec::new(),
                });
            if group.stack.is_empty() {
                // The stack's first frame is the caller too, named by symbol when it has one.
                if let Some(first) = stack.first() {
                    if !first.starts_with("0x") && first.contains(" (") {
                        group.caller = first.clone();
                    }
                }
                group.stack = stack;
            }
            group.blocks += 1;
            group.bytes += size;
            *group.sizes.entry(*size).or_insert(0) += 1;
            group.oldest_ms = group.oldest_ms.max(age_ms);
        }
        let mut groups: Vec<OutstandingGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.blocks.cmp(&a.blocks)));
        report.outstanding = Some(Outstanding {
            min_age_ms: options.min_age_ms,
            live_blocks,
            blocks,
            bytes: total,
            groups,
        });
    }

    // Events: gc collections and the malloc/free flow, from every section in order.
    for section in &parsed.sections {
        for event in &section.events {
            let (kind, _) = event.split_once(' ').unwrap_or((event, ""));
            let fields = event_fields(event);
            let int = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
            match kind {
                "gc" => {
                    if let (Some(generation), Some(duration_ns), Some(collected)) =
                        (int("generation"), int("duration_ns"), int("collected"))
                    {
                        report.collections.push(Collection {
                            generation,
                            duration_ns,
                            collected,
                        });
                    }
                }
                "flow" => {
                    report.flow_events += 1;
                    if report.flow.len() >= FLOW_KEPT {
                        continue;
                    }
                    if let (Some(ns), Some(tid), Some(kind), Some(bytes)) =
                        (int("ns"), int("tid"), fields.get("event"), int("bytes"))
                    {
                        let code = fields.get("code").copied().unwrap_or("0");
                        report.flow.push(FlowEvent {
                            ns: ns.max(0) as u64,
                            tid,
                            event: kind.to_string(),
                            bytes,
                            pointer: fields.get("ptr").copied().unwrap_or("").to_string(),
                            python: Some(python_of(code, &names)),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    report
}

fn thousands(n: i64) -> String {
    let digits = crate::report::table::thousands(n.unsigned_abs());
    if n < 0 {
        format!("-{digits}")
    } else {
        digits
    }
}

fn bucket_label(bucket: &Bucket) -> String {
    let size = |v: i64| crate::memory::human_bytes(v);
    match (bucket.low, bucket.high) {
        (None, Some(high)) => format!("< {}", size(high)),
        (Some(low), Some(high)) if high == low + 1 => size(low),
        (Some(low), Some(high)) => format!("{} - {}", size(low), size(high)),
        (Some(low), None) => format!(">= {}", size(low)),
        (None, None) => "all".to_string(),
    }
}

fn python_label(code: &PyFunction) -> String {
    if code.file.is_empty() {
        code.function.clone()
    } else {
        let file = code.file.rsplit('/').next().unwrap_or(&code.file);
        format!("{}  {}:{}", code.function, file, code.line)
    }
}

/// The report as a table, `top` rows per list.
pub fn write_table(out: &mut impl Write, report: &Report, top: usize) -> std::io::Result<()> {
    writeln!(
        out,
        "pymemtrace dtrace {}: PID {} ({}){}, {} via {}, {:.1} s ({}){}",
        report.script,
        report.pid,
        crate::report::collapsed::truncate(&report.command, 60),
        report
            .python
            .as_ref()
            .map(|v| format!(", Python {v}"))
            .unwrap_or_default(),
        report.script,
        report.backend,
        report.seconds,
        report.end,
        if report.complete {
            ""
        } else {
            "; the tracer stopped before its final figures"
        }
    )?;
    if !report.per_second.is_empty() {
        writeln!(out)?;
        writeln!(out, "per second (calls / bytes):")?;
        let functions: Vec<String> = {
            let mut all: Vec<String> = report
                .per_second
                .iter()
                .flat_map(|s| s.calls.keys().cloned())
                .collect();
            all.sort();
            all.dedup();
            all
        };
        write!(out, "{:>6}", "SECOND")?;
        for function in &functions {
            write!(out, "  {:>24}", function)?;
        }
        writeln!(out)?;
        for second in &report.per_second {
            write!(out, "{:>6}", second.second)?;
            for function in &functions {
                let calls = second.calls.get(function).copied().unwrap_or(0);
                let cell = match second.bytes.get(function) {
                    Some(bytes) => format!(
                        "{} / {}",
                        thousands(calls),
                        crate::memory::human_bytes(*bytes)
                    ),
                    None => thousands(calls),
                };
                write!(out, "  {cell:>24}")?;
            }
            writeln!(out)?;
        }
    }
    if !report.totals.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<16} {:>14} {:>14}", "FUNCTION", "CALLS", "BYTES")?;
        for total in &report.totals {
            writeln!(
                out,
                "{:<16} {:>14} {:>14}",
                total.function,
                thousands(total.calls),
                total
                    .bytes
                    .map(crate::memory::human_bytes)
                    .unwrap_or_else(|| "-".to_string())
            )?;
        }
    }
    for histogram in &report.histograms {
        let max = histogram
            .buckets
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        writeln!(out)?;
        writeln!(out, "{} request sizes:", histogram.function)?;
        for bucket in histogram.buckets.iter().filter(|b| b.count > 0) {
            // In u128: a count near u64::MAX (the tracer's own counter) overflowed (found by fuzzing).
            let bar =
                "@".repeat((u128::from(bucket.count) * 40).div_ceil(u128::from(max)) as usize);
            writeln!(
                out,
                "  {:>24} {:>12} {}",
                bucket_label(bucket),
                // Unsigned: a count past i64::MAX printed as negative.
                crate::report::table::thousands(bucket.count),
                bar
            )?;
        }
    }
    if !report.threads.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:>10} {:>14} {:>14}", "THREAD", "CALLS", "BYTES")?;
        for thread in report.threads.iter().take(top) {
            writeln!(
                out,
                "{:>10} {:>14} {:>14}",
                thread.tid,
                thousands(thread.calls),
                crate::memory::human_bytes(thread.bytes)
            )?;
        }
    }
    if !report.python_functions.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:>14} {:>12}  PYTHON FUNCTION  FILE:FIRST LINE",
            "BYTES", "CALLS"
        )?;
        for row in report.python_functions.iter().take(top) {
            writeln!(
                out,
                "{:>14} {:>12}  {}",
                crate::memory::human_bytes(row.bytes),
                thousands(row.calls),
                python_label(&row.code)
            )?;
        }
    }
    if let Some(outstanding) = &report.outstanding {
        writeln!(out)?;
        writeln!(
            out,
            "outstanding: {} blocks, {} at least {} ms old ({} blocks tracked still live)",
            thousands(outstanding.blocks),
            crate::memory::human_bytes(outstanding.bytes),
            outstanding.min_age_ms,
            thousands(outstanding.live_blocks)
        )?;
        for group in outstanding.groups.iter().take(top) {
            let sizes = group
                .sizes
                .iter()
                .rev()
                .take(3)
                .map(|(size, n)| {
                    format!("{} x {}", thousands(*n), crate::memory::human_bytes(*size))
                })
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                out,
                "\n{:>14} in {} blocks ({sizes}), oldest {:.0} ms, from {}{}",
                crate::memory::human_bytes(group.bytes),
                thousands(group.blocks),
                group.oldest_ms,
                group.caller,
                group
                    .python
                    .as_ref()
                    .map(|p| format!(", Python: {}", python_label(p)))
                    .unwrap_or_default()
            )?;
            for frame in group.stack.iter().take(12) {
                writeln!(out, "      {frame}")?;
            }
        }
    }
    if !report.collections.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:>4} {:>10} {:>12} {:>12}",
            "#", "GENERATION", "DURATION", "COLLECTED"
        )?;
        for (index, collection) in report.collections.iter().enumerate().take(top.max(50)) {
            writeln!(
                out,
                "{:>4} {:>10} {:>9.3} ms {:>12}",
                index + 1,
                collection.generation,
                collection.duration_ns as f64 / 1e6,
                thousands(collection.collected)
            )?;
        }
        let mut by_generation: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
        for c in &report.collections {
            let e = by_generation.entry(c.generation).or_default();
            e.0 += 1;
            e.1 += c.duration_ns;
            e.2 += c.collected;
        }
        for (generation, (count, ns, collected)) in by_generation {
            writeln!(
                out,
                "generation {generation}: {count} collections, {:.3} ms, {} objects collected",
                ns as f64 / 1e6,
                thousands(collected)
            )?;
        }
    }
    if report.flow_events > 0 {
        writeln!(out)?;
        writeln!(
            out,
            "flow: {} malloc/free events{}",
            thousands(report.flow_events as i64),
            if report.flow_events > top {
                format!(", the first {top} (all in --json, up to {FLOW_KEPT})")
            } else {
                String::new()
            }
        )?;
        let first = report.flow.first().map(|e| e.ns).unwrap_or(0);
        for event in report.flow.iter().take(top) {
            writeln!(
                out,
                "{:>12.6} {:>8} {:<8} {:>12} {:>16}  {}",
                (event.ns.saturating_sub(first)) as f64 / 1e9,
                event.tid,
                event.event,
                if event.event == "free" {
                    String::new()
                } else {
                    thousands(event.bytes)
                },
                event.pointer,
                event.python.as_ref().map(python_label).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;

    fn meta(script: &str) -> Report {
        Report {
            script: script.into(),
            backend: "bpftrace".into(),
            pid: 1,
            command: "python3 x.py".into(),
            python: Some("3.12.1".into()),
            seconds: 1.0,
            end: "interrupted".into(),
            ..Report::default()
        }
    }

    #[test]
    fn histogram_bar_of_the_largest_count() {
        // fuzz/seeds/tracer_output/regress-histogram-count-overflow.txt: a multiply overflow before.
        let text =
            include_str!("../../fuzz/seeds/tracer_output/regress-histogram-count-overflow.txt");
        let report = build(&parse(text), meta("malloc_count"), &ReadOptions::default());
        let mut out = Vec::new();
        write_table(&mut out, &report, 10).unwrap();
        let out = String::from_utf8(out).unwrap();
        let bars: Vec<usize> = out
            .lines()
            .filter(|l| l.contains("18,446,744,073,709,551,615") || l.trim_end().ends_with(" 1 @"))
            .map(|l| l.matches('@').count())
            .collect();
        assert_eq!(bars, [40, 1], "{out}");
    }

    #[test]
    fn outstanding_groups_by_code_and_stack_and_filters_by_age() {
        let text = "PMT start
PMT end 10000000000
@live_size[100]: 4242
@live_size[200]: 4242
@live_size[300]: 10
@live_ns[100]: 1000000000
@live_ns[200]: 2000000000
@live_ns[300]: 9999000000
@live_code[100]: 77
@live_code[200]: 77
@live_code[300]: 0
@live_caller[100]: 4096
@live_caller[200]: 4096
@live_caller[300]: 8192
@py_name[77]: leak_blocks
@py_file[77]: /x/native_leak.py
@py_line[77]: 30
@live_stack[100]: 
\t7f02 0x7f02 ([unknown])
\t7f03 ffi_call+85 (/lib/libffi.so.8)

@live_stack[200]: @live_stack[250]: 
@live_stack[260]: 
\t7f02 0x7f02 ([unknown])
\t7f03 ffi_call+85 (/lib/libffi.so.8)

@live_stack[300]: 
\t7f01 malloc+0 (/lib/libc.so.6)

";
        let report = build(
            &parse(text),
            meta("malloc_outstanding"),
            &ReadOptions {
                min_age_ms: 500,
                maps: "1000-2000 r-xp 00002000 fe:00 1 /usr/lib/libffi.so.8\n".into(),
            },
        );
        assert!(report.complete);
        let outstanding = report.outstanding.unwrap();
        assert_eq!(outstanding.live_blocks, 3);
        assert_eq!(outstanding.blocks, 2);
        assert_eq!(outstanding.bytes, 8484);
        assert_eq!(outstanding.groups.len(), 1);
        let group = &outstanding.groups[0];
        assert_eq!(group.sizes.get(&4242), Some(&2));
        assert_eq!(group.python.as_ref().unwrap().function, "leak_blocks");
        assert_eq!(
            group.stack,
            ["0x7f02 ([unknown])", "ffi_call+85 (libffi.so.8)"]
        );
        assert_eq!(group.oldest_ms, 9000.0);
        // The caller, unnamed in the stack, is located in the maps.
        assert_eq!(group.caller, "libffi.so.8+0x2000");
        assert_eq!(
            locate(
                0x1fff,
                "1000-2000 r-xp 00002000 fe:00 1 /usr/lib/libffi.so.8"
            ),
            Some("libffi.so.8+0x2fff".into())
        );
        assert_eq!(
            locate(
                0x2000,
                "1000-2000 r-xp 00002000 fe:00 1 /usr/lib/libffi.so.8"
            ),
            None
        );
    }

    #[test]
    fn totals_seconds_python_rows_and_gc() {
        let text = "PMT start
PMT second 1
@s_calls[malloc()]: 5
@s_bytes[malloc()]: 50
PMT gc generation=2 duration_ns=1500000 collected=2000
PMT end 5
@calls[malloc()]: 5
@calls[free()]: 7
@bytes[malloc()]: 50
@py_calls[0]: 3
@py_calls[9]: 2
@py_bytes[0]: 30
@py_bytes[9]: 400000
@py_name[9]: grow_buffers
@py_file[9]: /f/py_allocs.py
@py_line[9]: 27
";
        let report = build(&parse(text), meta("py_malloc"), &ReadOptions::default());
        assert_eq!(report.per_second[0].calls["malloc"], 5);
        assert_eq!(report.totals[0].function, "free");
        assert_eq!(report.totals[0].bytes, None);
        assert_eq!(report.totals[1].bytes, Some(50));
        assert_eq!(report.python_functions[0].code.function, "grow_buffers");
        assert_eq!(report.python_functions[0].code.line, 27);
        assert_eq!(
            report.python_functions[1].code.function,
            "<no Python frame>"
        );
        assert_eq!(
            report.collections,
            [Collection {
                generation: 2,
                duration_ns: 1500000,
                collected: 2000
            }]
        );
        let mut table = Vec::new();
        write_table(&mut table, &report, 20).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("grow_buffers  py_allocs.py:27"), "{table}");
    }
}
