//! The image store's error type.

use blockdev::BlockError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The image uses a feature this engine does not implement.
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    /// The image's metadata is inconsistent or out of bounds.
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    /// The backing device passed to open does not fit the overlay.
    #[error("backing image mismatch: {0}")]
    Backing(String),
    #[error(transparent)]
    Block(#[from] BlockError),
}

impl From<ImageError> for BlockError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Io(e) => BlockError::Io(e),
            ImageError::Block(b) => b,
            other => BlockError::Io(std::io::Error::other(other.to_string())),
        }
    }
}
