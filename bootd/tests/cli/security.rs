//! Issue 11: what one machine on the boot network, or one local user, can
//! take from another: file modes of the data directory, scripts (and the
//! CHAP secrets in them) served only to their node, slot floods, the
//! registration cap, `node adopt --all` asking first.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
}

#[test]
fn data_directory_is_private() -> Result {
    let env = Env::new()?;
    let n1 = one_node(&env, "52:54:00:ab:cd:01")?;
    let data = env.data();
    assert_eq!(mode(&data)?, 0o700, "data directory");
    for sub in ["images", "overlays", "pr"] {
        assert_eq!(mode(&data.join(sub))? & 0o077, 0, "{sub}");
    }
    assert_eq!(mode(&data.join("bootd.db"))?, 0o600, "registry");
    let overlay = n1["overlay_path"].as_str().ok_or("no overlay_path")?;
    let overlay = data.join(overlay);
    assert_eq!(mode(&overlay)? & 0o077, 0, "{}", overlay.display());
    for e in std::fs::read_dir(data.join("images"))? {
        let p = e?.path();
        assert_eq!(mode(&p)? & 0o077, 0, "{}", p.display());
    }
    Ok(())
}
