//! Which server a node should be on: rendezvous (highest random weight)
//! hashing over the live servers, unless the node is pinned to a live
//! server. Every server computes it alone from the same inputs and gets the
//! same answer; adding a server moves only the nodes that now hash highest
//! on it, removing one moves only its own.
//!
//! The hash is SHA-256, not the standard library's hasher: servers running
//! different bootd builds must agree on it.

use sha2::{Digest, Sha256};

/// The weight of `server` for `node`.
fn weight(node: &str, server: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    // A separator no name contains: ("ab", "c") and ("a", "bc") differ.
    h.update([0u8]);
    h.update(server.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The server `node` should be on: `pinned` if it is among `live`, else
/// the live server with the highest weight (ties, which SHA-256 makes
/// vanishingly rare, go to the smaller id). `None` when nothing is live.
pub fn owner<'a>(node: &str, pinned: Option<&str>, live: &[&'a str]) -> Option<&'a str> {
    if let Some(p) = pinned {
        if let Some(s) = live.iter().find(|s| **s == p) {
            return Some(s);
        }
    }
    live.iter()
        .copied()
        .max_by(|a, b| weight(node, a).cmp(&weight(node, b)).then_with(|| b.cmp(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:05}")).collect()
    }

    #[test]
    fn nodes_spread_over_the_servers() {
        let servers = ["a", "b", "c"];
        let mut count = [0usize; 3];
        for n in names(3000) {
            let o = owner(&n, None, &servers).unwrap_or_default();
            let i = servers.iter().position(|s| *s == o).unwrap_or(usize::MAX);
            count[i] += 1;
        }
        // Expect 1000 each; a fair hash stays well inside 800..1200.
        for c in count {
            assert!((800..1200).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn a_pin_wins_while_its_server_is_live() {
        let live = ["a", "b", "c"];
        for n in names(50) {
            assert_eq!(owner(&n, Some("b"), &live), Some("b"));
            // A dead (or unknown) pinned server: the hash decides.
            assert_eq!(owner(&n, Some("d"), &live), owner(&n, None, &live));
        }
        assert_eq!(owner("x", None, &[]), None);
        assert_eq!(owner("x", Some("a"), &[]), None);
    }

    #[test]
    fn the_order_of_the_live_list_does_not_matter() {
        for n in names(200) {
            assert_eq!(
                owner(&n, None, &["a", "b", "c"]),
                owner(&n, None, &["c", "a", "b"])
            );
        }
    }

    proptest! {
        /// Adding a server moves only nodes onto it; no node moves between
        /// the servers that were there. Removing it puts them back.
        #[test]
        fn adding_a_server_moves_only_its_share(
            servers in proptest::collection::btree_set("[a-z0-9]{1,8}", 1..6),
            extra in "[a-z0-9]{1,8}",
            seed in 0u32..1000,
        ) {
            prop_assume!(!servers.contains(&extra));
            let before: Vec<&str> = servers.iter().map(String::as_str).collect();
            let mut after = before.clone();
            after.push(&extra);
            let nodes: Vec<String> = (0..500).map(|i| format!("n{seed}-{i}")).collect();
            let mut moved = 0usize;
            for n in &nodes {
                let (b, a) = (owner(n, None, &before), owner(n, None, &after));
                if a != b {
                    prop_assert_eq!(a, Some(extra.as_str()));
                    moved += 1;
                }
            }
            // About 1/(k+1) of the nodes move, never all of them.
            let expected = nodes.len() / after.len();
            prop_assert!(moved < expected * 2 + 25, "{} moved, expected about {}", moved, expected);
        }
    }
}
