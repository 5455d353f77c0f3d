//! What `kubectl contracts test` writes: lines for people on standard error, and in the same run JUnit XML
//! (`--junit FILE`) and JSON (`--output json`, on standard output) for CI systems.

use std::time::Duration;

use serde::Serialize;

use crate::suite::SuiteResult;

/// The counts over every suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Totals {
    /// Suites run.
    pub suites: usize,
    /// Suites that could not be read.
    pub broken: usize,
    /// Cases run.
    pub cases: usize,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl Totals {
    /// The counts of `results`.
    pub fn of(results: &[SuiteResult]) -> Self {
        let cases: usize = results.iter().map(|s| s.cases.len()).sum();
        let failed: usize = results.iter().map(SuiteResult::failed).sum();
        Self {
            suites: results.len(),
            broken: results.iter().filter(|s| s.error.is_some()).count(),
            cases,
            passed: cases - failed,
            failed,
        }
    }

    /// Whether everything passed.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.broken == 0 && self.suites > 0
    }
}

/// The lines for people.
pub fn human(results: &[SuiteResult], verbose: bool) -> String {
    let mut out = String::new();
    for suite in results {
        out.push_str(&format!("suite {} ({})\n", suite.name, suite.file));
        if let Some(error) = &suite.error {
            out.push_str(&format!("  ERROR {error}\n"));
        }
        for case in &suite.cases {
            if case.passed {
                out.push_str(&format!("  ok    {}\n", case.name));
                if verbose {
                    for said in case.got.message.iter().chain(&case.got.warnings) {
                        out.push_str(&format!("        {}: {said}\n", case.got.decision));
                    }
                }
            } else {
                out.push_str(&format!("  FAIL  {}\n", case.name));
                for failure in &case.failures {
                    out.push_str(&format!("        {failure}\n"));
                }
            }
        }
    }
    let t = Totals::of(results);
    let broken = if t.broken > 0 { format!(", {} could not be read", t.broken) } else { String::new() };
    out.push_str(&format!(
        "{} suite{}{broken}, {} case{}: {} passed, {} failed\n",
        t.suites,
        plural(t.suites),
        t.cases,
        plural(t.cases),
        t.passed,
        t.failed
    ));
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// JUnit XML as Jenkins' xunit schema (junit-10.xsd, what pytest validates its own against) defines it: one
/// `<testsuite>` per suite, one `<testcase>` per case (classname the suite's name), a `<failure>` with every
/// reason for a failed case, and an `<error>` case for a suite that could not be read. Times in
/// milliseconds (the schema allows three decimals).
pub fn junit(results: &[SuiteResult]) -> Result<String, junit_report::Error> {
    let millis = |d: Duration| time::Duration::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut report = junit_report::Report::new();
    for suite in results {
        let mut ts = junit_report::TestSuite::new(&suite.name);
        ts.package = suite.file.clone();
        if let Some(error) = &suite.error {
            let mut case =
                junit_report::TestCase::error("read the suite", time::Duration::ZERO, "SuiteError", &cdata(error));
            case.set_classname(&suite.name);
            ts.add_testcase(case);
        }
        for result in &suite.cases {
            let mut case = if result.passed {
                junit_report::TestCase::success(&result.name, millis(result.time))
            } else {
                let first = result.failures.first().map(String::as_str).unwrap_or("failed");
                junit_report::TestCaseBuilder::failure(&result.name, millis(result.time), "UnexpectedAnswer", first)
                    .set_trace(&cdata(&describe(result)))
                    .build()
            };
            case.set_classname(&suite.name);
            ts.add_testcase(case);
        }
        report.add_testsuite(ts);
    }
    let mut out = Vec::new();
    report.write_xml(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Text for a CDATA section, which cannot hold `]]>`.
fn cdata(text: &str) -> String {
    text.replace("]]>", "]] >")
}

fn describe(result: &crate::suite::CaseResult) -> String {
    let mut text = result.failures.join("\n");
    text.push_str(&format!("\nexpected: {}", serde_json::to_string(&result.expected).unwrap_or_default()));
    text.push_str(&format!("\ngot: {}", serde_json::to_string(&result.got).unwrap_or_default()));
    text
}

/// The JSON document of `--output json`.
pub fn json(results: &[SuiteResult]) -> serde_json::Value {
    serde_json::json!({ "totals": Totals::of(results), "suites": results })
}
