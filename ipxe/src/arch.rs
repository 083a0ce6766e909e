//! Client system architectures (DHCP option 93, RFC 4578 and the IANA
//! "Processor Architecture Types" registry) and the iPXE binary each gets.

use std::path::{Path, PathBuf};

/// The architectures bootd can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientArch {
    /// 0: x86 BIOS PXE ROM.
    BiosX86,
    /// 6: 32-bit x86 UEFI.
    EfiIa32,
    /// 7 (EFI BC) and 9 (EFI x86-64): firmware in the wild uses both for x64.
    EfiX64,
    /// 11: 64-bit ARM UEFI.
    EfiArm64,
    /// 16: x64 UEFI HTTP boot.
    EfiX64Http,
    /// 19: arm64 UEFI HTTP boot.
    EfiArm64Http,
}

impl ClientArch {
    /// Decodes option 93's first architecture type; `None` for types bootd
    /// has no binary for (Itanium, ARM32, RISC-V ...).
    pub fn from_option93(code: u16) -> Option<Self> {
        Some(match code {
            0 => Self::BiosX86,
            6 => Self::EfiIa32,
            7 | 9 => Self::EfiX64,
            11 => Self::EfiArm64,
            16 => Self::EfiX64Http,
            19 => Self::EfiArm64Http,
            _ => return None,
        })
    }

    /// Whether the client boots over HTTP (vendor class `HTTPClient`) and so
    /// wants a URL rather than a TFTP file name.
    pub fn is_http(self) -> bool {
        matches!(self, Self::EfiX64Http | Self::EfiArm64Http)
    }
}

/// Which EFI build an x64 UEFI client gets: `snponly.efi` drives the NIC
/// through the firmware's own driver (works on every NIC the firmware
/// knows); `ipxe.efi` brings iPXE's drivers.
/// Spelled `snponly` and `ipxe` in flags and config files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum EfiFlavour {
    #[default]
    #[serde(rename = "snponly")]
    SnpOnly,
    #[serde(rename = "ipxe")]
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an iPXE EFI build: use snponly or ipxe")]
pub struct UnknownFlavour(pub String);

impl std::str::FromStr for EfiFlavour {
    type Err = UnknownFlavour;

    fn from_str(s: &str) -> Result<Self, UnknownFlavour> {
        match s {
            "snponly" => Ok(Self::SnpOnly),
            "ipxe" => Ok(Self::Full),
            _ => Err(UnknownFlavour(s.to_string())),
        }
    }
}

/// The iPXE file a client of `arch` should be sent, by its usual name.
pub fn binary_name(arch: ClientArch, efi: EfiFlavour) -> &'static str {
    match (arch, efi) {
        (ClientArch::BiosX86, _) => "undionly.kpxe",
        (ClientArch::EfiIa32, EfiFlavour::SnpOnly) => "snponly-i386.efi",
        (ClientArch::EfiIa32, EfiFlavour::Full) => "ipxe-i386.efi",
        (ClientArch::EfiX64 | ClientArch::EfiX64Http, EfiFlavour::SnpOnly) => "snponly.efi",
        (ClientArch::EfiX64 | ClientArch::EfiX64Http, EfiFlavour::Full) => "ipxe.efi",
        (ClientArch::EfiArm64 | ClientArch::EfiArm64Http, EfiFlavour::SnpOnly) => {
            "snponly-arm64.efi"
        }
        (ClientArch::EfiArm64 | ClientArch::EfiArm64Http, EfiFlavour::Full) => "ipxe-arm64.efi",
    }
}

/// Debian's `ipxe` package puts its binaries here.
pub const DEFAULT_BINARY_DIR: &str = "/usr/lib/ipxe";

/// Finds the binary for `arch` in `dir`: `None` when the operator has not
/// provided one (arm64 builds are not in Debian's amd64 package).
pub fn find_binary(dir: &Path, arch: ClientArch, efi: EfiFlavour) -> Option<PathBuf> {
    let path = dir.join(binary_name(arch, efi));
    path.is_file().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option93_codes_map_to_binaries() {
        let bios = ClientArch::from_option93(0).expect("bios");
        assert_eq!(binary_name(bios, EfiFlavour::default()), "undionly.kpxe");
        for code in [7, 9] {
            let x64 = ClientArch::from_option93(code).expect("x64");
            assert_eq!(binary_name(x64, EfiFlavour::SnpOnly), "snponly.efi");
            assert_eq!(binary_name(x64, EfiFlavour::Full), "ipxe.efi");
        }
        assert!(ClientArch::from_option93(16).expect("http").is_http());
        assert_eq!(ClientArch::from_option93(2), None);
    }

    #[test]
    fn finds_only_present_binaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("undionly.kpxe"), b"x").expect("write");
        assert!(find_binary(dir.path(), ClientArch::BiosX86, EfiFlavour::SnpOnly).is_some());
        assert!(find_binary(dir.path(), ClientArch::EfiArm64, EfiFlavour::SnpOnly).is_none());
    }
}
