//! iPXE for bootd: which iPXE binary a PXE client gets for its architecture,
//! where that binary lives on this server, and the boot scripts rendered for
//! each node from templates, and the nodes' cloud-init user-data.

pub mod arch;
mod plan;
pub mod render;
pub mod user_data;

pub use render::{chain_script, uri_host, validate, BootPlan, RenderError, Renderer};
pub use user_data::{render_user_data, validate_user_data, UserDataVars, MAX_USER_DATA_BYTES};
