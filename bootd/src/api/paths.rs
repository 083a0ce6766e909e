//! Which server-side files an API request may name: only those in the
//! import directory (`serve --api-import-dir`). serve runs as root; a token
//! must not turn /etc/shadow into an image that a node can read.

use super::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use std::path::{Path, PathBuf};

/// The file an import may read: `asked` inside `dir` (relative paths are
/// taken from `dir`), symbolic links and `..` resolved. Anything else is
/// refused before the file is looked at, so the answer does not tell
/// whether a file outside exists.
pub fn importable(dir: &Path, asked: &Path) -> ApiResult<PathBuf> {
    use std::path::Component;
    let refused = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!(
                "{}: images are imported only from {} (serve --api-import-dir)",
                asked.display(),
                dir.display()
            ),
        )
    };
    let full = dir.join(asked);
    if !full.starts_with(dir) || full.components().any(|c| c == Component::ParentDir) {
        return Err(refused());
    }
    let root = dir.canonicalize().map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("import directory {}: {e}", dir.display()),
        )
    })?;
    let real = full.canonicalize().map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{}: {e}", asked.display()),
        )
    })?;
    if !real.starts_with(&root) {
        return Err(refused());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_directory() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("import");
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("a.raw"), b"x")?;
        std::fs::create_dir(dir.join("sub"))?;
        std::fs::write(dir.join("sub/b.raw"), b"x")?;
        std::fs::write(tmp.path().join("outside.raw"), b"x")?;
        std::os::unix::fs::symlink(tmp.path().join("outside.raw"), dir.join("link.raw"))?;
        std::os::unix::fs::symlink(dir.join("a.raw"), dir.join("inner.raw"))?;
        let ok = |p: &str| importable(&dir, Path::new(p)).map_err(|e| e.code);
        assert_eq!(ok("a.raw")?, dir.canonicalize()?.join("a.raw"));
        assert_eq!(ok("sub/b.raw")?, dir.canonicalize()?.join("sub/b.raw"));
        assert!(ok(&dir.join("a.raw").to_string_lossy()).is_ok());
        // A link that stays inside is the file it names.
        assert_eq!(ok("inner.raw")?, dir.canonicalize()?.join("a.raw"));
        for bad in [
            "../outside.raw",
            "sub/../../outside.raw",
            "link.raw",
            "/etc/passwd",
            &tmp.path().join("outside.raw").to_string_lossy(),
        ] {
            assert_eq!(ok(bad), Err("path_not_allowed"), "{bad}");
        }
        // Refused outside whether or not the file exists; inside, missing is 404.
        assert_eq!(ok("/nonexistent/x"), Err("path_not_allowed"));
        assert_eq!(ok("missing.raw"), Err("not_found"));
        Ok(())
    }
}
