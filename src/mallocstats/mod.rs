//! Parsing and comparing the text `sys._debugmallocstats()` writes to the C-level stderr.
//!
//! This module is pure: it receives the captured text (the `inject` module captures it inside
//! the target) and never touches a process, so it can be fuzzed and tested on fixtures alone.
//!
//! - [`parse`] turns one capture into [`Stats`]: the size-class table, every `label = value`
//!   figure, the per-type free lists and every line in order (unknown lines included);
//! - [`diff`] compares two captures of one process and keeps what changed;
//! - [`render_diff`] prints the changes in CPython's own layout with signed deltas, and
//!   [`summary`] gives the headline figures for one line.
//!
//! The formats seen from 3.6 to 3.13 are described in [`model`]; captures of every one are in
//! `fixtures/mallocstats/`.

pub mod command;
mod diff;
pub mod model;
mod parse;
mod render;

#[cfg(test)]
mod tests;

pub use diff::{
    diff, summary, Change, Diff, FigureChange, FigureSection, FreeListChange, Presence,
    SizeClassChange, Summary,
};
pub use model::{
    labels, Allocator, Figure, FigureLayout, FreeList, Line, LineKind, SizeClass, Stats,
};
pub use parse::{parse, parse_bytes, ParseError, MAX_QUOTED_CHARS};
pub use render::{grouped, render_diff, signed_grouped, signed_plain};
