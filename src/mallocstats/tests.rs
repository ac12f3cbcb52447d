//! Tests on real captures of every interpreter on the development machine (see
//! fixtures/mallocstats/README.md for how they were made) and a fuzz-style robustness check.

use super::*;

/// One before/after capture pair, with figures read from the files by hand and what the
/// workload between the captures must have cost.
struct Capture {
    label: &'static str,
    before: &'static str,
    after: &'static str,
    /// Size-class rows printed in the first capture.
    size_class_rows: usize,
    /// `# bytes in allocated blocks` before and after.
    allocated_bytes: (u64, u64),
    /// `# arenas allocated current` before and after.
    arenas: (u64, u64),
    /// The arena and pool sizes in the `N arenas * SIZE` and `N unused pools * SIZE` labels.
    arena_size: u64,
    pool_size: u64,
    /// Block sizes of a 2-tuple and of `str(i)` for i < 100,000 in this version (an int is 32
    /// everywhere): the tuple's GC header shrank in 3.8 and the str header in 3.12.
    tuple_block: u64,
    str_block: u64,
    /// The free lists other than tuples, in printed order.
    free_list_objects: &'static [&'static str],
    /// Lengths N of the `N-sized PyTupleObjects` lists.
    tuple_free_lists: u64,
    /// The arena map's `Total` (3.10+; its radix tree is smaller in 3.10), `None` before.
    arena_map_total: Option<u64>,
}

macro_rules! fixture {
    ($label:literal) => {
        (
            include_str!(concat!(
                "../../fixtures/mallocstats/",
                $label,
                "-before.txt"
            )),
            include_str!(concat!("../../fixtures/mallocstats/", $label, "-after.txt")),
        )
    };
}

const FREE_LISTS_3_6: &[&str] = &[
    "PyCFunctionObjects",
    "PyDictObjects",
    "PyFloatObjects",
    "PyFrameObjects",
    "PyListObjects",
    "PyMethodObjects",
];
const FREE_LISTS_3_9: &[&str] = &[
    "PyDictObjects",
    "PyFloatObjects",
    "PyFrameObjects",
    "PyListObjects",
];
const FREE_LISTS_3_11: &[&str] = &["PyDictObjects", "PyFloatObjects", "PyListObjects"];
const FREE_LISTS_3_13: &[&str] = &[
    "PyDictObjects",
    "PyDictKeysObjects",
    "PyFloatObjects",
    "PyListObjects",
];

fn pymalloc_captures() -> Vec<Capture> {
    let capture = |label,
                   (before, after): (&'static str, &'static str),
                   size_class_rows,
                   allocated_bytes,
                   arenas,
                   (arena_size, pool_size),
                   (tuple_block, str_block),
                   free_list_objects,
                   tuple_free_lists| Capture {
        label,
        before,
        after,
        size_class_rows,
        allocated_bytes,
        arenas,
        arena_size,
        pool_size,
        tuple_block,
        str_block,
        free_list_objects,
        tuple_free_lists,
        arena_map_total: match (pool_size, label) {
            (4096, _) => None,
            (_, "3.10") => Some(18_432),
            _ => Some(655_360),
        },
    };
    const SMALL_ARENAS: (u64, u64) = (262_144, 4096);
    const BIG_ARENAS: (u64, u64) = (1_048_576, 16_384);
    vec![
        capture(
            "3.6",
            fixture!("3.6"),
            32,
            (1_513_952, 19_139_248),
            (7, 75),
            SMALL_ARENAS,
            (80, 64),
            FREE_LISTS_3_6,
            19,
        ),
        capture(
            "3.7",
            fixture!("3.7"),
            32,
            (1_320_784, 18_945_216),
            (6, 75),
            SMALL_ARENAS,
            (80, 64),
            FREE_LISTS_3_6,
            19,
        ),
        capture(
            "3.8",
            fixture!("3.8"),
            32,
            (1_312_848, 17_319_920),
            (6, 68),
            SMALL_ARENAS,
            (64, 64),
            FREE_LISTS_3_6,
            19,
        ),
        capture(
            "3.9",
            fixture!("3.9"),
            32,
            (1_296_816, 17_304_560),
            (6, 68),
            SMALL_ARENAS,
            (64, 64),
            FREE_LISTS_3_9,
            19,
        ),
        capture(
            "3.10",
            fixture!("3.10"),
            32,
            (1_362_864, 17_370_560),
            (2, 18),
            BIG_ARENAS,
            (64, 64),
            FREE_LISTS_3_9,
            19,
        ),
        capture(
            "3.11",
            fixture!("3.11"),
            32,
            (3_499_696, 19_496_784),
            (4, 20),
            BIG_ARENAS,
            (64, 64),
            FREE_LISTS_3_11,
            20,
        ),
        capture(
            "debian-3.11",
            fixture!("debian-3.11"),
            29,
            (830_640, 16_841_616),
            (2, 17),
            BIG_ARENAS,
            (64, 64),
            FREE_LISTS_3_11,
            20,
        ),
        capture(
            "3.12",
            fixture!("3.12"),
            32,
            (802_848, 15_215_696),
            (2, 16),
            BIG_ARENAS,
            (64, 48),
            FREE_LISTS_3_11,
            20,
        ),
        capture(
            "3.13",
            fixture!("3.13"),
            32,
            (1_375_024, 15_791_456),
            (2, 16),
            BIG_ARENAS,
            (64, 48),
            FREE_LISTS_3_13,
            20,
        ),
    ]
}

/// Every capture file, pymalloc or not.
fn all_texts() -> Vec<(&'static str, &'static str)> {
    let mut texts = Vec::new();
    for capture in pymalloc_captures() {
        texts.push((capture.label, capture.before));
        texts.push((capture.label, capture.after));
    }
    let (before, after) = fixture!("3.12-malloc");
    texts.extend([("3.12-malloc", before), ("3.12-malloc", after)]);
    let (before, after) = fixture!("3.13-mimalloc");
    texts.extend([("3.13-mimalloc", before), ("3.13-mimalloc", after)]);
    texts
}

/// The workload kept 100,000 2-tuples `(i, str(i))` alive; ints 0..=256 are preallocated.
const KEPT_TUPLES: u64 = 100_000;
const KEPT_INTS: u64 = 100_000 - 257;
const INT_BLOCK: u64 = 32;

#[test]
fn parses_every_pymalloc_capture() {
    for capture in pymalloc_captures() {
        let label = capture.label;
        for (text, allocated, arenas) in [
            (capture.before, capture.allocated_bytes.0, capture.arenas.0),
            (capture.after, capture.allocated_bytes.1, capture.arenas.1),
        ] {
            let stats = parse(text).unwrap_or_else(|error| panic!("{label}: {error}"));
            assert_eq!(stats.allocator, Allocator::Pymalloc, "{label}");
            assert_eq!(stats.small_block_threshold, Some(512), "{label}");
            assert_eq!(stats.size_class_count, Some(32), "{label}");
            assert_eq!(
                stats.figure(labels::BYTES_IN_ALLOCATED_BLOCKS),
                Some(allocated),
                "{label}"
            );
            assert_eq!(
                stats.figure(labels::ARENAS_ALLOCATED_CURRENT),
                Some(arenas),
                "{label}"
            );
            // No line of a real capture may be left unclassified.
            let unknown: Vec<&str> = stats
                .lines
                .iter()
                .filter(|line| line.kind == LineKind::Text)
                .map(|line| line.text.as_str())
                .filter(|text| *text != "arena map counts")
                .collect();
            assert!(unknown.is_empty(), "{label}: not understood: {unknown:?}");
            assert_eq!(stats.to_text(), text, "{label}: lines lost or changed");

            // CPython computes these two figures from the table; checking them ties the table
            // and the figures together.
            let in_use: u128 = stats.size_classes.iter().map(SizeClass::bytes_in_use).sum();
            let available: u128 = stats
                .size_classes
                .iter()
                .map(|row| u128::from(row.avail_blocks) * u128::from(row.size))
                .sum();
            assert_eq!(in_use, u128::from(allocated), "{label}");
            assert_eq!(
                Some(available),
                stats
                    .figure(labels::BYTES_IN_AVAILABLE_BLOCKS)
                    .map(u128::from),
                "{label}"
            );
            for row in &stats.size_classes {
                assert_eq!(
                    row.size,
                    (row.class + 1) * 16,
                    "{label}: class {}",
                    row.class
                );
            }

            let arenas_line = stats
                .figure_starting_with(labels::ARENAS_TIMES_SIZE_PREFIX)
                .unwrap_or_else(|| panic!("{label}: no arenas * size line"));
            assert_eq!(
                arenas_line.label,
                format!("arenas * {} bytes/arena", capture.arena_size)
            );
            assert_eq!(arenas_line.count, Some(arenas), "{label}");
            assert_eq!(arenas_line.value, arenas * capture.arena_size, "{label}");
            let pools_line = stats
                .figure_starting_with(labels::UNUSED_POOLS_TIMES_SIZE_PREFIX)
                .unwrap_or_else(|| panic!("{label}: no unused pools line"));
            assert_eq!(
                pools_line.label,
                format!("unused pools * {} bytes", capture.pool_size)
            );
            // The block summary adds up to its `Total`, which is all the arenas' memory.
            let block_paragraph = pools_line.paragraph;
            let parts: u64 = stats
                .figures
                .iter()
                .filter(|figure| figure.paragraph == block_paragraph && figure.label != "Total")
                .map(|figure| figure.value)
                .sum();
            let total = stats
                .figures
                .iter()
                .find(|figure| figure.paragraph == block_paragraph && figure.label == "Total")
                .map(|figure| figure.value);
            assert_eq!(Some(parts), total, "{label}");
            assert_eq!(total, Some(arenas * capture.arena_size), "{label}");

            // 3.10+ prints a second `Total`, for the arena map, under its own heading.
            let totals: Vec<&Figure> = stats
                .figures
                .iter()
                .filter(|figure| figure.label == "Total")
                .collect();
            let map_mid = stats
                .figures
                .iter()
                .find(|figure| figure.label == "# arena map mid nodes");
            if let Some(map_total) = capture.arena_map_total {
                assert_eq!(totals.len(), 2, "{label}");
                assert_eq!((totals[0].occurrence, totals[1].occurrence), (0, 1));
                assert_eq!(totals[1].value, map_total, "{label}: arena map total");
                let map_mid = map_mid.unwrap_or_else(|| panic!("{label}: no arena map"));
                assert_eq!(
                    stats.paragraph_heading(map_mid.paragraph),
                    Some("arena map counts")
                );
            } else {
                assert_eq!(totals.len(), 1, "{label}");
                assert!(map_mid.is_none(), "{label}");
            }

            let other_lists: Vec<&str> = stats
                .free_lists
                .iter()
                .filter(|list| list.tuple_length().is_none())
                .map(|list| list.object.as_str())
                .collect();
            assert_eq!(other_lists, capture.free_list_objects, "{label}");
            let tuple_lengths: Vec<u64> = stats
                .free_lists
                .iter()
                .filter_map(FreeList::tuple_length)
                .collect();
            assert_eq!(
                tuple_lengths,
                (1..=capture.tuple_free_lists).collect::<Vec<_>>(),
                "{label}"
            );
            for list in &stats.free_lists {
                assert_eq!(list.bytes, list.free * list.bytes_each, "{label}: {list:?}");
            }
        }
        let before = parse(capture.before).unwrap();
        assert_eq!(
            before.size_classes.len(),
            capture.size_class_rows,
            "{label}"
        );
    }
}

#[test]
fn reads_concrete_rows() {
    // Rows copied from the files.
    let before = parse(fixture!("3.11").0).unwrap();
    assert_eq!(
        before.size_class(3),
        Some(&SizeClass {
            class: 3,
            size: 64,
            pools: 50,
            blocks_in_use: 12617,
            avail_blocks: 133
        })
    );
    let after = parse(fixture!("3.6").1).unwrap();
    assert_eq!(
        after.size_class(4),
        Some(&SizeClass {
            class: 4,
            size: 80,
            pools: 2098,
            blocks_in_use: 104_850,
            avail_blocks: 50
        })
    );
    assert_eq!(
        after.free_list("PyFrameObjects"),
        Some(&FreeList {
            object: "PyFrameObjects".to_string(),
            free: 0,
            bytes_each: 384,
            bytes: 0
        })
    );
    // Debian's 3.11 skips classes without pools: 23, 28 and 30 here.
    let debian = parse(fixture!("debian-3.11").0).unwrap();
    let classes: Vec<u64> = debian.size_classes.iter().map(|row| row.class).collect();
    assert!(!classes.contains(&23) && !classes.contains(&28) && !classes.contains(&30));
    assert_eq!(
        debian.size_class(12).map(|row| row.blocks_in_use),
        Some(114)
    );
}

#[test]
fn diff_of_each_pymalloc_capture_shows_the_workload() {
    for capture in pymalloc_captures() {
        let label = capture.label;
        let before = parse(capture.before).unwrap();
        let after = parse(capture.after).unwrap();
        let changes = diff(&before, &after);
        assert!(
            changes.warnings.is_empty(),
            "{label}: {:?}",
            changes.warnings
        );
        let rendered = render_diff(&changes);

        // Allocated bytes grew by what the kept ints, tuples and strs need, within 2%.
        let expected =
            KEPT_INTS * INT_BLOCK + KEPT_TUPLES * (capture.tuple_block + capture.str_block);
        let allocated = changes
            .figure(labels::BYTES_IN_ALLOCATED_BLOCKS)
            .unwrap_or_else(|| panic!("{label}: allocated bytes unchanged?\n{rendered}"));
        let delta = allocated.value.delta();
        assert_eq!(
            delta,
            i128::from(capture.allocated_bytes.1) - i128::from(capture.allocated_bytes.0)
        );
        let expected = i128::from(expected);
        assert!(
            (delta - expected).abs() * 50 < expected,
            "{label}: allocated blocks grew by {delta}, expected about {expected}"
        );
        assert!(
            rendered.contains(&format!(
                "# bytes in allocated blocks        ={:>21}  (",
                signed_grouped(delta)
            )),
            "{label}:\n{rendered}"
        );

        // The size classes of ints, tuples and strs each gained about 100,000 blocks per kept
        // object of that size.
        for size in [INT_BLOCK, capture.tuple_block, capture.str_block] {
            let kept = [INT_BLOCK, capture.tuple_block, capture.str_block]
                .iter()
                .filter(|&&block| block == size)
                .count() as i128;
            let row = changes
                .size_classes
                .iter()
                .find(|row| row.size == size)
                .unwrap_or_else(|| panic!("{label}: no change in the {size}-byte class"));
            let grown = row.blocks_in_use.delta();
            assert!(
                grown > kept * 99_000 && grown < kept * 101_000,
                "{label}: {size}-byte class grew by {grown} blocks"
            );
            let line_start = format!("{:>5} {:>6}   ", row.class, size);
            let line = rendered
                .lines()
                .find(|line| line.starts_with(&line_start))
                .unwrap_or_else(|| panic!("{label}: no row for {size}\n{rendered}"));
            let cells: Vec<&str> = line.split_whitespace().collect();
            // class, size, then before/after/change of pools, blocks in use, avail blocks.
            assert_eq!(
                cells[6],
                row.blocks_in_use.after.to_string(),
                "{label}: {line}"
            );
            assert_eq!(cells[7], format!("+{grown}"), "{label}: {line}");
        }

        // The arenas grew; the dropped 3-tuples, lists, dicts and floats filled their lists.
        let arenas = changes.figure(labels::ARENAS_ALLOCATED_CURRENT).unwrap();
        assert_eq!(
            arenas.value,
            Change {
                before: capture.arenas.0,
                after: capture.arenas.1
            }
        );
        let triples = changes
            .free_lists
            .iter()
            .find(|list| list.object == "3-sized PyTupleObjects")
            .unwrap_or_else(|| panic!("{label}: 3-tuple free list unchanged\n{rendered}"));
        assert_eq!(triples.free.after, 200, "{label}");
        assert!(
            rendered.contains(&format!(
                "+{} free 3-sized PyTupleObjects * 48 bytes each =",
                triples.free.delta()
            )),
            "{label}:\n{rendered}"
        );
        assert!(rendered.contains(&format!("({} -> 200)\n", triples.free.before)));

        // Only changed lines: the first capture's `# arenas reclaimed` is printed only when it
        // moved, and no size-class row shows three zero changes.
        let reclaimed_moved =
            before.figure("# arenas reclaimed") != after.figure("# arenas reclaimed");
        assert_eq!(
            rendered.contains("# arenas reclaimed"),
            reclaimed_moved,
            "{label}"
        );
        for row in &changes.size_classes {
            assert!(
                row.pools.changed() || row.blocks_in_use.changed() || row.avail_blocks.changed()
            );
        }

        let headline = summary(&changes);
        assert_eq!(headline.allocated_bytes, Some(delta));
        assert_eq!(
            headline.allocator_bytes,
            Some(
                i128::from(capture.arena_size)
                    * (i128::from(capture.arenas.1) - i128::from(capture.arenas.0))
            )
        );
        let (biggest_size, _) = headline.largest_size_class_change.unwrap();
        assert!(
            [capture.tuple_block, capture.str_block].contains(&biggest_size),
            "{label}: {headline}"
        );
        assert!(
            headline
                .to_string()
                .starts_with("pymalloc: allocated blocks +"),
            "{headline}"
        );
    }
}

#[test]
fn mimalloc_and_system_malloc_captures() {
    let (before, after) = fixture!("3.13-mimalloc");
    let (before, after) = (parse(before).unwrap(), parse(after).unwrap());
    assert_eq!(before.allocator, Allocator::Mimalloc);
    assert_eq!(before.small_block_threshold, Some(16_384));
    assert_eq!(before.size_class_count, Some(73));
    assert!(before.size_classes.is_empty());
    assert_eq!(before.figure("Medium block threshold"), Some(131_072));
    assert_eq!(before.figure("Large object max size"), Some(16_777_216));
    assert_eq!(
        before.figure(labels::MIMALLOC_ALLOCATED_BYTES),
        Some(2_063_288)
    );
    assert_eq!(
        after.figure(labels::MIMALLOC_ALLOCATED_BYTES),
        Some(17_528_328)
    );
    assert_eq!(after.figure("Allocated Blocks"), Some(316_105));
    assert_eq!(after.figures[3].layout, FigureLayout::Colon { indent: 4 });
    assert_eq!(
        after
            .free_list("3-sized PyTupleObjects")
            .map(|list| list.free),
        Some(200)
    );
    let changes = diff(&before, &after);
    let rendered = render_diff(&changes);
    assert!(
        rendered.contains("    Allocated Bytes: +15465040  (2063288 -> 17528328)\n"),
        "{rendered}"
    );
    assert!(!rendered.contains("Medium block threshold"), "{rendered}");
    let headline = summary(&changes);
    assert_eq!(headline.allocated_bytes, Some(15_465_040));
    assert_eq!(headline.arenas, None);
    assert_eq!(headline.allocator_bytes, Some(18_132_208 - 2_763_472));

    let (before, after) = fixture!("3.12-malloc");
    let (before, after) = (parse(before).unwrap(), parse(after).unwrap());
    assert_eq!(before.allocator, Allocator::NotReported);
    assert_eq!(before.small_block_threshold, None);
    assert!(before.figures.is_empty() && before.size_classes.is_empty());
    assert_eq!(before.free_lists.len(), 3 + 20);
    let changes = diff(&before, &after);
    let headline = summary(&changes);
    assert_eq!(headline.allocated_bytes, None);
    assert!(
        headline.to_string().starts_with("system malloc"),
        "{headline}"
    );
    assert!(render_diff(&changes).contains("free 3-sized PyTupleObjects"));
}

#[test]
fn identical_captures_have_no_diff() {
    for (label, text) in all_texts() {
        let stats = parse(text).unwrap();
        let changes = diff(&stats, &stats);
        assert!(changes.is_empty(), "{label}: {changes:?}");
        assert!(render_diff(&changes).contains("): none\n"), "{label}");
        assert_eq!(summary(&changes).size_classes_changed, 0);
    }
}

#[test]
fn a_class_that_lost_its_pools_counts_as_zero() {
    let text = "Small block threshold = 512, in 32 size classes.\n\n\
                class   size   num pools   blocks in use  avail blocks\n\
                -----   ----   ---------   -------------  ------------\n\
                \x20   0     16           1             106           915\n\
                \x20   1     32           3            1148           382\n";
    let before = parse(text).unwrap();
    let without_class_1: String = text
        .lines()
        .filter(|line| !line.starts_with("    1 "))
        .map(|line| format!("{line}\n"))
        .collect();
    let after = parse(&without_class_1).unwrap();
    let changes = diff(&before, &after);
    assert_eq!(
        changes.size_classes,
        vec![SizeClassChange {
            class: 1,
            size: 32,
            pools: Change {
                before: 3,
                after: 0
            },
            blocks_in_use: Change {
                before: 1148,
                after: 0
            },
            avail_blocks: Change {
                before: 382,
                after: 0
            },
        }]
    );
    assert!(render_diff(&changes).contains("    1     32        3      0      -3"));
}

#[test]
fn serde_round_trips() {
    let (before, after) = fixture!("3.10");
    let (before, after) = (parse(before).unwrap(), parse(after).unwrap());
    let json = serde_json::to_string(&after).unwrap();
    assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), after);
    let changes = diff(&before, &after);
    let json = serde_json::to_string(&changes).unwrap();
    assert_eq!(serde_json::from_str::<Diff>(&json).unwrap(), changes);
    let headline = summary(&changes);
    let json = serde_json::to_string(&headline).unwrap();
    assert_eq!(serde_json::from_str::<Summary>(&json).unwrap(), headline);
}

/// Knuth's MMIX linear congruential generator: deterministic, no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// Exercises everything after a parse, which must not panic either.
fn use_fully(stats: &Stats, other: &Stats) {
    for (first, second) in [(stats, other), (other, stats), (stats, stats)] {
        let changes = diff(first, second);
        let _ = render_diff(&changes);
        let _ = summary(&changes).to_string();
    }
    let _ = stats.to_text();
}

#[test]
fn never_panics_on_truncated_captures() {
    let reference = parse(fixture!("3.11").0).unwrap();
    for (label, text) in all_texts() {
        let full = parse(text).unwrap();
        let mut line_ends: Vec<usize> = text.match_indices('\n').map(|(at, _)| at + 1).collect();
        line_ends.insert(0, 0);
        for cut in (0..=text.len()).step_by(7).chain(line_ends.iter().copied()) {
            let Some(prefix) = text.get(..cut) else {
                continue;
            };
            match parse(prefix) {
                Ok(stats) => {
                    // Parsing is line by line: whole lines of a prefix parse as in the whole.
                    if line_ends.contains(&cut) {
                        assert_eq!(
                            stats.lines[..],
                            full.lines[..stats.lines.len()],
                            "{label} at {cut}"
                        );
                    }
                    use_fully(&stats, &reference);
                }
                Err(error) => {
                    // Only a prefix too short to hold a whole header or free-list line is
                    // refused, and the error names its first line.
                    let whole_lines = &prefix[..prefix.rfind('\n').map_or(0, |at| at + 1)];
                    assert!(
                        !whole_lines.contains(" size classes.\n")
                            && !whole_lines.contains(" bytes each ="),
                        "{label}: {cut}: {error}"
                    );
                    if prefix.trim().is_empty() {
                        assert_eq!(error, ParseError::Empty);
                    } else {
                        let first_line: String = prefix
                            .lines()
                            .next()
                            .unwrap_or("")
                            .chars()
                            .take(MAX_QUOTED_CHARS)
                            .collect();
                        let expected = format!("line 1 not understood: {first_line:?}");
                        assert!(
                            error.to_string().contains(&expected),
                            "{label}: {cut}: {error}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn never_panics_on_byte_soup() {
    // Pieces of real lines make the soup reach deep into the line parsers.
    const PIECES: &[&str] = &[
        "Small block threshold = ",
        ", in ",
        " size classes.",
        "class   size   num pools",
        "-----   ----",
        " free ",
        "-sized PyTupleObjects",
        " * ",
        " bytes each",
        " = ",
        "=",
        ":",
        ",",
        ",,",
        " ",
        "    ",
        "\n",
        "\r\n",
        "0",
        "7",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999999999999999999",
        "arenas",
        " bytes/arena",
        "Total",
        "# bytes in allocated blocks",
        "Allocated Bytes",
        "é",
        "\u{0}",
        "arena map counts",
        "-",
        "+",
    ];
    let reference = parse(fixture!("3.13").1).unwrap();
    let mut random = Lcg(0x5eed);
    let mut parsed = Vec::new();
    for _ in 0..3000 {
        let mut text = String::new();
        for _ in 0..random.below(60) {
            if random.below(4) == 0 {
                text.push(char::from(random.below(128) as u8));
            } else {
                text.push_str(PIECES[random.below(PIECES.len())]);
            }
        }
        if let Ok(stats) = parse(&text) {
            use_fully(&stats, &reference);
            if let Some(previous) = parsed.last() {
                use_fully(&stats, previous);
            }
            parsed.push(stats);
        }
        // Raw bytes, including invalid UTF-8.
        let bytes: Vec<u8> = (0..random.below(200))
            .map(|_| random.next() as u8)
            .collect();
        if let Ok(stats) = parse_bytes(&bytes) {
            use_fully(&stats, &reference);
        }
    }
    // The soup is rich enough to get past the parser's front door now and then.
    assert!(parsed.len() > 100, "only {} soups parsed", parsed.len());
}

#[test]
fn huge_numbers_neither_panic_nor_wrap() {
    let max = u64::MAX;
    let huge = format!(
        "Small block threshold = {max}, in {max} size classes.\n\n\
         {max} {max} {max} {max} {max}\n\n\
         # bytes in allocated blocks        = 18,446,744,073,709,551,615\n\
         {max} arenas * {max} bytes/arena = {max}\n\
         Total = 18,446,744,073,709,551,616\n\
         \x20   Allocated Bytes: {max}\n\n\
         {max} free {max}-sized PyTupleObjects * {max} bytes each = {max}\n\
         99999999999999999999999 free PyListObjects * 40 bytes each = 0\n"
    );
    let stats = parse(&huge).unwrap();
    assert_eq!(stats.small_block_threshold, Some(max));
    assert_eq!(stats.size_classes[0].avail_blocks, max);
    assert_eq!(stats.figure(labels::BYTES_IN_ALLOCATED_BLOCKS), Some(max));
    // One more than u64::MAX is not a number this parser accepts: the line is kept as text.
    assert_eq!(stats.figure("Total"), None);
    assert_eq!(stats.lines[6].kind, LineKind::Text);
    assert_eq!(stats.free_lists.len(), 1);
    assert_eq!(stats.free_lists[0].tuple_length(), Some(max));

    let zeros = parse(
        &huge
            .replace("18,446,744,073,709,551,615", "0")
            .replace(&max.to_string(), "0"),
    )
    .unwrap();
    let changes = diff(&stats, &zeros);
    let rendered = render_diff(&changes);
    assert!(
        rendered.contains("-18,446,744,073,709,551,615  (18,446,744,073,709,551,615 -> 0)"),
        "{rendered}"
    );
    assert!(rendered.contains(&format!("{max} -> 0")), "{rendered}");
    let headline = summary(&changes);
    assert_eq!(headline.allocated_bytes, Some(-i128::from(max)));
    assert_eq!(
        headline.largest_size_class_change,
        Some((max, -i128::from(max))),
        "blocks times size overflows i64 but not the saturating i128"
    );
    let _ = headline.to_string();
}

#[test]
fn summary_ranks_size_classes_by_bytes_not_blocks() {
    let capture = |small_blocks: u64, large_blocks: u64| {
        parse(&format!(
            "Small block threshold = 512, in 32 size classes.\n\n\
             class   size   num pools   blocks in use  avail blocks\n\
             -----   ----   ---------   -------------  ------------\n\
             \x20   0     16           9    {small_blocks:>12}             0\n\
             \x20  31    512          90    {large_blocks:>12}             0\n"
        ))
        .unwrap()
    };
    // +1,000 blocks of 16 bytes is 16,000 bytes; +100 blocks of 512 bytes is 51,200 bytes.
    let changes = diff(&capture(0, 0), &capture(1000, 100));
    let headline = summary(&changes);
    assert_eq!(headline.largest_size_class_change, Some((512, 100)));
    assert_eq!(headline.size_classes_changed, 2);
    assert!(
        headline
            .to_string()
            .ends_with("2 size classes changed (most: 512-byte blocks +100)"),
        "{headline}"
    );
}
