//! libiscsi's conformance suite (`iscsi-test-cu -d -S -t ALL`) against an export of a
//! 1 GiB sparse file.
//!
//! Beyond the plain `-d -t ALL` run (which the tgt figures below come from) this lets
//! every test run that can: `-S` allows the SANITIZE tests (the LUN is a scratch
//! file) and a second URL to the same LUN enables the MultipathIO suite (two sessions,
//! as in the iPXE-to-OS handoff). Without them 15 tests always skip, and at most 205
//! could pass, below the 215. The LUN is exported `--removable` so the
//! PreventAllow and StartStopUnit suites (9 tests) run instead of skipping; a fixed
//! disk differs only in refusing those commands, which the suites then skip.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use bootd_tests::cunit::{self, Outcome};
use bootd_tests::env::Needs;
use bootd_tests::export::{Export, ExportOptions};
use bootd_tests::process::run;

/// Issue 2 demands at least 215 of the suite's 230 tests pass (skips excluded), none
/// failing. tgt with plain `-d -t ALL` passes 160, skips 62 and fails 8.
/// ReadOnly.ReadOnlySBC always skips on a writable LUN (qemu.rs runs it read-only).
const MIN_PASSED: usize = 215;

/// tgt needs about 19 s for the whole suite here and bootd about 25 s (mostly the
/// iSCSI tests' 3 s client timeouts); the bound leaves room for a slow
/// machine and a target that waits out a timeout or two.
const SUITE_LIMIT: Duration = Duration::from_secs(300);

const LUN_BYTES: u64 = 1 << 30;
const IQN: &str = "iqn.2026-01.test.bootd:conformance";
// Two initiator names: tests of reservations and multiple sessions use both.
const INITIATOR_1: &str = "iqn.2026-01.test.bootd:initiator-1";
const INITIATOR_2: &str = "iqn.2026-01.test.bootd:initiator-2";

/// A fixed disk (what boots use) skips the 9 removable-media tests.
const MIN_PASSED_FIXED: usize = MIN_PASSED - 9;

#[test]
fn iscsi_test_cu_all() -> Result<()> {
    suite("iscsi_test_cu_all", true, MIN_PASSED)
}

#[test]
fn iscsi_test_cu_all_fixed_disk() -> Result<()> {
    suite("iscsi_test_cu_all_fixed_disk", false, MIN_PASSED_FIXED)
}

fn suite(name: &str, removable: bool, min_passed: usize) -> Result<()> {
    if !Needs::new()
        .server()
        .tool("iscsi-test-cu", "libiscsi-bin")
        .met(name)
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("lun.img");
    std::fs::File::create(&file)?.set_len(LUN_BYTES)?;
    let mut options = ExportOptions::new(&file, IQN);
    if removable {
        options = options.removable();
    }
    let export = Export::start(&options)?;

    let mut cmd = Command::new("iscsi-test-cu");
    cmd.args([
        "-d",
        "-S",
        "-t",
        "ALL",
        "-i",
        INITIATOR_1,
        "-I",
        INITIATOR_2,
    ])
    .arg(export.url())
    // The multipath URL: a second path to the same LUN.
    .arg(export.url());
    let out = run(&mut cmd, SUITE_LIMIT).with_context(|| export.log())?;
    // CUnit and the tests' messages all go to stdout, in order; stderr stays empty
    // unless libiscsi itself complains.
    let log = format!("{}{}", out.stdout, out.stderr);
    println!(
        "iscsi-test-cu against {:?} finished in {:.1}s",
        export.server(),
        out.elapsed.as_secs_f64()
    );
    let report = match cunit::parse(&out.stdout) {
        Ok(r) => r,
        Err(e) => panic!(
            "cannot read iscsi-test-cu's result: {e:#}\n{out}\n{}",
            export.log()
        ),
    };
    println!("{report}");

    let failed = report.count(Outcome::Failed);
    let passed = report.count(Outcome::Passed);
    if failed > 0 || passed < min_passed {
        println!(
            "--- full iscsi-test-cu log ---\n{log}--- end ---\n{}",
            export.log()
        );
    }
    assert_eq!(
        failed,
        0,
        "{failed} conformance tests failed: {}",
        report
            .with(Outcome::Failed)
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        passed >= min_passed,
        "{passed} conformance tests passed, at least {min_passed} must"
    );
    assert_eq!(report.tests.inactive, Some(0), "inactive tests");
    export.shutdown()
}
