//! The difference between two captures of the same process, and its headline figures.
//!
//! Only what changed is kept. Rows and lines are matched by what they describe (size class,
//! label, object), never by position, because CPython omits size classes without pools and a
//! class can gain or lose its last pool between two captures.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use super::model::{labels, Allocator, FigureLayout, SizeClass, Stats};

/// A number in the first capture and in the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The value in the first capture.
    pub before: u64,
    /// The value in the second capture.
    pub after: u64,
}

impl Change {
    /// `after - before`; i128 so that no pair of u64 can overflow it.
    pub fn delta(&self) -> i128 {
        i128::from(self.after) - i128::from(self.before)
    }

    /// Whether the value differs.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// Whether a line was in both captures or in one only (its value in the other counts as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Printed in both captures.
    Both,
    /// Printed in the first capture only.
    BeforeOnly,
    /// Printed in the second capture only.
    AfterOnly,
}

/// A size class whose pools or blocks changed. A class CPython did not print (no pools) counts
/// as all zeros, which is exactly what its absence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeClassChange {
    /// The size-class index.
    pub class: u64,
    /// The block size in bytes.
    pub size: u64,
    /// `num pools`.
    pub pools: Change,
    /// `blocks in use`.
    pub blocks_in_use: Change,
    /// `avail blocks`.
    pub avail_blocks: Change,
}

impl SizeClassChange {
    /// The change of bytes held by live objects of this class.
    pub fn bytes_in_use_delta(&self) -> i128 {
        self.blocks_in_use
            .delta()
            .saturating_mul(i128::from(self.size))
    }
}

/// A `label = value` line whose value or count changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FigureChange {
    /// The label without its leading count (see [`super::Figure::label`]).
    pub label: String,
    /// Which line with this label (0 for the first).
    pub occurrence: u32,
    /// The leading count of `N things * SIZE unit` lines.
    pub count: Option<Change>,
    /// The value after `=`.
    pub value: Change,
    /// Whether the line was printed in both captures.
    pub presence: Presence,
    /// How CPython laid the line out.
    pub layout: FigureLayout,
}

/// The changed figures of one paragraph of the capture, in printed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FigureSection {
    /// The paragraph's heading line, e.g. `arena map counts`, when it has one.
    pub heading: Option<String>,
    /// The changed figures.
    pub figures: Vec<FigureChange>,
}

/// A free list whose length changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeListChange {
    /// `PyDictObjects`, `3-sized PyTupleObjects`...
    pub object: String,
    /// Size of each object in bytes.
    pub bytes_each: u64,
    /// Objects on the free list.
    pub free: Change,
    /// Bytes on the free list.
    pub bytes: Change,
    /// Whether the line was printed in both captures.
    pub presence: Presence,
}

/// What changed between two captures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// The allocator of the second capture.
    pub allocator: Allocator,
    /// `Small block threshold` of the second capture (of the first when the second has none).
    pub small_block_threshold: Option<u64>,
    /// Reasons to distrust the comparison, e.g. captures from differently configured processes.
    pub warnings: Vec<String>,
    /// Changed size classes, by class index.
    pub size_classes: Vec<SizeClassChange>,
    /// Changed figures, grouped by paragraph in printed order.
    pub sections: Vec<FigureSection>,
    /// Changed free lists, in printed order.
    pub free_lists: Vec<FreeListChange>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.size_classes.is_empty() && self.sections.is_empty() && self.free_lists.is_empty()
    }

    /// All changed figures, in printed order.
    pub fn figures(&self) -> impl Iterator<Item = &FigureChange> {
        self.sections
            .iter()
            .flat_map(|section| section.figures.iter())
    }

    /// The first changed figure with this label.
    pub fn figure(&self, label: &str) -> Option<&FigureChange> {
        self.figures().find(|figure| figure.label == label)
    }
}

/// Pairs the items of two lists that have the same key, the n-th with the n-th when a key
/// repeats. The order is the second list's, then the first list's leftovers in their order.
fn pair_by_key<'a, T, K: Eq + Hash>(
    before: &'a [T],
    after: &'a [T],
    key: impl Fn(&T) -> K,
) -> Vec<(Option<&'a T>, Option<&'a T>)> {
    let mut unmatched_before: HashMap<K, VecDeque<usize>> = HashMap::new();
    for (index, item) in before.iter().enumerate() {
        unmatched_before
            .entry(key(item))
            .or_default()
            .push_back(index);
    }
    let mut used = vec![false; before.len()];
    let mut pairs = Vec::with_capacity(after.len());
    for item in after {
        let partner = unmatched_before
            .get_mut(&key(item))
            .and_then(VecDeque::pop_front);
        if let Some(index) = partner {
            used[index] = true;
        }
        pairs.push((partner.map(|index| &before[index]), Some(item)));
    }
    for (index, item) in before.iter().enumerate() {
        if !used[index] {
            pairs.push((Some(item), None));
        }
    }
    pairs
}

fn presence<T>(before: Option<T>, after: Option<T>) -> Presence {
    match (before.is_some(), after.is_some()) {
        (true, false) => Presence::BeforeOnly,
        (false, true) => Presence::AfterOnly,
        _ => Presence::Both,
    }
}

/// Compares two captures, normally of the same process, `before` taken first.
pub fn diff(before: &Stats, after: &Stats) -> Diff {
    Diff {
        allocator: after.allocator,
        small_block_threshold: after.small_block_threshold.or(before.small_block_threshold),
        warnings: mismatch_warnings(before, after),
        size_classes: changed_size_classes(before, after),
        sections: changed_figures(before, after),
        free_lists: changed_free_lists(before, after),
    }
}

/// Differences that mean the two captures are not of one interpreter, where a diff is
/// meaningless; the diff is still made, the caller decides what to do.
fn mismatch_warnings(before: &Stats, after: &Stats) -> Vec<String> {
    let mut warnings = Vec::new();
    if before.allocator != after.allocator {
        warnings.push(format!(
            "the captures come from different allocators ({:?} then {:?})",
            before.allocator, after.allocator
        ));
    }
    if (before.small_block_threshold, before.size_class_count)
        != (after.small_block_threshold, after.size_class_count)
    {
        warnings.push(format!(
            "the captures have different headers (small block threshold {:?} in {:?} size \
             classes, then {:?} in {:?}): not the same interpreter",
            before.small_block_threshold,
            before.size_class_count,
            after.small_block_threshold,
            after.size_class_count
        ));
    }
    warnings
}

fn changed_size_classes(before: &Stats, after: &Stats) -> Vec<SizeClassChange> {
    let mut changes: Vec<SizeClassChange> =
        pair_by_key(&before.size_classes, &after.size_classes, |row| {
            (row.class, row.size)
        })
        .into_iter()
        .filter_map(|(old, new)| {
            let (class, size) = old.or(new).map(|row| (row.class, row.size))?;
            // A row CPython did not print is a class without pools: all zeros.
            let field = |get: fn(&SizeClass) -> u64| Change {
                before: old.map_or(0, get),
                after: new.map_or(0, get),
            };
            let change = SizeClassChange {
                class,
                size,
                pools: field(|row| row.pools),
                blocks_in_use: field(|row| row.blocks_in_use),
                avail_blocks: field(|row| row.avail_blocks),
            };
            (change.pools.changed()
                || change.blocks_in_use.changed()
                || change.avail_blocks.changed())
            .then_some(change)
        })
        .collect();
    changes.sort_by_key(|change| (change.class, change.size));
    changes
}

fn changed_figures(before: &Stats, after: &Stats) -> Vec<FigureSection> {
    let mut sections: Vec<FigureSection> = Vec::new();
    // The paragraph (and whether it is numbered in the second capture or the first) of the
    // section being filled, so that consecutive changes of one paragraph share a section.
    let mut current_paragraph: Option<(bool, u32)> = None;
    for (old, new) in pair_by_key(&before.figures, &after.figures, |figure| {
        (figure.label.clone(), figure.occurrence)
    }) {
        let Some(template) = new.or(old) else {
            continue;
        };
        let value = Change {
            before: old.map_or(0, |figure| figure.value),
            after: new.map_or(0, |figure| figure.value),
        };
        let count = match (old.and_then(|f| f.count), new.and_then(|f| f.count)) {
            (None, None) => None,
            (before_count, after_count) => Some(Change {
                before: before_count.unwrap_or(0),
                after: after_count.unwrap_or(0),
            }),
        };
        let figure_presence = presence(old, new);
        let changed = value.changed()
            || count.is_some_and(|count| count.changed())
            || figure_presence != Presence::Both;
        if !changed {
            continue;
        }
        let numbered_in_after = new.is_some();
        let paragraph_key = (numbered_in_after, template.paragraph);
        if current_paragraph != Some(paragraph_key) {
            let source = if numbered_in_after { after } else { before };
            sections.push(FigureSection {
                heading: source
                    .paragraph_heading(template.paragraph)
                    .map(str::to_string),
                figures: Vec::new(),
            });
            current_paragraph = Some(paragraph_key);
        }
        if let Some(section) = sections.last_mut() {
            section.figures.push(FigureChange {
                label: template.label.clone(),
                occurrence: template.occurrence,
                count,
                value,
                presence: figure_presence,
                layout: template.layout,
            });
        }
    }
    sections
}

fn changed_free_lists(before: &Stats, after: &Stats) -> Vec<FreeListChange> {
    pair_by_key(&before.free_lists, &after.free_lists, |list| {
        (list.object.clone(), list.bytes_each)
    })
    .into_iter()
    .filter_map(|(old, new)| {
        let template = new.or(old)?;
        let change = FreeListChange {
            object: template.object.clone(),
            bytes_each: template.bytes_each,
            free: Change {
                before: old.map_or(0, |list| list.free),
                after: new.map_or(0, |list| list.free),
            },
            bytes: Change {
                before: old.map_or(0, |list| list.bytes),
                after: new.map_or(0, |list| list.bytes),
            },
            presence: presence(old, new),
        };
        (change.free.changed() || change.bytes.changed() || change.presence != Presence::Both)
            .then_some(change)
    })
    .collect()
}

/// The headline figures of a [`Diff`], for one line of output. `None` where the capture does
/// not print that figure (e.g. arenas under mimalloc); unchanged figures count as 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The allocator of the second capture.
    pub allocator: Allocator,
    /// Change of bytes handed out to live objects by the allocator: pymalloc's
    /// `# bytes in allocated blocks`, mimalloc's `Allocated Bytes`.
    pub allocated_bytes: Option<i128>,
    /// Change of bytes in free blocks of partly used pools (pymalloc).
    pub available_bytes: Option<i128>,
    /// Change of `# arenas allocated current` (pymalloc).
    pub arenas: Option<i128>,
    /// Change of the memory the allocator holds from the OS: pymalloc's arenas times arena
    /// size, mimalloc's `Bytes Committed`.
    pub allocator_bytes: Option<i128>,
    /// Change of bytes held on all type free lists.
    pub free_list_bytes: i128,
    /// How many size classes changed.
    pub size_classes_changed: usize,
    /// The size class whose bytes in use changed most (by magnitude): (block size, change of
    /// blocks in use).
    pub largest_size_class_change: Option<(u64, i128)>,
}

/// The change of the figure `label`: its delta when it changed, 0 when it did not change but
/// the allocator prints it (`printed`), `None` when the allocator never prints it.
fn figure_delta(diff: &Diff, label: &str, printed: bool) -> Option<i128> {
    let found = diff.figure(label).map(|figure| figure.value.delta());
    found.or(printed.then_some(0))
}

/// The few headline figures of a diff.
pub fn summary(diff: &Diff) -> Summary {
    let pymalloc = diff.allocator == Allocator::Pymalloc;
    let mimalloc = diff.allocator == Allocator::Mimalloc;
    let allocated_bytes = if mimalloc {
        figure_delta(diff, labels::MIMALLOC_ALLOCATED_BYTES, true)
    } else {
        figure_delta(diff, labels::BYTES_IN_ALLOCATED_BLOCKS, pymalloc)
    };
    let allocator_bytes = if mimalloc {
        figure_delta(diff, labels::MIMALLOC_BYTES_COMMITTED, true)
    } else {
        let arenas_times_size = diff
            .figures()
            .find(|figure| figure.label.starts_with(labels::ARENAS_TIMES_SIZE_PREFIX))
            .map(|figure| figure.value.delta());
        arenas_times_size.or(pymalloc.then_some(0))
    };
    Summary {
        allocator: diff.allocator,
        allocated_bytes,
        available_bytes: figure_delta(diff, labels::BYTES_IN_AVAILABLE_BLOCKS, pymalloc),
        arenas: figure_delta(diff, labels::ARENAS_ALLOCATED_CURRENT, pymalloc),
        allocator_bytes,
        free_list_bytes: diff
            .free_lists
            .iter()
            .fold(0i128, |sum, list| sum.saturating_add(list.bytes.delta())),
        size_classes_changed: diff.size_classes.len(),
        largest_size_class_change: diff
            .size_classes
            .iter()
            .max_by_key(|change| change.bytes_in_use_delta().unsigned_abs())
            .map(|change| (change.size, change.blocks_in_use.delta())),
    }
}

impl fmt::Display for Summary {
    /// One line, e.g. `pymalloc: allocated blocks +15,997,008 B, available blocks +29,232 B,
    /// arenas +16 (+16,777,216 B), free lists +22,176 B, 31 size classes changed (most:
    /// 64-byte blocks +200,275)`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        use super::render::signed_grouped;
        let allocator = match self.allocator {
            Allocator::Pymalloc => "pymalloc",
            Allocator::Mimalloc => "mimalloc",
            Allocator::NotReported => "system malloc (no allocator figures)",
            Allocator::Unknown => "unknown allocator",
        };
        let mut parts = Vec::new();
        if let Some(bytes) = self.allocated_bytes {
            parts.push(format!("allocated blocks {} B", signed_grouped(bytes)));
        }
        if let Some(bytes) = self.available_bytes {
            parts.push(format!("available blocks {} B", signed_grouped(bytes)));
        }
        match (self.arenas, self.allocator_bytes) {
            (Some(arenas), Some(bytes)) => parts.push(format!(
                "arenas {} ({} B)",
                signed_grouped(arenas),
                signed_grouped(bytes)
            )),
            (Some(arenas), None) => parts.push(format!("arenas {}", signed_grouped(arenas))),
            (None, Some(bytes)) => {
                parts.push(format!("committed {} B", signed_grouped(bytes)));
            }
            (None, None) => {}
        }
        parts.push(format!(
            "free lists {} B",
            signed_grouped(self.free_list_bytes)
        ));
        if self.size_classes_changed > 0 {
            let mut classes = format!("{} size classes changed", self.size_classes_changed);
            if let Some((size, blocks)) = self.largest_size_class_change {
                classes.push_str(&format!(
                    " (most: {size}-byte blocks {})",
                    signed_grouped(blocks)
                ));
            }
            parts.push(classes);
        }
        write!(formatter, "{allocator}: {}", parts.join(", "))
    }
}
