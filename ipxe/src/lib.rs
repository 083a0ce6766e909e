//! iPXE for bootd: which iPXE binary a PXE client gets for its architecture,
//! and where that binary lives on this server.

pub mod arch;
