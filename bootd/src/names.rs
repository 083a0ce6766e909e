//! Names and identities: MAC normalisation, name rules, the IQNs and CHAP
//! secrets a node gets.

use anyhow::{bail, Result};
use rand::Rng;

const IQN_PREFIX: &str = "iqn.2026-11.io.bootd";
/// RFC 7143 wants 12 to 16 bytes; 16 is the most every initiator accepts.
const CHAP_SECRET_LEN: usize = 16;

/// Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff` and
/// `aabbccddeeff`; returns lower-case colon form.
pub fn normalize_mac(input: &str) -> Result<String> {
    Ok(input.parse::<bootd_plan::Mac>()?.to_string())
}

/// A stable 64-bit id for VPD designators (serial, NAA): FNV-1a of the
/// text, so a node's disk keeps its identity across restarts.
pub fn stable_id(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Node names end up in IQNs, file names and host names: a DNS label.
pub fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "node name {name:?} is invalid: use 1 to 63 lower-case letters, digits and '-' \
             (not at either end)"
        );
    }
    Ok(())
}

/// Image and template names end up in file names.
pub fn check_image_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['.', '-']);
    if !ok {
        bail!(
            "{kind} name {name:?} is invalid: use 1 to 64 letters, digits, '-', '_' and '.' \
             (not starting with '.' or '-')"
        );
    }
    Ok(())
}

pub fn default_node_name(mac: &str) -> String {
    format!("node-{}", mac.replace(':', ""))
}

pub fn target_iqn(node: &str) -> String {
    format!("{IQN_PREFIX}:node.{node}")
}

pub fn initiator_iqn(node: &str) -> String {
    format!("{IQN_PREFIX}:initiator.{node}")
}

/// Letters and digits only, so it survives URLs, iPXE scripts and shells.
pub fn chap_secret() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(CHAP_SECRET_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_normalise() -> Result<()> {
        for m in [
            "52:54:00:AB:cd:01",
            "52-54-00-ab-CD-01",
            "5254.00ab.cd01",
            "525400ABCD01",
        ] {
            assert_eq!(normalize_mac(m)?, "52:54:00:ab:cd:01");
        }
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "zz:54:00:ab:cd:01",
            "52 54 00 ab cd 01",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn names() {
        assert!(check_node_name("node-525400abcd01").is_ok());
        assert!(check_node_name("Node").is_err());
        assert!(check_node_name("-a").is_err());
        assert!(check_node_name("a/b").is_err());
        assert!(check_image_name("image", "debian-12.5_x86").is_ok());
        assert!(check_image_name("image", "../x").is_err());
        assert!(check_image_name("image", "a b").is_err());
        assert_eq!(default_node_name("52:54:00:ab:cd:01"), "node-525400abcd01");
        assert_eq!(target_iqn("n1"), "iqn.2026-11.io.bootd:node.n1");
        assert_eq!(initiator_iqn("n1"), "iqn.2026-11.io.bootd:initiator.n1");
    }

    #[test]
    fn secrets_are_16_alphanumerics_and_differ() {
        let a = chap_secret();
        let b = chap_secret();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
