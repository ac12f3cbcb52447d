//! pymemtrace: find out where a running Python process's memory goes, from outside.
//!
//! Data flows target -> sampler -> a plain data model (attribution) -> report; see docs/how-it-works.md and
//! docs/security.md.

pub mod attribution;
pub mod children;
pub mod dtrace;
pub mod error;
pub mod fuzzing;
pub mod inject;
pub mod mallocstats;
pub mod memory;
pub mod options;
pub mod precise;
pub mod report;
pub mod sampler;
pub mod signals;
pub mod target;
pub mod timeline;
pub mod tracemalloc;

/// The version printed by `--version` and written into every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
