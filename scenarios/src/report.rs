//! What a scenario run produces: a pass/fail verdict and the numbers it
//! asserted, so a reader sees *how close* a run came to each bound, not
//! only that it passed.
//!
//! A scenario records every number with [`Checks::figure`] and every bound
//! with [`Checks::expect`]; a failed bound becomes a `FAILED ...` figure
//! carrying the numbers, and the report's `passed` is the conjunction of
//! all bounds.

use std::fmt::Display;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Size {
    /// Sizes that keep all eight scenarios within a few minutes of a debug
    /// build on two cores (the default, and what the tests run).
    #[default]
    Fast,
    /// The sizes of the incidents themselves (`--full`).
    Full,
}

impl Size {
    /// `fast` in [`Size::Fast`], `full` in [`Size::Full`].
    pub fn pick<T>(self, fast: T, full: T) -> T {
        match self {
            Self::Fast => fast,
            Self::Full => full,
        }
    }
}

/// The outcome of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioReport {
    pub name: String,
    pub passed: bool,
    /// `(what, value)` of every number the scenario measured or asserted,
    /// failed bounds first.
    pub figures: Vec<(String, String)>,
}

impl ScenarioReport {
    /// The report of a scenario that could not run at all.
    pub fn errored(name: &str, error: &dyn Display) -> Self {
        Self {
            name: name.to_owned(),
            passed: false,
            figures: vec![("ERROR".to_owned(), error.to_string())],
        }
    }

    /// The failed bounds, one per line (empty when passed).
    pub fn failures(&self) -> Vec<String> {
        self.figures
            .iter()
            .filter(|(k, _)| k.starts_with("FAILED") || k == "ERROR")
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }
}

/// Collects figures and bounds while a scenario runs.
#[derive(Debug)]
pub struct Checks {
    name: String,
    figures: Vec<(String, String)>,
    failures: Vec<(String, String)>,
}

impl Checks {
    /// Checks of the scenario `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            figures: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Records a measured number.
    pub fn figure(&mut self, what: &str, value: impl Display) {
        self.figures.push((what.to_owned(), value.to_string()));
    }

    /// Asserts `ok` for the bound `what`; `detail` carries the numbers.
    /// Returns `ok` so a scenario can skip steps that depend on it.
    pub fn expect(&mut self, what: &str, ok: bool, detail: impl Display) -> bool {
        if !ok {
            tracing::error!(scenario = %self.name, bound = what, %detail, "bound failed");
            self.failures
                .push((format!("FAILED {what}"), detail.to_string()));
        }
        ok
    }

    /// Asserts `actual == expected` and records the value as a figure.
    pub fn expect_eq<T: PartialEq + Display>(&mut self, what: &str, actual: T, expected: T) {
        self.figure(what, &actual);
        let detail = format!("{actual}, expected {expected}");
        self.expect(&format!("{what} == {expected}"), actual == expected, detail);
    }

    /// Asserts `actual <= bound` and records `actual (<= bound)`.
    pub fn expect_at_most<T: PartialOrd + Display>(&mut self, what: &str, actual: T, bound: T) {
        self.figure(what, format!("{actual} (<= {bound})"));
        let detail = format!("{actual}, bound {bound}");
        self.expect(&format!("{what} <= {bound}"), actual <= bound, detail);
    }

    /// Asserts `actual >= bound` and records `actual (>= bound)`.
    pub fn expect_at_least<T: PartialOrd + Display>(&mut self, what: &str, actual: T, bound: T) {
        self.figure(what, format!("{actual} (>= {bound})"));
        let detail = format!("{actual}, bound {bound}");
        self.expect(&format!("{what} >= {bound}"), actual >= bound, detail);
    }

    /// Whether every bound so far held.
    pub fn all_passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report: failed bounds first, then the figures in order.
    pub fn finish(self) -> ScenarioReport {
        let passed = self.failures.is_empty();
        let mut figures = self.failures;
        figures.extend(self.figures);
        ScenarioReport {
            name: self.name,
            passed,
            figures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bound_fails_the_report_and_comes_first() {
        let mut c = Checks::new("x");
        c.expect_eq("identifies", 36, 36);
        c.expect_at_most("span_ms", 120, 100);
        let r = c.finish();
        assert!(!r.passed);
        assert_eq!(r.figures[0].0, "FAILED span_ms <= 100");
        assert_eq!(r.failures().len(), 1);
        let mut ok = Checks::new("y");
        ok.expect_at_least("lookups", 10, 1);
        assert!(ok.finish().passed);
    }
}
