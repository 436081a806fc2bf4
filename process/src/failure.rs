//! Why a binary stops with an error, and the exit code it reports.
//!
//! Every Bulwark binary keeps one convention so supervisors can tell a
//! configuration to fix from a failure to retry: 0 after a clean stop, 78
//! ([`config::EXIT_CONFIG`], BSD `EX_CONFIG`) for a bad setting, 1
//! ([`EXIT_FAILURE`]) for anything else, plus codes a binary documents for
//! itself (the sharder's 2 for a refused token, the demo's 130 for an
//! interrupt). The message goes to stderr, before any log line could hide
//! it, with the error's causes joined by `: `.

use config::{Config, EXIT_CONFIG};
use std::fmt;
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a failure that is not a configuration error.
pub const EXIT_FAILURE: i32 = 1;

/// A binary's failure: the message it prints and the code it exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    /// A failure with exit `code` and a message of its own.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `binary: error: cause: cause`, exiting with `code`.
    pub fn from_error(code: i32, binary: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        Self::new(code, format!("{binary}: {}", chain(error)))
    }

    /// A run's error, as [`Failure::from_error`]: exit 78
    /// ([`EXIT_CONFIG`]) when `is_config` (a setting found bad only at run
    /// time), else [`EXIT_FAILURE`].
    pub fn from_run_error(
        is_config: bool,
        binary: &str,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        let code = if is_config { EXIT_CONFIG } else { EXIT_FAILURE };
        Self::from_error(code, binary, error)
    }

    /// A bad setting: `configuration error: ...`, exit 78.
    pub fn config(error: impl fmt::Display) -> Self {
        Self::new(EXIT_CONFIG, format!("configuration error: {error}"))
    }

    /// The exit code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// Prints the message to stderr and returns the exit code for `main`.
    pub fn report(&self) -> ExitCode {
        eprintln!("{}", self.message);
        exit_code(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `code` as `main`'s exit code; a code outside 0..=255 reports 1.
pub(crate) fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

/// `error` and its sources, `a: b: c`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// [`Config::load`]: the file at `path` (or the defaults), then the
/// `BULWARK_*` overrides, validated; a bad value is a
/// [`Failure::config`].
pub fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("binding 127.0.0.1:1")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_failure_names_the_binary_and_every_cause() {
        let e = Outer(std::io::Error::other("address in use"));
        let f = Failure::from_error(EXIT_FAILURE, "worker", &e);
        assert_eq!(f.to_string(), "worker: binding 127.0.0.1:1: address in use");
        assert_eq!(f.code(), 1);
    }

    #[test]
    fn a_run_error_exits_78_only_when_it_is_a_setting() {
        let e = Outer(std::io::Error::other("address in use"));
        let bad = Failure::from_run_error(true, "relay", &e);
        assert_eq!(bad.code(), EXIT_CONFIG);
        assert_eq!(
            bad.to_string(),
            "relay: binding 127.0.0.1:1: address in use"
        );
        assert_eq!(
            Failure::from_run_error(false, "relay", &e).code(),
            EXIT_FAILURE
        );
    }

    #[test]
    fn a_bad_setting_exits_78_naming_the_key() {
        let e = Config::from_toml_str("[amqp]\npartitions = 0\n", "t", Vec::new()).unwrap_err();
        let f = Failure::config(e);
        assert_eq!(f.code(), EXIT_CONFIG);
        assert!(f.to_string().starts_with("configuration error: "), "{f}");
        assert!(f.to_string().contains("amqp.partitions"), "{f}");
    }

    #[test]
    fn codes_beyond_a_byte_report_failure() {
        assert_eq!(exit_code(78), ExitCode::from(78));
        assert_eq!(exit_code(-1), ExitCode::FAILURE);
        assert_eq!(exit_code(300), ExitCode::FAILURE);
    }
}
