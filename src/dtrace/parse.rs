//! The parser of a script's output, pure (text in, data out) so that it can be tested and fuzzed.
//!
//! The scripts print sections opened by marker lines, and maps the way bpftrace's `print(@map)`
//! does (the D scripts print the same shape with `printa`):
//!
//! ```text
//! PMT start malloc_count pid 1234        the probes are attached
//! PMT second 2                           a per-second section
//! @s_calls[malloc()]: 1003               a map entry: name, key fields, a number
//! PMT end 18270631806221                 the final section, with the clock at the end (ns)
//! @py_name[140395649057456]: grow        a text value
//! @sizes[malloc()]:                      a histogram (bpftrace's or DTrace's quantize layout)
//! [64K, 128K)         1000 |@@@@@@@@@@|
//! @live_stack[94923443138928]:           a stack as the value: one frame per indented line
//!         7fd20c5af898 malloc+0 (/usr/lib/x86_64-linux-gnu/libc.so.6)
//! @by_stack[                             a stack as the key
//!         7fd20c5af898 malloc+0 (...)
//! ]: 12
//! PMT gc generation=2 ...                any other PMT line: an event, kept as text
//! ```
//!
//! Anything else (bpftrace's "Attaching N probes...", blank lines) is ignored. Malformed lines never
//! panic: they are counted in `Parsed::skipped`.

use serde::Serialize;

/// Which section a map entry or an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Before any marker, or after `PMT start`.
    Start,
    /// `PMT second N`.
    Second(u64),
    /// `PMT end NSECS`: the final figures; the number is the tracer's clock at the end.
    End(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Inclusive lower bound (`None`: below zero).
    pub low: Option<i64>,
    /// Exclusive upper bound (`None`: open).
    pub high: Option<i64>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Int(i64),
    Text(String),
    Hist(Vec<Bucket>),
    Stack(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub map: String,
    /// The key's fields (empty for a map without keys); a stack key is one field per frame.
    pub key: Vec<String>,
    /// True when `key` is a stack.
    pub stack_key: bool,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub label: Label,
    pub entries: Vec<Entry>,
    /// Other `PMT ...` lines, without the `PMT ` prefix.
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Parsed {
    pub sections: Vec<Section>,
    /// Whether `PMT start` was seen (the probes were attached).
    pub started: bool,
    /// Whether `PMT end` was seen (the final figures are complete).
    pub ended: bool,
    /// Lines that looked like map output but could not be read.
    pub skipped: usize,
}

impl Parsed {
    /// The final section, if the script got that far.
    pub fn end(&self) -> Option<&Section> {
        self.sections
            .iter()
            .rev()
            .find(|s| matches!(s.label, Label::End(_)))
    }

    /// The per-second sections, in order.
    pub fn seconds(&self) -> impl Iterator<Item = (u64, &Section)> {
        self.sections.iter().filter_map(|s| match s.label {
            Label::Second(n) => Some((n, s)),
            _ => None,
        })
    }
}

impl Section {
    pub fn map<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.map == name)
    }

    /// The integer value of `name[key]`.
    pub fn int(&self, name: &str, key: &[&str]) -> Option<i64> {
        self.map(name).find_map(|e| match &e.value {
            Value::Int(v) if e.key.iter().map(String::as_str).eq(key.iter().copied()) => Some(*v),
            _ => None,
        })
    }
}

/// A size with bpftrace's suffixes: `512`, `64K`, `1M`, `2G`, `1T`, `1P`, `1E` (powers of 1024).
pub fn parse_size(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, factor) = match text.chars().last()? {
        'K' => (&text[..text.len() - 1], 1i64 << 10),
        'M' => (&text[..text.len() - 1], 1 << 20),
        'G' => (&text[..text.len() - 1], 1 << 30),
        'T' => (&text[..text.len() - 1], 1 << 40),
        'P' => (&text[..text.len() - 1], 1 << 50),
        'E' => (&text[..text.len() - 1], 1 << 60),
        _ => (text, 1),
    };
    digits.parse::<i64>().ok()?.checked_mul(factor)
}

/// One bpftrace histogram row: `[64K, 128K)   1000 |@@@|`, `[0]   3 |@|`, `(..., 0)   1 ||`.
fn hist_row(line: &str) -> Option<Bucket> {
    let line = line.trim();
    let close = line.find([')', ']'])?;
    let (range, rest) = line.split_at(close + 1);
    let count = rest.split_whitespace().next()?.parse::<u64>().ok()?;
    let inner = range.get(1..range.len() - 1)?;
    if range.starts_with("(...") {
        let high = parse_size(inner.rsplit(',').next()?)?;
        return Some(Bucket {
            low: None,
            high: Some(high),
            count,
        });
    }
    if !range.starts_with('[') {
        return None;
    }
    match inner.split_once(',') {
        Some((low, high)) => {
            let low = parse_size(low)?;
            let high = high.trim();
            let high = if high == "..." {
                None
            } else {
                Some(parse_size(high)?)
            };
            Some(Bucket {
                low: Some(low),
                high,
                count,
            })
        }
        None => {
            let value = parse_size(inner)?;
            Some(Bucket {
                low: Some(value),
                high: value.checked_add(1),
                count,
            })
        }
    }
}

/// One DTrace quantize row: `   1024 |@@@@@     1`. The upper bound is the next row's value.
fn quantize_row(line: &str) -> Option<(i64, u64)> {
    let (value, rest) = line.split_once('|')?;
    let value = value.trim().parse::<i64>().ok()?;
    let count = rest.split_whitespace().last()?.parse::<u64>().ok()?;
    Some((value, count))
}

fn split_key(inner: &str) -> Vec<String> {
    if inner.is_empty() {
        Vec::new()
    } else {
        inner.split(", ").map(|s| s.to_string()).collect()
    }
}

/// `@name[k, k]: value` or `@name: value` → (name, key fields, value text).
fn map_line(line: &str) -> Option<(String, Vec<String>, String)> {
    let rest = line.strip_prefix('@')?;
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let name = &rest[..name_len];
    let after = &rest[name_len..];
    if let Some(keyed) = after.strip_prefix('[') {
        let close = keyed.rfind("]:")?;
        let key = &keyed[..close];
        let value = keyed[close + 2..].trim().to_string();
        Some((name.to_string(), split_key(key), value))
    } else {
        let value = after.strip_prefix(':')?.trim().to_string();
        Some((name.to_string(), Vec::new(), value))
    }
}

fn frame_line(line: &str) -> bool {
    line.starts_with('\t') || line.starts_with("  ")
}

/// Parses a whole run's output.
pub fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut current = Section {
        label: Label::Start,
        entries: Vec::new(),
        events: Vec::new(),
    };
    // bpftrace prints an empty stack value as nothing at all, not even a newline, so several
    // entries can share a line: `@live_stack[1]: @live_stack[2]: `. Split them apart.
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        let mut rest = line;
        while rest.starts_with('@') {
            match rest.find("]: @") {
                Some(pos) => {
                    lines.push(&rest[..pos + 3]);
                    rest = &rest[pos + 3..];
                }
                None => break,
            }
        }
        lines.push(rest);
    }
    let mut i = 0;
    let push_section = |parsed: &mut Parsed, section: Section| {
        if section.label != Label::Start
            || !section.entries.is_empty()
            || !section.events.is_empty()
        {
            parsed.sections.push(section);
        }
    };
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let Some(marker) = line.strip_prefix("PMT ") {
            let mut words = marker.split_whitespace();
            let kind = words.next().unwrap_or("");
            let number = words.next().and_then(|w| w.parse::<u64>().ok());
            let label = match (kind, number) {
                ("start", _) => {
                    parsed.started = true;
                    None
                }
                ("second", Some(n)) => Some(Label::Second(n)),
                ("end", Some(n)) => {
                    parsed.ended = true;
                    Some(Label::End(n))
                }
                _ => {
                    current.events.push(marker.to_string());
                    None
                }
            };
            if let Some(label) = label {
                let done = std::mem::replace(
                    &mut current,
                    Section {
                        label,
                        entries: Vec::new(),
                        events: Vec::new(),
                    },
                );
                push_section(&mut parsed, done);
            }
            continue;
        }
        if !line.starts_with('@') {
            continue;
        }
        // A stack as the key: `@name[` then frames then `]: value`.
        if line.ends_with('[') && !line.contains(':') {
            let name = line[1..line.len() - 1].to_string();
            let mut frames = Vec::new();
            let mut value = None;
            while i < lines.len() {
                let next = lines[i];
                i += 1;
                if let Some(rest) = next.strip_prefix("]:") {
                    value = rest.trim().parse::<i64>().ok();
                    break;
                }
                if frame_line(next) {
                    frames.push(next.trim().to_string());
                } else if !next.trim().is_empty() {
                    i -= 1;
                    break;
                }
            }
            match value {
                Some(v) => current.entries.push(Entry {
                    map: name,
                    key: frames,
                    stack_key: true,
                    value: Value::Int(v),
                }),
                None => parsed.skipped += 1,
            }
            continue;
        }
        let Some((map, key, value)) = map_line(line) else {
            parsed.skipped += 1;
            continue;
        };
        if !value.is_empty() {
            let value = match value.parse::<i64>() {
                Ok(v) => Value::Int(v),
                Err(_) => Value::Text(value),
            };
            current.entries.push(Entry {
                map,
                key,
                stack_key: false,
                value,
            });
            continue;
        }
        // An empty value: a histogram or a stack follows (or a string that is empty).
        let mut buckets = Vec::new();
        let mut quantize: Vec<(i64, u64)> = Vec::new();
        let mut frames = Vec::new();
        while i < lines.len() {
            let next = lines[i];
            if next.starts_with('@') || next.starts_with("PMT ") {
                break;
            }
            i += 1;
            let trimmed = next.trim();
            if trimmed.is_empty() {
                if buckets.is_empty() && quantize.is_empty() && frames.is_empty() {
                    continue;
                }
                break;
            }
            if trimmed.starts_with("value") && trimmed.contains("Distribution") {
                continue;
            }
            if let Some(bucket) = hist_row(trimmed) {
                buckets.push(bucket);
            } else if let Some(row) = quantize_row(trimmed) {
                quantize.push(row);
            } else if frame_line(next) {
                frames.push(trimmed.to_string());
            } else {
                parsed.skipped += 1;
            }
        }
        for (index, (value, count)) in quantize.iter().enumerate() {
            let high = quantize.get(index + 1).map(|(v, _)| *v);
            buckets.push(Bucket {
                low: Some(*value),
                high,
                count: *count,
            });
        }
        let value = if !buckets.is_empty() {
            Value::Hist(buckets)
        } else if !frames.is_empty() {
            Value::Stack(frames)
        } else {
            Value::Text(String::new())
        };
        current.entries.push(Entry {
            map,
            key,
            stack_key: false,
            value,
        });
    }
    push_section(&mut parsed, current);
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Attaching 12 probes...
PMT start malloc_count pid 26323
PMT second 1


PMT second 2
@s_calls[malloc()]: 1000
@s_calls[free()]: 1000
@s_bytes[malloc()]: 100499500
PMT end 17518688361110
@calls[malloc()]: 1003
@total: 7
@sizes[malloc()]: 
[512, 1K)              1 |                                                    |
[1K, 2K)               0 |                                                    |
[64K, 128K)         1000 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@sizes[free()]: 
[0]                    3 |@@@                                                 |
[1]                    0 |                                                    |
[2, 4)                 1 |@                                                   |
(..., 0)               2 |@@                                                  |

@py_name[140395649057456]: allocate_here
@py_name[0]: 
@thread_calls[26323, 7]: 3349
@live_stack[94923443918896]: 
\t7fd20c5af898 malloc+0 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t7fd20c85bc00 ffi_call_unix64+85 (/usr/lib/libffi.so.8)

@by[
\t7fd20bb73f7a 0x7fd20bb73f7a ([unknown])
\t7ffe57c6d420 0x7ffe57c6d420 ([unknown])
]: 1000
PMT gc generation=2 duration_ns=100 collected=2000
@empty[1]: @empty[2]: @empty[3]: 
@after[1]: 5
";

    #[test]
    fn sections_maps_hists_stacks_and_events() {
        let parsed = parse(SAMPLE);
        assert!(parsed.started && parsed.ended);
        assert_eq!(parsed.skipped, 0);
        let seconds: Vec<u64> = parsed.seconds().map(|(n, _)| n).collect();
        assert_eq!(seconds, [1, 2]);
        let second = parsed.seconds().nth(1).unwrap().1;
        assert_eq!(second.int("s_calls", &["malloc()"]), Some(1000));
        assert_eq!(second.int("s_bytes", &["malloc()"]), Some(100499500));
        let end = parsed.end().unwrap();
        assert_eq!(end.label, Label::End(17518688361110));
        assert_eq!(end.int("calls", &["malloc()"]), Some(1003));
        assert_eq!(end.int("total", &[]), Some(7));
        assert_eq!(end.int("thread_calls", &["26323", "7"]), Some(3349));
        let hist = end.map("sizes").next().unwrap();
        let Value::Hist(buckets) = &hist.value else {
            panic!("{hist:?}")
        };
        assert_eq!(buckets.len(), 3);
        assert_eq!(
            buckets[2],
            Bucket {
                low: Some(65536),
                high: Some(131072),
                count: 1000
            }
        );
        let Value::Hist(small) = &end.map("sizes").nth(1).unwrap().value else {
            panic!()
        };
        assert_eq!(
            small[0],
            Bucket {
                low: Some(0),
                high: Some(1),
                count: 3
            }
        );
        assert_eq!(
            small[2],
            Bucket {
                low: Some(2),
                high: Some(4),
                count: 1
            }
        );
        assert_eq!(
            small[3],
            Bucket {
                low: None,
                high: Some(0),
                count: 2
            }
        );
        let names: Vec<&Value> = end.map("py_name").map(|e| &e.value).collect();
        assert_eq!(
            names,
            [
                &Value::Text("allocate_here".into()),
                &Value::Text(String::new())
            ]
        );
        let stack = end.map("live_stack").next().unwrap();
        assert_eq!(stack.key, ["94923443918896"]);
        let Value::Stack(frames) = &stack.value else {
            panic!()
        };
        assert_eq!(frames.len(), 2);
        assert!(frames[1].contains("ffi_call_unix64"));
        let by = end.map("by").next().unwrap();
        assert!(by.stack_key);
        assert_eq!(by.key.len(), 2);
        assert_eq!(by.value, Value::Int(1000));
        let empty: Vec<&Value> = end.map("empty").map(|e| &e.value).collect();
        assert_eq!(empty, [&Value::Text(String::new()); 3]);
        assert_eq!(end.int("after", &["1"]), Some(5));
        assert_eq!(
            end.events,
            ["gc generation=2 duration_ns=100 collected=2000"]
        );
    }

    #[test]
    fn dtrace_quantize_layout() {
        let text = "PMT end 5
@sizes[malloc()]: 
           value  ------------- Distribution ------------- count
             512 |                                         0
            1024 |@@@@@@@@@@@@@                            10
            2048 |                                         0

";
        let parsed = parse(text);
        let end = parsed.end().unwrap();
        let Value::Hist(buckets) = &end.map("sizes").next().unwrap().value else {
            panic!()
        };
        assert_eq!(
            buckets[1],
            Bucket {
                low: Some(1024),
                high: Some(2048),
                count: 10
            }
        );
        assert_eq!(buckets[2].high, None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("8E"), None);
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn garbage_never_panics() {
        let inputs = [
            "@",
            "@[",
            "@x[",
            "@x[]:",
            "@x[\n]:",
            "@x[\n\tframe\n",
            "@x: \n[",
            "@x: \n[1, 2",
            "@x: \n(...",
            "@x: \n|",
            "PMT",
            "PMT second",
            "PMT end x",
            "@x: \n  1 | 2",
            "\u{0}@\u{0}",
            "@x: \n[1K, ...)  4 |@|",
            "@é[é]: é",
        ];
        for input in inputs {
            let _ = parse(input);
        }
        let parsed = parse("@x[1]: \n[1, 2)  5 |@|\n[2, 4)  x |@|\n");
        assert_eq!(parsed.skipped, 1);
    }
}
