//! Parses the output of libiscsi's `iscsi-test-cu` (CUnit's basic, verbose mode).
//!
//! CUnit counts a skipped test as passed: libiscsi prints `[SKIPPED] <why>` and returns.
//! So besides CUnit's run summary this reads every test's own lines and splits passed
//! from skipped. The per-test counts must agree with the summary, or parsing fails.
//!
//! ```text
//! Suite: GetLBAStatus
//!   Test: Simple ...passed
//!   Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed ...
//! FAILED
//!     1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
//!   Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
//! passed
//!
//! Run Summary:    Type  Total    Ran Passed Failed Inactive
//!               suites     51     51    n/a      0        0
//!                tests    230    230    222      8        0
//!              asserts  55419  55419  55408     11      n/a
//! ```

use std::fmt;

use anyhow::{anyhow, bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Skipped,
    Failed,
}

/// One test: `Suite.Test`, its outcome and the lines it printed (reasons, asserts).
#[derive(Clone, Debug)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
    pub lines: Vec<String>,
}

impl TestResult {
    /// The first `[SKIPPED]`/`[FAILED]` message, else the first assert line.
    pub fn reason(&self) -> String {
        let marker = match self.outcome {
            Outcome::Skipped => "[SKIPPED]",
            _ => "[FAILED]",
        };
        self.lines
            .iter()
            .find_map(|l| l.split_once(marker).map(|(_, r)| r.trim().to_string()))
            .or_else(|| {
                self.lines
                    .iter()
                    .find(|l| l.contains("CU_ASSERT"))
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_default()
    }
}

/// One row of CUnit's run summary; `None` where CUnit prints `n/a`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub total: u64,
    pub ran: u64,
    pub passed: Option<u64>,
    pub failed: u64,
    pub inactive: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub suites: Row,
    pub tests: Row,
    pub asserts: Row,
    pub results: Vec<TestResult>,
}

impl Report {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|t| t.outcome == outcome).count()
    }

    pub fn with(&self, outcome: Outcome) -> impl Iterator<Item = &TestResult> {
        self.results.iter().filter(move |t| t.outcome == outcome)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let na = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
        writeln!(
            f,
            "CUnit run summary: Type Total Ran Passed Failed Inactive"
        )?;
        for (name, r) in [
            ("suites", self.suites),
            ("tests", self.tests),
            ("asserts", self.asserts),
        ] {
            writeln!(
                f,
                "  {name:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
                r.total,
                r.ran,
                na(r.passed),
                r.failed,
                na(r.inactive)
            )?;
        }
        writeln!(
            f,
            "tests: {} passed, {} skipped, {} failed (of {})",
            self.count(Outcome::Passed),
            self.count(Outcome::Skipped),
            self.count(Outcome::Failed),
            self.results.len()
        )?;
        if self.count(Outcome::Skipped) > 0 {
            writeln!(f, "skipped:")?;
            for t in self.with(Outcome::Skipped) {
                writeln!(f, "  {}: {}", t.name, t.reason())?;
            }
        }
        if self.count(Outcome::Failed) > 0 {
            // Everything a failed test printed: the reason is not always marked.
            writeln!(f, "failed:")?;
            for t in self.with(Outcome::Failed) {
                writeln!(f, "  {}:", t.name)?;
                for l in t.lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
                    writeln!(f, "      {l}")?;
                }
            }
        }
        Ok(())
    }
}

/// Parses a whole `iscsi-test-cu` log (stdout and stderr together).
pub fn parse(log: &str) -> Result<Report> {
    let (body, summary) = log
        .split_once("Run Summary:")
        .ok_or_else(|| anyhow!("no CUnit \"Run Summary\" (the run did not finish)"))?;
    let row = |name: &str| -> Result<Row> {
        summary
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.collect::<Vec<_>>())
            })
            .ok_or_else(|| anyhow!("run summary has no {name:?} row"))
            .and_then(|w| parse_row(&w).with_context(|| format!("run summary row {name:?}")))
    };
    let report = Report {
        suites: row("suites")?,
        tests: row("tests")?,
        asserts: row("asserts")?,
        results: parse_tests(body)?,
    };
    check(&report)?;
    Ok(report)
}

fn parse_row(words: &[&str]) -> Result<Row> {
    let [total, ran, passed, failed, inactive] = words else {
        bail!("expected 5 columns, got {words:?}");
    };
    let num = |w: &str| -> Result<u64> { w.parse().with_context(|| format!("bad number {w:?}")) };
    let opt = |w: &str| -> Result<Option<u64>> {
        if w == "n/a" {
            Ok(None)
        } else {
            num(w).map(Some)
        }
    };
    Ok(Row {
        total: num(total)?,
        ran: num(ran)?,
        passed: opt(passed)?,
        failed: num(failed)?,
        inactive: opt(inactive)?,
    })
}

/// CUnit prints `  Test: NAME ...` and, after whatever the test printed, `passed` or
/// `FAILED`: right after the dots when the test printed nothing, else at a line start.
/// A `[FAILED]` message alone does not fail a test; only CUnit's verdict counts.
fn parse_tests(body: &str) -> Result<Vec<TestResult>> {
    let mut suite = String::new();
    let mut results: Vec<TestResult> = Vec::new();
    let mut verdict: Option<Option<bool>> = None; // Some(None): current test, no verdict yet
    let mut skipped = false;
    let finish = |results: &mut Vec<TestResult>, verdict: Option<Option<bool>>, skipped| {
        if let (Some(Some(passed)), Some(last)) = (verdict, results.last_mut()) {
            last.outcome = match (passed, skipped) {
                (false, _) => Outcome::Failed,
                (true, true) => Outcome::Skipped,
                (true, false) => Outcome::Passed,
            };
        }
    };
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("Suite: ") {
            suite = name.trim().to_string();
            continue;
        }
        if let Some((name, rest)) = line
            .trim_start()
            .strip_prefix("Test: ")
            .and_then(|r| r.split_once(" ..."))
        {
            if let (Some(None), Some(last)) = (verdict, results.last()) {
                bail!("test {} has no passed/FAILED verdict", last.name);
            }
            finish(&mut results, verdict, skipped);
            results.push(TestResult {
                name: format!("{suite}.{}", name.trim()),
                outcome: Outcome::Failed,
                lines: vec![rest.to_string()],
            });
            verdict = Some(word_verdict(rest));
            skipped = rest.contains("[SKIPPED]");
            continue;
        }
        let Some(last) = results.last_mut() else {
            continue;
        };
        last.lines.push(line.to_string());
        skipped |= line.contains("[SKIPPED]");
        if verdict == Some(None) {
            verdict = Some(word_verdict(line));
        }
    }
    if let (Some(None), Some(last)) = (verdict, results.last()) {
        bail!("test {} has no passed/FAILED verdict", last.name);
    }
    finish(&mut results, verdict, skipped);
    Ok(results)
}

/// CUnit's verdict, `passed` or `FAILED`, if `s` starts with it. Tests indent their
/// own lines, so a verdict never has leading blanks.
fn word_verdict(s: &str) -> Option<bool> {
    let word = s.split(char::is_whitespace).next()?;
    match word {
        "passed" => Some(true),
        "FAILED" => Some(false),
        _ => None,
    }
}

/// The per-test view must agree with CUnit's own counts.
fn check(r: &Report) -> Result<()> {
    let n = r.results.len() as u64;
    let failed = r.count(Outcome::Failed) as u64;
    if n != r.tests.ran {
        bail!("parsed {n} tests but CUnit ran {}", r.tests.ran);
    }
    if failed != r.tests.failed {
        bail!(
            "parsed {failed} failed tests but CUnit counts {}",
            r.tests.failed
        );
    }
    if r.tests.passed != Some(n - failed) {
        bail!(
            "parsed {} passed+skipped tests but CUnit counts {:?}",
            n - failed,
            r.tests.passed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cut from a real run against tgt, with the summary adjusted to the cut.
    const LOG: &str = "\n\n     CUnit - A unit testing framework for C - Version 2.1-3
     http://cunit.sourceforge.net/


Suite: CompareAndWrite
  Test: Simple ...    [SKIPPED] COMPAREANDWRITE is not implemented.
    [SKIPPED] COMPAREANDWRITE is not implemented.
passed
Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
Suite: Reserve6
  Test: 2Initiators ...    Take out a RESERVE6 from the first initiator
    [FAILED] MODESENSE6 successful but should have failed with NO SENSE(0x00)/NO ASCQ(0x0000)
    RELEASE6 from the second initiator
FAILED
    1. test_reserve6_2initiators.c:70  - CU_ASSERT_EQUAL(_r,0)
  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense. SENSE KEY:UNIT_ATTENTION(6) ASCQ:BUS_RESET(0x2900)

Suite: WriteSame10
  Test: UnmapVPD ...    [FAILED] WRITESAME10 command failed with status 2 / sense key ILLEGAL_REQUEST(0x05) / ASCQ INVALID_FIELD_IN_CDB(0x2400)
passed
Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      5      5    n/a      0        0
               tests      7      7      4      3        0
             asserts    100    100     96      4      n/a

Elapsed time =    2.738 seconds
Tests completed with return value: 0
";

    #[test]
    fn parses_outcomes_and_summary() -> Result<()> {
        let r = parse(LOG)?;
        assert_eq!(
            r.tests,
            Row {
                total: 7,
                ran: 7,
                passed: Some(4),
                failed: 3,
                inactive: Some(0)
            }
        );
        assert_eq!(r.suites.passed, None);
        assert_eq!(r.asserts.inactive, None);
        let got: Vec<_> = r
            .results
            .iter()
            .map(|t| (t.name.as_str(), t.outcome))
            .collect();
        use Outcome::*;
        assert_eq!(
            got,
            [
                ("CompareAndWrite.Simple", Skipped),
                ("GetLBAStatus.Simple", Passed),
                ("GetLBAStatus.BeyondEol", Failed),
                ("Reserve6.2Initiators", Failed),
                ("Reserve6.LUNReset", Passed),
                ("WriteSame10.UnmapVPD", Passed),
                ("iSCSIdatasn.iSCSIDataSnInvalid", Failed),
            ]
        );
        assert_eq!(r.results[0].reason(), "COMPAREANDWRITE is not implemented.");
        assert_eq!(
            r.results[6].reason(),
            "1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)"
        );
        Ok(())
    }

    #[test]
    fn summary_must_match_tests() {
        let wrong = LOG.replace(
            "tests      7      7      4      3",
            "tests      7      7      5      2",
        );
        assert!(parse(&wrong).is_err());
        let fewer = LOG.replace("  Test: Simple ...passed\n", "");
        assert!(parse(&fewer).is_err());
    }

    #[test]
    fn unfinished_run_is_an_error() {
        let cut = &LOG[..LOG.find("Run Summary").unwrap_or(LOG.len())];
        assert!(parse(cut).is_err());
        let no_verdict = LOG.replace("FAILED\n    1. test_iscsi", "    1. test_iscsi");
        assert!(parse(&no_verdict).is_err());
    }
}
