//! Every failure a user can cause, each with one clear line and its own exit code.
//!
//! The exit codes are part of the interface (documented in README.md), so they never change meaning.

use std::fmt;

/// What went wrong, as far as the user is concerned. Each kind maps to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bug or an unexpected system failure.
    Internal,
    /// A bad option or option value (clap reports its own parse errors with the same code).
    Usage,
    /// The PID does not exist (or exited before we could look at it).
    NoSuchProcess,
    /// The process exists but no CPython interpreter was found in it.
    NotPython,
    /// We may not read the target's memory.
    PermissionDenied,
    /// A Python version this build cannot read.
    UnsupportedVersion,
    /// An output file cannot be created or written.
    OutputNotWritable,
    /// The command given after `--` could not be started.
    SpawnFailed,
    /// A file given to read (`--input`) is missing, unreadable or not in the expected format.
    BadInput,
    /// A helper could not run inside the target, or did not reply in time (the message says what
    /// happened to it).
    HelperFailed,
    /// No tracer (dtrace or bpftrace) is installed, or it cannot place probes without root.
    TracerUnavailable,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NoSuchProcess => 3,
            ErrorKind::NotPython => 4,
            ErrorKind::PermissionDenied => 5,
            ErrorKind::UnsupportedVersion => 6,
            ErrorKind::OutputNotWritable => 7,
            ErrorKind::SpawnFailed => 8,
            ErrorKind::BadInput => 9,
            ErrorKind::HelperFailed => 10,
            ErrorKind::TracerUnavailable => 11,
        }
    }
}

/// A user-facing error: a kind (for the exit code) and one line of explanation.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
