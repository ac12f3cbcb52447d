//! The script catalogue: each entry is `dtrace/NAME.d` and its bpftrace twin `probes/NAME.bt`,
//! embedded here, and what it needs from the target. Filling a script in: the target's facts go
//! into the UPPERCASE placeholders (`@PID@`, `@LIBC@`, ...), options (`-D name=value`, declared
//! in the header as `Option: name=default`) into the lowercase ones.

use std::collections::BTreeMap;

use super::offsets;
use super::target::Facts;

/// What a script needs from its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The C library only: any process.
    Libc,
    /// The C library, and the Python frame when it can be read (else stacks only).
    LibcMaybeFrames,
    /// The C library and the calling thread's Python frame.
    LibcAndFrames,
    /// CPython's object allocator symbols.
    PyObjectAllocator,
    /// CPython's gc probes (USDT) or its collection function's symbol.
    GcProbes,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub shows: &'static str,
    pub bt: &'static str,
    pub d: &'static str,
    pub needs: Needs,
}

macro_rules! entry {
    ($name:literal, $needs:expr, $shows:literal) => {
        Entry {
            name: $name,
            shows: $shows,
            bt: include_str!(concat!("../../probes/", $name, ".bt")),
            d: include_str!(concat!("../../dtrace/", $name, ".d")),
            needs: $needs,
        }
    };
}

/// Every script, in the order `--list` shows them.
pub const CATALOGUE: &[Entry] = &[
    entry!(
        "malloc_count",
        Needs::Libc,
        "calls and bytes of malloc, calloc, realloc, free, memalign, mmap... per second and in total, log2 size histograms"
    ),
    entry!(
        "malloc_outstanding",
        Needs::LibcMaybeFrames,
        "allocations not yet freed, older than -D min_age_ms, grouped by native stack and Python function: the leak hunter"
    ),
    entry!(
        "py_malloc",
        Needs::LibcAndFrames,
        "malloc bytes grouped by the Python function and file that caused them"
    ),
    entry!(
        "py_flow_malloc_free",
        Needs::LibcAndFrames,
        "each malloc/free with the Python function it happened in, in order, and bytes by function"
    ),
    entry!(
        "pymalloc",
        Needs::PyObjectAllocator,
        "CPython's object allocator (PyObject_Malloc/Calloc/Realloc/Free): calls and bytes per second and in total"
    ),
    entry!(
        "py_gc",
        Needs::GcProbes,
        "each garbage collection: generation, duration, objects collected"
    ),
];

pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

pub fn names() -> String {
    CATALOGUE
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An option a script declares in its header: ` * Option: name=default   what it does`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScriptOption {
    pub name: String,
    pub default: String,
    pub help: String,
}

/// The options declared in a script's header comment.
pub fn options(script: &str) -> Vec<ScriptOption> {
    let mut found = Vec::new();
    for line in header(script).lines() {
        let Some(rest) = line
            .trim_start_matches([' ', '*', '/'])
            .strip_prefix("Option: ")
        else {
            continue;
        };
        let (spec, help) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if let Some((name, default)) = spec.split_once('=') {
            found.push(ScriptOption {
                name: name.to_string(),
                default: default.to_string(),
                help: help.trim().to_string(),
            });
        }
    }
    found
}

/// The opening comment of a script (empty when it has none).
pub fn header(script: &str) -> &str {
    let text = script.trim_start();
    let text = text
        .strip_prefix("#!")
        .map(|rest| rest.split_once('\n').map_or("", |(_, r)| r))
        .unwrap_or(text)
        .trim_start();
    if text.starts_with("/*") {
        text.find("*/").map_or("", |end| &text[..end + 2])
    } else {
        ""
    }
}

/// Every `@NAME@` placeholder in a script, in order of first use.
pub fn placeholders(script: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let bytes = script.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'@' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if j > start && j < bytes.len() && bytes[j] == b'@' && !bytes[start].is_ascii_digit() {
                let name = &script[start..j];
                if !found.iter().any(|f| f == name) {
                    found.push(name.to_string());
                }
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Replaces each `@NAME@` with `values[NAME]`; a placeholder with no value is an error naming it.
pub fn fill(script: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(script.len());
    let mut rest = script;
    let missing: Vec<String> = placeholders(script)
        .into_iter()
        .filter(|p| !values.contains_key(p))
        .collect();
    if !missing.is_empty() {
        return Err(format!("no value for {}", missing.join(", ")));
    }
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if len > 0
            && after.as_bytes().get(len) == Some(&b'@')
            && !after.as_bytes()[0].is_ascii_digit()
        {
            out.push_str(&values[&after[..len]]);
            rest = &after[len + 1..];
        } else {
            out.push('@');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholders the tool knows (uppercase: facts about the target).
pub const KNOWN_FACTS: &[&str] = &[
    "PID",
    "LIBC",
    "PYTHON",
    "PYFRAMES",
    "RUNTIME",
    "OFFSET_RUNTIME_INTERP_MAIN",
    "OFFSET_INTERP_THREADS_HEAD",
    "OFFSET_TSTATE_NEXT",
    "OFFSET_TSTATE_THREAD_ID",
    "OFFSET_FRAME_CODE",
    "OFFSET_CODE_NAME",
    "OFFSET_CODE_FILENAME",
    "OFFSET_CODE_FIRSTLINENO",
    "OFFSET_STR_DATA",
    "THREAD_SELF",
    "TSTATE_FRAME",
    "PY_THREAD_FRAME",
    "GC_START",
    "GC_DONE",
    "GC_GENERATION",
    "GC_COLLECTED",
];

/// The bpftrace code that finds the calling thread's thread state (`$me`) and current Python frame
/// (`$frame`), shared by every script that reads Python frames (`@PY_THREAD_FRAME@` in a script)
/// and by `attach --precise` (src/precise/). It needs the frame facts and `@max_threads@`.
pub const PY_THREAD_FRAME: &str = include_str!("../../probes/fragments/py_thread_frame.bt");

/// The values of the facts placeholders (every UPPERCASE one but the py_gc ones) for this target.
///
/// Every value is made by the tool: numbers, expressions generated from the offsets tables, and
/// files named the tool's way ([`super::target::MappedFile::tracer_name`]); nothing the target named goes in.
pub fn fact_values(
    facts: &Facts,
    backend_is_dtrace: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        values.insert(k.to_string(), v);
    };
    set("PID", facts.pid.to_string());
    set(
        "LIBC",
        match &facts.libc {
            Some(file) => file.tracer_name()?,
            None => "libc.so.6".into(),
        },
    );
    let python = facts.python.as_ref().ok();
    set(
        "PYTHON",
        match python {
            Some(p) => p.binary.tracer_name()?,
            None => "python".into(),
        },
    );
    match python.map(|p| p.frames()) {
        Some(Ok((layout, runtime))) => {
            set("PYFRAMES", "1".into());
            set("RUNTIME", format!("{runtime:#x}"));
            set(
                "OFFSET_RUNTIME_INTERP_MAIN",
                layout.runtime_interp_main.to_string(),
            );
            set(
                "OFFSET_INTERP_THREADS_HEAD",
                layout.interp_threads_head.to_string(),
            );
            set("OFFSET_TSTATE_NEXT", layout.tstate_next.to_string());
            set(
                "OFFSET_TSTATE_THREAD_ID",
                layout.tstate_thread_id.to_string(),
            );
            set("OFFSET_FRAME_CODE", layout.frame_code.to_string());
            set("OFFSET_CODE_NAME", layout.code_name.to_string());
            set("OFFSET_CODE_FILENAME", layout.code_filename.to_string());
            set(
                "OFFSET_CODE_FIRSTLINENO",
                layout.code_firstlineno.to_string(),
            );
            set("OFFSET_STR_DATA", layout.str_data.to_string());
            set(
                "THREAD_SELF",
                if backend_is_dtrace {
                    "tid".to_string()
                } else {
                    offsets::thread_self_expression(layout).to_string()
                },
            );
            set(
                "TSTATE_FRAME",
                if backend_is_dtrace {
                    offsets::frame_expression_d(layout)
                } else {
                    offsets::frame_expression(layout)
                },
            );
        }
        _ => {
            set("PYFRAMES", "0".into());
            set("RUNTIME", "0".into());
            for name in KNOWN_FACTS.iter().filter(|n| n.starts_with("OFFSET_")) {
                set(name, "0".into());
            }
            set("THREAD_SELF", "tid".into());
            set("TSTATE_FRAME", "0".into());
        }
    }
    Ok(values)
}

/// [`PY_THREAD_FRAME`] filled in with `values` (which must hold the facts and `max_threads`).
pub fn thread_frame_code(values: &BTreeMap<String, String>) -> Result<String, String> {
    fill(PY_THREAD_FRAME, values)
}

/// How py_gc attaches for this target: (start probe, done probe, generation, collected), or why not.
fn gc_probes(
    facts: &Facts,
    backend_is_dtrace: bool,
) -> Result<(String, String, String, String), String> {
    let python = facts.python.as_ref().map_err(|e| e.clone())?;
    let shown = &python.binary;
    let binary = python.binary.tracer_name()?;
    let usdt = python.usdt_probes();
    if usdt.contains("gc__start") && usdt.contains("gc__done") {
        return Ok(if backend_is_dtrace {
            (
                "python@PID@:::gc-start".to_string(),
                "python@PID@:::gc-done".to_string(),
                "arg0".to_string(),
                "arg0".to_string(),
            )
        } else {
            (
                format!("usdt:{binary}:python:gc__start"),
                format!("usdt:{binary}:python:gc__done"),
                "arg0".to_string(),
                "arg0".to_string(),
            )
        });
    }
    // Without USDT: the collection function itself. Its second argument is the generation and it
    // returns the number of objects collected (plus uncollectable) in 3.9-3.13.
    let function = if python.minor >= 10 && python.symbols.contains("gc_collect_main") {
        "gc_collect_main"
    } else if python.minor == 9 && python.symbols.contains("collect") {
        "collect"
    } else {
        return Err(format!(
            "Python {} in {} has neither the gc__start/gc__done USDT probes nor a symbol for its collection function{}",
            python.version,
            shown,
            if python.minor <= 8 { " (3.8's `collect` is split by the compiler into constprop copies)" } else { " (a stripped binary built without --with-dtrace)" }
        ));
    };
    if backend_is_dtrace {
        Ok((
            format!("pid@PID@::{function}:entry"),
            format!("pid@PID@::{function}:return"),
            "arg1".to_string(),
            "arg1".to_string(),
        ))
    } else {
        Ok((
            format!("uprobe:{binary}:{function}"),
            format!("uretprobe:{binary}:{function}"),
            "arg1".to_string(),
            "retval".to_string(),
        ))
    }
}

/// Whether `entry` can run on this target, or why not.
pub fn availability(entry: &Entry, facts: &Facts) -> Result<(), String> {
    let libc = || {
        facts
            .libc
            .as_ref()
            .map(|_| ())
            .ok_or_else(|| "no C library (libc.so.6) is mapped in the target".to_string())
    };
    match entry.needs {
        Needs::Libc | Needs::LibcMaybeFrames => libc(),
        Needs::LibcAndFrames => {
            libc()?;
            let python = facts.python.as_ref().map_err(|e| e.clone())?;
            python.frames().map(|_| ())
        }
        Needs::PyObjectAllocator => {
            let python = facts.python.as_ref().map_err(|e| e.clone())?;
            if python.symbols.contains("PyObject_Malloc")
                && python.symbols.contains("PyObject_Free")
            {
                Ok(())
            } else {
                Err(format!(
                    "{} has no PyObject_Malloc/PyObject_Free symbols",
                    python.binary
                ))
            }
        }
        Needs::GcProbes => gc_probes(facts, false).map(|_| ()),
    }
}

/// The values of every placeholder for this target and these options.
pub fn values(
    entry: &Entry,
    facts: &Facts,
    defines: &[(String, String)],
    backend_is_dtrace: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = fact_values(facts, backend_is_dtrace)?;
    let mut set = |k: &str, v: String| {
        values.insert(k.to_string(), v);
    };
    if entry.needs == Needs::GcProbes {
        let (start, done, generation, collected) = gc_probes(facts, backend_is_dtrace)?;
        set("GC_START", start.replace("@PID@", &facts.pid.to_string()));
        set("GC_DONE", done.replace("@PID@", &facts.pid.to_string()));
        set("GC_GENERATION", generation);
        set("GC_COLLECTED", collected);
    }
    let script = if backend_is_dtrace { entry.d } else { entry.bt };
    let declared = options(script);
    for option in &declared {
        values.insert(option.name.clone(), option.default.clone());
    }
    for (name, value) in defines {
        let Some(option) = declared.iter().find(|o| &o.name == name) else {
            return Err(format!(
                "{} has no option `{name}`; its options: {}",
                entry.name,
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared
                        .iter()
                        .map(|o| format!("{}={} ({})", o.name, o.default, o.help))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "-D {name}={value}: the value must be a whole number (default {})",
                option.default
            ));
        }
        values.insert(name.clone(), value.clone());
    }
    if placeholders(script).iter().any(|p| p == "PY_THREAD_FRAME") {
        let code = thread_frame_code(&values)?;
        values.insert("PY_THREAD_FRAME".to_string(), code);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The code of a script without its comments and string literals.
    fn code_only(script: &str) -> String {
        let mut out = String::new();
        let mut chars = script.chars().peekable();
        let mut line_start = true;
        while let Some(c) = chars.next() {
            if line_start && c == '#' {
                // #! and #pragma lines.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push('\n');
                continue;
            }
            line_start = c == '\n';
            match c {
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    let mut previous = ' ';
                    for c in chars.by_ref() {
                        if previous == '*' && c == '/' {
                            break;
                        }
                        previous = c;
                    }
                }
                '/' if chars.peek() == Some(&'/') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            out.push('\n');
                            line_start = true;
                            break;
                        }
                    }
                }
                '"' => {
                    let mut escaped = false;
                    for c in chars.by_ref() {
                        if !escaped && c == '"' {
                            break;
                        }
                        escaped = !escaped && c == '\\';
                    }
                    out.push_str("\"\"");
                }
                c => out.push(c),
            }
        }
        out
    }

    fn balanced(code: &str) -> Result<(), String> {
        let mut stack = Vec::new();
        for (line, text) in code.lines().enumerate() {
            for c in text.chars() {
                match c {
                    '{' | '(' | '[' => stack.push((c, line + 1)),
                    '}' | ')' | ']' => {
                        let want = match c {
                            '}' => '{',
                            ')' => '(',
                            _ => '[',
                        };
                        match stack.pop() {
                            Some((open, _)) if open == want => {}
                            other => {
                                return Err(format!("line {}: {c} closes {other:?}", line + 1))
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        match stack.pop() {
            None => Ok(()),
            Some((c, line)) => Err(format!("{c} opened on line {line} is never closed")),
        }
    }

    /// The maps a script prints (print(@x) / printa("@x...")) and its PMT markers.
    fn output_labels(script: &str) -> BTreeSet<String> {
        let mut labels = BTreeSet::new();
        for (prefix, skip) in [("print(@", 7), ("printa(\"@", 9)] {
            let mut rest = script;
            while let Some(at) = rest.find(prefix) {
                let name: String = rest[at + skip..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                labels.insert(format!("@{name}"));
                rest = &rest[at + skip..];
            }
        }
        let mut rest = script;
        while let Some(at) = rest.find("\"PMT ") {
            let word: String = rest[at + 5..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            labels.insert(format!("PMT {word}"));
            rest = &rest[at + 5..];
        }
        labels
    }

    /// What a D script prints differently from its twin, on purpose (said in its header): the
    /// code names as `PMT code` lines instead of maps; malloc_outstanding's blocks as events.
    fn d_differences(name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        match name {
            "py_malloc" | "py_flow_malloc_free" => (
                set(&["@py_name", "@py_file", "@py_line"]),
                set(&["PMT code"]),
            ),
            "malloc_outstanding" => (
                set(&[
                    "@py_name",
                    "@py_file",
                    "@py_line",
                    "@live_size",
                    "@live_ns",
                    "@live_code",
                    "@live_caller",
                    "@live_stack",
                ]),
                set(&["PMT code", "PMT alloc", "PMT free"]),
            ),
            _ => (BTreeSet::new(), BTreeSet::new()),
        }
    }

    #[test]
    fn every_entry_has_both_scripts_with_a_header() {
        for entry in CATALOGUE {
            for (script, file) in [
                (entry.bt, format!("{}.bt", entry.name)),
                (entry.d, format!("{}.d", entry.name)),
            ] {
                let header = header(script);
                for needle in [
                    format!("{file}: "),
                    "Shows:".into(),
                    "By hand".into(),
                    "Output:".into(),
                    "Example".into(),
                    "Placeholders:".into(),
                ] {
                    assert!(header.contains(&needle), "{file}: header lacks {needle:?}");
                }
                if file.ends_with(".d") {
                    assert!(
                        header.contains("UNVERIFIED"),
                        "{file}: must say it is unverified"
                    );
                } else {
                    assert!(
                        !header.contains("EXAMPLE"),
                        "{file}: the example is still a placeholder"
                    );
                }
            }
        }
    }

    #[test]
    fn scripts_are_balanced_and_use_only_known_placeholders() {
        for entry in CATALOGUE {
            for (script, kind) in [(entry.bt, "bt"), (entry.d, "d")] {
                let code = code_only(script);
                balanced(&code).unwrap_or_else(|e| panic!("{}.{kind}: {e}", entry.name));
                let options: Vec<String> = options(script).into_iter().map(|o| o.name).collect();
                for placeholder in placeholders(script) {
                    assert!(
                        KNOWN_FACTS.contains(&placeholder.as_str())
                            || options.contains(&placeholder),
                        "{}.{kind}: unknown placeholder @{placeholder}@",
                        entry.name
                    );
                }
                for option in &options {
                    let used = placeholders(&code);
                    let through_fragment = used.iter().any(|p| p == "PY_THREAD_FRAME")
                        && placeholders(PY_THREAD_FRAME).contains(option);
                    assert!(
                        used.contains(option) || through_fragment || option == "min_age_ms",
                        "{}.{kind}: option {option} is never used",
                        entry.name
                    );
                }
                assert!(
                    code.contains("PMT start") || script.contains("\"PMT start"),
                    "{}.{kind}",
                    entry.name
                );
            }
        }
    }

    #[test]
    fn d_scripts_print_what_their_bpftrace_twins_print() {
        for entry in CATALOGUE {
            let bt = output_labels(entry.bt);
            let d = output_labels(entry.d);
            let (only_bt, only_d) = d_differences(entry.name);
            let bt_expected: BTreeSet<String> = bt.difference(&only_bt).cloned().collect();
            let d_expected: BTreeSet<String> = d.difference(&only_d).cloned().collect();
            assert_eq!(
                bt_expected, d_expected,
                "{}: .bt and .d print different things",
                entry.name
            );
            assert!(
                bt.contains("PMT start") && bt.contains("PMT end"),
                "{}",
                entry.name
            );
            // The same options, except the thread search depth (D has no loops: four, fixed).
            let names = |s: &str| {
                options(s)
                    .into_iter()
                    .map(|o| o.name)
                    .filter(|n| n != "max_threads")
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                names(entry.bt),
                names(entry.d),
                "{}: options differ",
                entry.name
            );
        }
    }

    #[test]
    fn fill_replaces_every_placeholder() {
        let mut values = BTreeMap::new();
        values.insert("PID".to_string(), "42".to_string());
        values.insert("per_thread".to_string(), "1".to_string());
        assert_eq!(
            fill("a @PID@ @x[1] @per_thread@ @@ me@host", &values).unwrap(),
            "a 42 @x[1] 1 @@ me@host"
        );
        assert!(fill("@LIBC@", &values).unwrap_err().contains("LIBC"));
        assert_eq!(placeholders("@calls[@PID@] @1@ @A@"), ["PID", "A"]);
        let script = "/*\n * x.bt: y\n * Option: per_thread=0   1 keeps threads\n */\n";
        assert_eq!(
            options(script),
            [ScriptOption {
                name: "per_thread".into(),
                default: "0".into(),
                help: "1 keeps threads".into()
            }]
        );
    }
}
