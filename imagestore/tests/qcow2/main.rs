//! qcow2 overlay engine tests, compiled as one binary.

/// Fails the test with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*).into());
        }
    };
}

mod bench;
mod common;
mod crash;
mod engine;
mod imago_bench;
mod interop;
mod model;
mod sync_writes;
