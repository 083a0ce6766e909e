//! Harness for the end-to-end tests under `tests/tests/e2e/`: locating the built
//! `bootd`, running an export (of bootd, or of tgt as a stand-in), running real
//! clients under time limits, and deciding whether a missing tool skips or fails.
//!
//! Environment:
//! - `BOOTD_BIN`: the bootd binary (default: `<workspace>/build/release/bootd`, then
//!   `build/debug/bootd`).
//! - `BOOTD_E2E=1`: end-to-end tests must run; a missing tool or binary fails the test
//!   instead of skipping it. `scripts/test.sh` sets it.
//! - `BOOTD_TEST_TARGET=tgt`: serve exports with tgtd instead of bootd (root only);
//!   used to check the harness itself against a known target.

pub mod bootd;
pub mod cunit;
pub mod debian;
pub mod dhcp_client;
pub mod disk;
pub mod diskless;
pub mod dnsmasq;
pub mod dsafe;
pub mod env;
pub mod export;
pub mod faults;
pub mod fleet;
pub mod golden;
pub mod guest;
pub mod imagecheck;
pub mod keepalived;
pub mod netns;
pub mod overlay;
pub mod postgres;
pub mod process;
pub mod qemu_iscsi;
pub mod serve;
pub mod tgt;
pub mod webdriver;
pub mod writeback;
