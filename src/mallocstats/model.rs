//! The data model of one `sys._debugmallocstats()` capture.
//!
//! CPython prints, in this order (3.6 to 3.13 seen; see fixtures/mallocstats/):
//!
//! 1. the object allocator section, whose shape depends on the allocator:
//!    - pymalloc: a header (`Small block threshold = 512, in 32 size classes.`), the size-class
//!      table, the arena figures, the pool/block figures and, from 3.10, the arena map figures;
//!    - mimalloc (3.13+): the same header, then `label = value` and `    label: value` lines;
//!    - the system malloc (`PYTHONMALLOC=malloc`): nothing at all;
//! 2. one line per type free list (`8 free PyDictObjects * 48 bytes each = 384`); which types
//!    appear depends on the version.
//!
//! Every line is kept, classified, in [`Stats::lines`], so a line this module does not know (a
//! future version's) is never lost and the capture can be printed back exactly.

use serde::{Deserialize, Serialize};

/// Labels of the figures the summary and the tests look up. They are CPython's own texts.
pub mod labels {
    /// pymalloc: bytes handed out to live objects.
    pub const BYTES_IN_ALLOCATED_BLOCKS: &str = "# bytes in allocated blocks";
    /// pymalloc: bytes in free blocks of pools that are partly in use.
    pub const BYTES_IN_AVAILABLE_BLOCKS: &str = "# bytes in available blocks";
    /// pymalloc: arenas currently held from the OS.
    pub const ARENAS_ALLOCATED_CURRENT: &str = "# arenas allocated current";
    /// pymalloc: arenas ever allocated.
    pub const ARENAS_ALLOCATED_TOTAL: &str = "# arenas allocated total";
    /// pymalloc: the start of the label of `N arenas * SIZE bytes/arena = TOTAL`; the rest of the
    /// label carries the arena size, which differs between versions.
    pub const ARENAS_TIMES_SIZE_PREFIX: &str = "arenas * ";
    /// pymalloc: the start of the label of `N unused pools * SIZE bytes = TOTAL`.
    pub const UNUSED_POOLS_TIMES_SIZE_PREFIX: &str = "unused pools * ";
    /// mimalloc: bytes handed out to live objects.
    pub const MIMALLOC_ALLOCATED_BYTES: &str = "Allocated Bytes";
    /// mimalloc: bytes committed from the OS.
    pub const MIMALLOC_BYTES_COMMITTED: &str = "Bytes Committed";
    /// mimalloc: a label only mimalloc prints, used to recognise its section.
    pub const MIMALLOC_MEDIUM_BLOCK_THRESHOLD: &str = "Medium block threshold";
    /// mimalloc: a label only mimalloc prints, used to recognise its section.
    pub const MIMALLOC_ALLOCATED_BLOCKS: &str = "Allocated Blocks";
}

/// Which object allocator printed the allocator section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocator {
    /// CPython's small-object allocator (the default of every release build before 3.13t).
    Pymalloc,
    /// mimalloc: free-threaded 3.13+ builds, or `PYTHONMALLOC=mimalloc`.
    Mimalloc,
    /// No allocator section at all: objects come from the system malloc (`PYTHONMALLOC=malloc`
    /// or `malloc_debug`, or a build `--without-pymalloc`); only the free lists are printed.
    NotReported,
    /// A header line but nothing telling which allocator followed it (a truncated capture).
    Unknown,
}

/// One parsed `sys._debugmallocstats()` capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Which allocator printed the allocator section.
    pub allocator: Allocator,
    /// `N` of `Small block threshold = N, in M size classes.`: requests up to N bytes are served
    /// by the small-object allocator.
    pub small_block_threshold: Option<u64>,
    /// `M` of the same header: how many size classes exist (pymalloc prints only those in use).
    pub size_class_count: Option<u64>,
    /// pymalloc's size-class table, in printed order. Classes without pools are not printed
    /// by CPython, so a class missing here has no pools, no blocks in use and none available.
    pub size_classes: Vec<SizeClass>,
    /// Every `label = value` and `label: value` line other than the free lists, in order.
    pub figures: Vec<Figure>,
    /// The per-type free lists, in printed order.
    pub free_lists: Vec<FreeList>,
    /// Every input line in order, classified; the index inside a kind points into the vectors
    /// above. Joining the texts with newlines gives the capture back.
    pub lines: Vec<Line>,
}

/// One row of pymalloc's size-class table:
/// `class   size   num pools   blocks in use  avail blocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeClass {
    /// The size-class index.
    pub class: u64,
    /// The block size of this class in bytes.
    pub size: u64,
    /// Pools carved into blocks of this size.
    pub pools: u64,
    /// Blocks holding live objects.
    pub blocks_in_use: u64,
    /// Free blocks in those pools, ready for reuse.
    pub avail_blocks: u64,
}

impl SizeClass {
    /// Bytes held by live objects of this class.
    pub fn bytes_in_use(&self) -> u128 {
        u128::from(self.blocks_in_use) * u128::from(self.size)
    }
}

/// How a figure line is laid out, so that a changed figure can be printed the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureLayout {
    /// `label = value` (CPython's `printone`: the label padded to 35 columns, then `=` and the
    /// value with thousands separators right-aligned in 21 columns).
    Equals,
    /// `label: value` indented by `indent` spaces, the value without separators (mimalloc).
    Colon {
        /// Leading spaces before the label.
        indent: usize,
    },
}

/// One `label = value` (or `label: value`) line.
///
/// Lines such as `4 arenas * 1048576 bytes/arena = 4,194,304` carry a count before the label;
/// the count is split off so that the label stays the same when the count changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figure {
    /// The label as printed, without a leading count: `# bytes in allocated blocks`,
    /// `arenas * 1048576 bytes/arena`, `Total`, `Allocated Bytes`.
    pub label: String,
    /// The leading count of `N things * SIZE unit` labels.
    pub count: Option<u64>,
    /// The value after the separator.
    pub value: u64,
    /// 0 for the first figure with this label, 1 for the second...: `Total` is printed twice
    /// from 3.10 on, once for the arenas and once for the arena map.
    pub occurrence: u32,
    /// Which blank-line separated paragraph of the capture the line is in, counting from 0.
    pub paragraph: u32,
    /// How the line was laid out.
    pub layout: FigureLayout,
}

/// One free-list line: `8 free PyDictObjects * 48 bytes each = 384`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeList {
    /// What the list holds, as printed between `free ` and ` *`: `PyDictObjects`,
    /// `3-sized PyTupleObjects`.
    pub object: String,
    /// Objects on the free list.
    pub free: u64,
    /// Size of each object in bytes.
    pub bytes_each: u64,
    /// `free * bytes_each`, as printed.
    pub bytes: u64,
}

impl FreeList {
    /// The tuple length of a `N-sized PyTupleObjects` list, `None` for other objects.
    pub fn tuple_length(&self) -> Option<u64> {
        let (length, rest) = self.object.split_once("-sized ")?;
        if rest.starts_with("PyTupleObject") {
            length.parse().ok()
        } else {
            None
        }
    }
}

/// One input line, with what it was understood as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The text, without its line ending.
    pub text: String,
    /// The paragraph (blank-line separated group, counting from 0) the line belongs to; blank
    /// lines belong to the paragraph before them.
    pub paragraph: u32,
    /// What the line is.
    pub kind: LineKind,
}

/// What a line of the capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum LineKind {
    /// An empty or all-space line.
    Blank,
    /// `Small block threshold = N, in M size classes.`
    Header,
    /// The size-class table's column titles or their underlining.
    TableHeading,
    /// A size-class row: index into [`Stats::size_classes`].
    SizeClass(usize),
    /// A figure: index into [`Stats::figures`].
    Figure(usize),
    /// A free list: index into [`Stats::free_lists`].
    FreeList(usize),
    /// Anything else: a heading such as `arena map counts`, or a line this module does not know.
    Text,
}

impl Stats {
    /// The value of the first figure with this label.
    pub fn figure(&self, label: &str) -> Option<u64> {
        self.figures
            .iter()
            .find(|figure| figure.label == label)
            .map(|figure| figure.value)
    }

    /// The first figure whose label starts with `prefix` (for labels that embed a size).
    pub fn figure_starting_with(&self, prefix: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|figure| figure.label.starts_with(prefix))
    }

    /// The size-class row with this index, if CPython printed it.
    pub fn size_class(&self, class: u64) -> Option<&SizeClass> {
        self.size_classes.iter().find(|row| row.class == class)
    }

    /// The free list of this object (`PyFloatObjects`, `2-sized PyTupleObjects`).
    pub fn free_list(&self, object: &str) -> Option<&FreeList> {
        self.free_lists.iter().find(|list| list.object == object)
    }

    /// The text of the line that opens `paragraph`, if that line is plain text rather than a
    /// figure: such a line is a heading, e.g. `arena map counts`.
    pub fn paragraph_heading(&self, paragraph: u32) -> Option<&str> {
        let first = self
            .lines
            .iter()
            .find(|line| line.paragraph == paragraph && line.kind != LineKind::Blank)?;
        (first.kind == LineKind::Text).then(|| first.text.trim())
    }

    /// The capture as it was parsed, one line per input line.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }
}
