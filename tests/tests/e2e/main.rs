//! End-to-end tests: real initiators and clients against `bootd export` (or tgt, with
//! `BOOTD_TEST_TARGET=tgt`). One test binary, one module per client family.
//!
//! `BOOTD_E2E=1` makes a missing tool a failure instead of a skip; `scripts/test.sh`
//! installs the tools and sets it.

mod capture;
mod conformance;
mod dashboard;
mod datasafety;
mod debian;
mod diskless;
mod failover;
mod hostile_iscsi;
mod imagebuild;
mod kernel;
mod mutual_chap;
mod netboot;
mod qemu;
mod registry;
mod servers;
