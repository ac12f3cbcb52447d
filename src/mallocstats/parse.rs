//! Turning the text of one `sys._debugmallocstats()` capture into [`Stats`].
//!
//! The parser works line by line and never gives up on a line it does not know: such a line is
//! kept as [`LineKind::Text`]. Other output can be interleaved with the capture (another thread
//! writing to stderr while it is redirected), and a future CPython may print new lines; neither
//! must cost the lines that are understood. The input is only refused when nothing in it looks
//! like `sys._debugmallocstats()` output at all.

use std::collections::HashMap;
use std::fmt;

use super::model::{
    labels, Allocator, Figure, FigureLayout, FreeList, Line, LineKind, SizeClass, Stats,
};

/// Why a text is not a `sys._debugmallocstats()` capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The text has no non-blank line.
    Empty,
    /// No line has the shape of the allocator header, the size-class table or a free list (one
    /// of which every CPython version prints); `line` (counting from 1) is the first non-blank
    /// line, shortened to `text`.
    NotMallocStats {
        /// The number of the first non-blank line, counting from 1.
        line: usize,
        /// Its text, shortened to at most [`MAX_QUOTED_CHARS`] characters.
        text: String,
    },
}

/// How much of a line a [`ParseError`] quotes, so that a binary blob does not flood the terminal.
pub const MAX_QUOTED_CHARS: usize = 80;

impl fmt::Display for ParseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(formatter, "empty sys._debugmallocstats() capture"),
            ParseError::NotMallocStats { line, text } => write!(
                formatter,
                "not sys._debugmallocstats() output: line {line} not understood: {text:?}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one capture. Never panics; see the module documentation for what is refused.
pub fn parse(text: &str) -> Result<Stats, ParseError> {
    let mut stats = Stats {
        allocator: Allocator::NotReported,
        small_block_threshold: None,
        size_class_count: None,
        size_classes: Vec::new(),
        figures: Vec::new(),
        free_lists: Vec::new(),
        lines: Vec::new(),
    };
    // Occurrences so far of each figure label, to tell the two `Total` lines apart.
    let mut label_occurrences: HashMap<String, u32> = HashMap::new();
    let mut paragraph: u32 = 0;
    let mut previous_was_blank = false;
    let mut seen_non_blank = false;
    // Whether a line only sys._debugmallocstats() prints has been seen.
    let mut recognised = false;
    let mut saw_table_heading = false;

    for raw_line in text.lines() {
        let line_text = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let classified = classify(line_text);
        let is_blank = matches!(classified, Classified::Blank);
        if !is_blank {
            if previous_was_blank && seen_non_blank {
                paragraph = paragraph.saturating_add(1);
            }
            seen_non_blank = true;
        }
        previous_was_blank = is_blank;

        let kind = match classified {
            Classified::Blank => LineKind::Blank,
            Classified::Text => LineKind::Text,
            Classified::Header {
                small_block_threshold,
                size_class_count,
            } => {
                recognised = true;
                // A second header would mean two captures were concatenated; the first wins
                // and the second is kept as a line of its own.
                if stats.small_block_threshold.is_none() {
                    stats.small_block_threshold = Some(small_block_threshold);
                    stats.size_class_count = Some(size_class_count);
                }
                LineKind::Header
            }
            Classified::TableHeading => {
                recognised = true;
                saw_table_heading = true;
                LineKind::TableHeading
            }
            Classified::SizeClass(row) => {
                stats.size_classes.push(row);
                LineKind::SizeClass(stats.size_classes.len() - 1)
            }
            Classified::FreeList(list) => {
                recognised = true;
                stats.free_lists.push(list);
                LineKind::FreeList(stats.free_lists.len() - 1)
            }
            Classified::Figure {
                label,
                count,
                value,
                layout,
            } => {
                let occurrence = label_occurrences.entry(label.clone()).or_insert(0);
                stats.figures.push(Figure {
                    label,
                    count,
                    value,
                    occurrence: *occurrence,
                    paragraph,
                    layout,
                });
                *occurrence = occurrence.saturating_add(1);
                LineKind::Figure(stats.figures.len() - 1)
            }
        };
        stats.lines.push(Line {
            text: line_text.to_string(),
            paragraph,
            kind,
        });
    }

    if !recognised {
        let first = stats
            .lines
            .iter()
            .enumerate()
            .find(|(_, line)| line.kind != LineKind::Blank);
        return Err(match first {
            None => ParseError::Empty,
            Some((index, line)) => ParseError::NotMallocStats {
                line: index + 1,
                text: line.text.chars().take(MAX_QUOTED_CHARS).collect(),
            },
        });
    }
    stats.allocator = identify_allocator(&stats, saw_table_heading);
    Ok(stats)
}

/// Parses a capture read as raw bytes (stderr is not guaranteed to be UTF-8); bytes that are
/// not UTF-8 become U+FFFD and, at worst, make their line unknown text.
pub fn parse_bytes(bytes: &[u8]) -> Result<Stats, ParseError> {
    parse(&String::from_utf8_lossy(bytes))
}

fn identify_allocator(stats: &Stats, saw_table_heading: bool) -> Allocator {
    let has_figure = |label: &str| stats.figures.iter().any(|figure| figure.label == label);
    if saw_table_heading
        || !stats.size_classes.is_empty()
        || has_figure(labels::ARENAS_ALLOCATED_CURRENT)
    {
        Allocator::Pymalloc
    } else if has_figure(labels::MIMALLOC_MEDIUM_BLOCK_THRESHOLD)
        || has_figure(labels::MIMALLOC_ALLOCATED_BLOCKS)
    {
        Allocator::Mimalloc
    } else if stats.small_block_threshold.is_some() {
        Allocator::Unknown
    } else {
        Allocator::NotReported
    }
}

/// What one line looks like, before it is stored.
#[derive(Debug, PartialEq)]
enum Classified {
    Blank,
    Header {
        small_block_threshold: u64,
        size_class_count: u64,
    },
    TableHeading,
    SizeClass(SizeClass),
    FreeList(FreeList),
    Figure {
        label: String,
        count: Option<u64>,
        value: u64,
        layout: FigureLayout,
    },
    Text,
}

/// Recognises one line. The order matters: the header and the free lists also contain `=`, so
/// they are tried before the generic `label = value`.
fn classify(line: &str) -> Classified {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Classified::Blank;
    }
    if let Some(header) = parse_header(trimmed) {
        return header;
    }
    if is_table_heading(trimmed) {
        return Classified::TableHeading;
    }
    if let Some(row) = parse_size_class(trimmed) {
        return Classified::SizeClass(row);
    }
    if let Some(list) = parse_free_list(trimmed) {
        return Classified::FreeList(list);
    }
    if let Some(figure) = parse_equals_figure(trimmed) {
        return figure;
    }
    if let Some(figure) = parse_colon_figure(line) {
        return figure;
    }
    Classified::Text
}

/// `Small block threshold = 512, in 32 size classes.`
fn parse_header(trimmed: &str) -> Option<Classified> {
    let rest = trimmed.strip_prefix("Small block threshold = ")?;
    let (threshold, rest) = rest.split_once(", in ")?;
    let classes = rest.strip_suffix(" size classes.")?;
    Some(Classified::Header {
        small_block_threshold: parse_digits(threshold)?,
        size_class_count: parse_digits(classes)?,
    })
}

/// `class   size   num pools   blocks in use  avail blocks` and the dashes under it. The
/// underline must have several dash groups, so that a lone `-----` rule in unrelated text does
/// not pass for a capture.
fn is_table_heading(trimmed: &str) -> bool {
    let titles = trimmed.starts_with("class") && trimmed.contains("num pools");
    let mut groups = trimmed.split_whitespace();
    let underline =
        groups.clone().count() >= 3 && groups.all(|group| group.bytes().all(|byte| byte == b'-'));
    titles || underline
}

/// `    3     64          50           12601           149`: exactly five plain integers.
fn parse_size_class(trimmed: &str) -> Option<SizeClass> {
    let mut numbers = trimmed.split_whitespace().map(parse_digits);
    let row = SizeClass {
        class: numbers.next()??,
        size: numbers.next()??,
        pools: numbers.next()??,
        blocks_in_use: numbers.next()??,
        avail_blocks: numbers.next()??,
    };
    numbers.next().is_none().then_some(row)
}

/// `8 free PyDictObjects * 48 bytes each =                  384`
fn parse_free_list(trimmed: &str) -> Option<FreeList> {
    let (left, right) = trimmed.rsplit_once('=')?;
    let bytes = parse_grouped(right.trim())?;
    let (free, rest) = left.trim_end().split_once(' ')?;
    let rest = rest.strip_prefix("free ")?;
    let (object, each) = rest.rsplit_once(" * ")?;
    let bytes_each = parse_digits(each.strip_suffix(" bytes each")?)?;
    let object = object.trim();
    if object.is_empty() {
        return None;
    }
    Some(FreeList {
        object: object.to_string(),
        free: parse_digits(free)?,
        bytes_each,
        bytes,
    })
}

/// `# bytes in allocated blocks        =            3,498,112`, `Total   =   4,194,304`,
/// `4 arenas * 1048576 bytes/arena     =            4,194,304`, `Medium block threshold = 131072`.
fn parse_equals_figure(trimmed: &str) -> Option<Classified> {
    let (left, right) = trimmed.rsplit_once('=')?;
    let value = parse_grouped(right.trim())?;
    let (label, count) = split_leading_count(left.trim())?;
    Some(Classified::Figure {
        label,
        count,
        value,
        layout: FigureLayout::Equals,
    })
}

/// mimalloc's `    Allocated Bytes: 2028104`.
fn parse_colon_figure(line: &str) -> Option<Classified> {
    let (left, right) = line.rsplit_once(':')?;
    let value = parse_grouped(right.trim())?;
    let indent = left.len() - left.trim_start_matches(' ').len();
    let (label, count) = split_leading_count(left.trim())?;
    Some(Classified::Figure {
        label,
        count,
        value,
        layout: FigureLayout::Colon { indent },
    })
}

/// Splits `4 arenas * 1048576 bytes/arena` into its count and the rest; leaves labels without
/// a `count things * size` shape whole. `None` for an empty label.
fn split_leading_count(label: &str) -> Option<(String, Option<u64>)> {
    if label.is_empty() {
        return None;
    }
    if let Some((first_word, rest)) = label.split_once(' ') {
        if rest.contains(" * ") {
            if let Some(count) = parse_digits(first_word) {
                return Some((rest.trim_start().to_string(), Some(count)));
            }
        }
    }
    Some((label.to_string(), None))
}

/// A plain unsigned integer: ASCII digits only, and it must fit in a u64.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An unsigned integer that may carry thousands separators, as `printone` writes it
/// (`4,194,304`). Separators must sit between digits.
fn parse_grouped(text: &str) -> Option<u64> {
    if text.starts_with(',') || text.ends_with(',') || text.contains(",,") {
        return None;
    }
    let digits: String = text.chars().filter(|&c| c != ',').collect();
    parse_digits(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind_of_line() {
        assert_eq!(
            classify("Small block threshold = 512, in 32 size classes."),
            Classified::Header {
                small_block_threshold: 512,
                size_class_count: 32
            }
        );
        assert_eq!(
            classify("class   size   num pools   blocks in use  avail blocks"),
            Classified::TableHeading
        );
        assert_eq!(
            classify("-----   ----   ---------   -------------  ------------"),
            Classified::TableHeading
        );
        assert_eq!(
            classify("    3     64          50           12601           149"),
            Classified::SizeClass(SizeClass {
                class: 3,
                size: 64,
                pools: 50,
                blocks_in_use: 12601,
                avail_blocks: 149
            })
        );
        assert_eq!(
            classify(" 200 free 3-sized PyTupleObjects * 48 bytes each =                9,600"),
            Classified::FreeList(FreeList {
                object: "3-sized PyTupleObjects".to_string(),
                free: 200,
                bytes_each: 48,
                bytes: 9600
            })
        );
        assert_eq!(
            classify("20 arenas * 1048576 bytes/arena    =           20,971,520"),
            Classified::Figure {
                label: "arenas * 1048576 bytes/arena".to_string(),
                count: Some(20),
                value: 20_971_520,
                layout: FigureLayout::Equals
            }
        );
        assert_eq!(
            classify("    Allocated Bytes: 2028104"),
            Classified::Figure {
                label: "Allocated Bytes".to_string(),
                count: None,
                value: 2_028_104,
                layout: FigureLayout::Colon { indent: 4 }
            }
        );
        assert_eq!(classify("arena map counts"), Classified::Text);
        assert_eq!(classify("   "), Classified::Blank);
        assert_eq!(classify("-----"), Classified::Text);
    }

    #[test]
    fn malformed_numbers_make_a_line_text() {
        // One more than u64::MAX, a separator in the wrong place, four columns, six columns.
        assert_eq!(classify("Total = 18446744073709551616"), Classified::Text);
        assert_eq!(classify("Total = 1,,000"), Classified::Text);
        assert_eq!(classify("Total = ,100"), Classified::Text);
        assert_eq!(classify("    1    2    3    4"), Classified::Text);
        assert_eq!(classify("    1    2    3    4    5    6"), Classified::Text);
        assert_eq!(
            classify("Total = 18,446,744,073,709,551,615"),
            Classified::Figure {
                label: "Total".to_string(),
                count: None,
                value: u64::MAX,
                layout: FigureLayout::Equals
            }
        );
    }

    #[test]
    fn refuses_text_that_is_not_a_capture() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("\n  \n\r\n"), Err(ParseError::Empty));
        let error = parse("\nTraceback (most recent call last):\nx = 1\n").unwrap_err();
        assert_eq!(
            error,
            ParseError::NotMallocStats {
                line: 2,
                text: "Traceback (most recent call last):".to_string()
            }
        );
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn accepts_crlf_and_keeps_unknown_lines() {
        let text = "Small block threshold = 512, in 32 size classes.\r\nsomething new\r\n\r\nTotal = 5\r\n";
        let stats = parse(text).unwrap();
        assert_eq!(stats.lines.len(), 4);
        assert_eq!(stats.lines[1].kind, LineKind::Text);
        assert_eq!(stats.lines[1].text, "something new");
        assert_eq!(stats.figures[0].paragraph, 1);
        assert_eq!(stats.allocator, Allocator::Unknown);
        assert_eq!(
            stats.to_text(),
            "Small block threshold = 512, in 32 size classes.\nsomething new\n\nTotal = 5\n"
        );
    }
}
