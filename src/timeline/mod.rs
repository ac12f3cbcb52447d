//! `pymemtrace process`: the memory and CPU timeline of a process (and its children), read from /proc.

pub mod model;

pub use model::{Label, Point, ProcessSeries, Tick, Timeline};
pub mod command;
pub mod run;
pub mod summary;
