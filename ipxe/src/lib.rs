//! iPXE for bootd: which iPXE binary a PXE client gets for its architecture,
//! where that binary lives on this server, and the boot scripts rendered for
//! each node from templates.

pub mod arch;
mod plan;
pub mod render;

pub use render::{chain_script, uri_host, validate, BootPlan, RenderError, Renderer};
