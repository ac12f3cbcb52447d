//! Range checks shared by the numeric options of every subcommand, so that an out-of-range, NaN
//! or infinite value gets one clear line and exit code 2, never a panic further on (`--duration
//! 1e19` used to overflow `Instant + Duration`).

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest time any option accepts, in seconds (about 31 years): longer than any run, and far
/// from where adding it to a clock overflows.
pub const MAX_SECONDS: f64 = 1e9;

/// The highest rate any option accepts, per second (one a microsecond).
pub const MAX_RATE: f64 = 1e6;

/// `value` as the user would write it: `1e19` rather than twenty digits.
fn shown(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_finite() && value != 0.0 && !(1e-4..1e6).contains(&magnitude) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// `value` seconds as a [`Duration`], for the option `flag`: above 0 (at least `min` when given)
/// and at most [`MAX_SECONDS`].
pub fn seconds(flag: &str, value: f64, min: Option<f64>) -> Result<Duration> {
    let low_enough = value <= MAX_SECONDS;
    let high_enough = match min {
        Some(min) => value >= min,
        None => value > 0.0,
    };
    // NaN fails both comparisons; try_from also refuses what a Duration cannot hold.
    match Duration::try_from_secs_f64(value) {
        Ok(duration) if low_enough && high_enough => Ok(duration),
        _ => Err(Error::usage(match min {
            Some(min) => format!(
                "{flag} must be a number of seconds, at least {min} and at most {MAX_SECONDS:.0} \
                 (about 31 years), not {}",
                shown(value)
            ),
            None => format!(
                "{flag} must be a positive number of seconds, at most {MAX_SECONDS:.0} (about 31 \
                 years), not {}",
                shown(value)
            ),
        })),
    }
}

/// [`seconds`] for an option that may be absent.
pub fn optional_seconds(flag: &str, value: Option<f64>) -> Result<Option<Duration>> {
    value.map(|v| seconds(flag, v, None)).transpose()
}

/// A rate per second for the option `flag`: above 0 and at most [`MAX_RATE`].
pub fn rate(flag: &str, value: f64) -> Result<f64> {
    if value > 0.0 && value <= MAX_RATE {
        Ok(value)
    } else {
        Err(Error::usage(format!(
            "{flag} must be a positive number per second, at most {MAX_RATE:.0}, not {}",
            shown(value)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_out_of_range_nan_and_infinite_are_usage_errors() {
        for bad in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e19,
            1e300,
            1e9 + 1.0,
        ] {
            let err = seconds("--duration", bad, None).unwrap_err();
            assert_eq!(err.kind, crate::error::ErrorKind::Usage, "{bad}");
            assert!(err.message.starts_with("--duration must be"), "{err}");
        }
        assert_eq!(
            seconds("--duration", 1.5, None).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(seconds("--duration", MAX_SECONDS, None).is_ok());
        assert!(seconds("--interval", 0.005, Some(0.01)).is_err());
        assert!(seconds("--interval", 0.01, Some(0.01)).is_ok());
        assert_eq!(optional_seconds("--duration", None).unwrap(), None);
        let err = seconds("--duration", 1e19, None).unwrap_err();
        assert!(err.message.ends_with("not 1e19"), "{err}");
        let err = seconds("--duration", -1.0, None).unwrap_err();
        assert!(err.message.ends_with("not -1"), "{err}");
    }

    #[test]
    fn rates_out_of_range_nan_and_infinite_are_usage_errors() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e7] {
            assert!(rate("--rate", bad).is_err(), "{bad}");
        }
        assert_eq!(rate("--rate", 100.0).unwrap(), 100.0);
    }
}
