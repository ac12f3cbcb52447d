//! Printing a [`Diff`] in the layout CPython uses for the captures themselves.
//!
//! Summary and free-list lines keep CPython's columns (label padded to 35, or the free-list
//! text right-aligned in 48, then `=` and a 21-column value) with the signed change as the
//! value, followed by `(before -> after)`. The size-class table keeps CPython's column titles;
//! each numeric column is split into before, after and change. Only changed lines are printed.

use std::fmt::Write as _;

use super::diff::{Change, Diff, FigureChange, FreeListChange, Presence};
use super::model::{Allocator, FigureLayout};

/// Width CPython's `printone` pads labels to before the `=`.
const LABEL_COLUMNS: usize = 35;
/// Width of the value after `=` in `printone`.
const VALUE_COLUMNS: usize = 21;
/// Width free-list labels are right-aligned to (`_PyDebugAllocatorStats`'s `%48s`).
const FREE_LIST_LABEL_COLUMNS: usize = 48;

/// `1234567` -> `1,234,567`, as `printone` writes values.
pub fn grouped(value: u128) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A change with its sign and thousands separators: `+1,234`, `-56`, `0`.
pub fn signed_grouped(delta: i128) -> String {
    format!("{}{}", sign(delta), grouped(delta.unsigned_abs()))
}

/// A change with its sign, without separators: `+1234`, `-56`, `0` (for columns CPython prints
/// without separators).
pub fn signed_plain(delta: i128) -> String {
    format!("{}{}", sign(delta), delta.unsigned_abs())
}

fn sign(delta: i128) -> &'static str {
    match delta {
        0 => "",
        d if d > 0 => "+",
        _ => "-",
    }
}

/// `(before -> after)` for a line, saying `absent` for the capture that did not print it.
fn before_after(change: Change, presence: Presence, group: bool) -> String {
    let show = |value: u64, present: bool| match (present, group) {
        (false, _) => "absent".to_string(),
        (true, true) => grouped(u128::from(value)),
        (true, false) => value.to_string(),
    };
    format!(
        "({} -> {})",
        show(change.before, presence != Presence::AfterOnly),
        show(change.after, presence != Presence::BeforeOnly)
    )
}

/// Renders the changed lines of `diff` under a one-line header.
pub fn render_diff(diff: &Diff) -> String {
    let mut out = String::new();
    let allocator = match diff.allocator {
        Allocator::Pymalloc => "pymalloc",
        Allocator::Mimalloc => "mimalloc",
        Allocator::NotReported => "system malloc, free lists only",
        Allocator::Unknown => "allocator unknown",
    };
    let counts = [
        (diff.size_classes.len(), "size class", "size classes"),
        (diff.figures().count(), "summary line", "summary lines"),
        (diff.free_lists.len(), "free list", "free lists"),
    ];
    let changed: Vec<String> = counts
        .iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|(count, one, many)| format!("{count} {}", if *count == 1 { one } else { many }))
        .collect();
    let changed = if changed.is_empty() {
        "none".to_string()
    } else {
        changed.join(", ")
    };
    let _ = writeln!(
        out,
        "sys._debugmallocstats() changes ({allocator}): {changed}"
    );
    for warning in &diff.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    if !diff.size_classes.is_empty() {
        out.push('\n');
        render_size_classes(diff, &mut out);
    }
    for section in &diff.sections {
        out.push('\n');
        if let Some(heading) = &section.heading {
            let _ = writeln!(out, "{heading}");
        }
        for figure in &section.figures {
            let _ = writeln!(out, "{}", render_figure(figure));
        }
    }
    if !diff.free_lists.is_empty() {
        out.push('\n');
        for list in &diff.free_lists {
            let _ = writeln!(out, "{}", render_free_list(list));
        }
    }
    out
}

fn render_figure(figure: &FigureChange) -> String {
    let label = match figure.count {
        Some(count) => format!("{} {}", signed_plain(count.delta()), figure.label),
        None => figure.label.clone(),
    };
    // Product lines (`N arenas * SIZE bytes/arena`) say how the count moved; the others how
    // the value moved.
    let (shown, group) = match figure.count {
        Some(count) => (count, false),
        None => (figure.value, true),
    };
    match figure.layout {
        FigureLayout::Equals => format!(
            "{label:<LABEL_COLUMNS$}={:>VALUE_COLUMNS$}  {}",
            signed_grouped(figure.value.delta()),
            before_after(shown, figure.presence, group)
        ),
        FigureLayout::Colon { indent } => format!(
            "{:indent$}{label}: {}  {}",
            "",
            signed_plain(figure.value.delta()),
            before_after(shown, figure.presence, false),
            indent = indent.min(LABEL_COLUMNS)
        ),
    }
}

fn render_free_list(list: &FreeListChange) -> String {
    let label = format!(
        "{} free {} * {} bytes each",
        signed_plain(list.free.delta()),
        list.object,
        list.bytes_each
    );
    format!(
        "{label:>FREE_LIST_LABEL_COLUMNS$} ={:>VALUE_COLUMNS$}  {}",
        signed_grouped(list.bytes.delta()),
        before_after(list.free, list.presence, false)
    )
}

/// The size-class table: CPython's `class` and `size` columns (`%5u %6u`), then for each of
/// `num pools`, `blocks in use` and `avail blocks` three sub-columns sized to their contents.
fn render_size_classes(diff: &Diff, out: &mut String) {
    const GROUPS: [&str; 3] = ["num pools", "blocks in use", "avail blocks"];
    const SUBTITLES: [&str; 3] = ["before", "after", "change"];
    let cells: Vec<[String; 9]> = diff
        .size_classes
        .iter()
        .map(|row| {
            let mut cells: [String; 9] = Default::default();
            for (group, change) in [row.pools, row.blocks_in_use, row.avail_blocks]
                .into_iter()
                .enumerate()
            {
                cells[group * 3] = change.before.to_string();
                cells[group * 3 + 1] = change.after.to_string();
                cells[group * 3 + 2] = signed_plain(change.delta());
            }
            cells
        })
        .collect();
    let mut widths = [0usize; 9];
    for (column, width) in widths.iter_mut().enumerate() {
        *width = cells
            .iter()
            .map(|row| row[column].len())
            .chain([SUBTITLES[column % 3].len()])
            .max()
            .unwrap_or(0);
    }
    // A group's title is centred over its three sub-columns, which are widened if the title
    // is longer than they are together.
    for (group, title) in GROUPS.iter().enumerate() {
        let span: usize = widths[group * 3..group * 3 + 3].iter().sum::<usize>() + 4;
        if title.len() > span {
            widths[group * 3 + 2] += title.len() - span;
        }
    }
    let group_span = |group: usize| widths[group * 3..group * 3 + 3].iter().sum::<usize>() + 4;

    let mut titles = format!("{:13}", "");
    let mut subtitles = String::from("class   size ");
    let mut underline = String::from("-----   ---- ");
    for (group, title) in GROUPS.iter().enumerate() {
        let _ = write!(titles, "  {title:^width$}", width = group_span(group));
        let _ = write!(underline, "  {}", "-".repeat(group_span(group)));
        for (sub, subtitle) in SUBTITLES.iter().enumerate() {
            let width = widths[group * 3 + sub];
            let _ = write!(subtitles, "  {subtitle:>width$}");
        }
    }
    let _ = writeln!(out, "{}", titles.trim_end());
    let _ = writeln!(out, "{}", subtitles.trim_end());
    let _ = writeln!(out, "{underline}");
    for (row, row_cells) in diff.size_classes.iter().zip(&cells) {
        let mut line = format!("{:>5} {:>6} ", row.class, row.size);
        for (column, cell) in row_cells.iter().enumerate() {
            let _ = write!(line, "  {cell:>width$}", width = widths[column]);
        }
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_like_printone() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(20_971_520), "20,971,520");
        assert_eq!(signed_grouped(-1_234), "-1,234");
        assert_eq!(signed_grouped(15_997_008), "+15,997,008");
        assert_eq!(signed_grouped(0), "0");
        assert_eq!(signed_plain(-100_000), "-100000");
        assert_eq!(
            signed_grouped(-i128::from(u64::MAX)),
            "-18,446,744,073,709,551,615"
        );
    }
}
