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
            // The cause keeps its type for whoever logs or inspects it.
            other => BlockError::Device(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metadata_error_reaches_the_block_layer_typed() {
        let b = BlockError::from(ImageError::Corrupt("L2 entry past the end".into()));
        // The message is what it was when the cause was flattened to a string.
        assert_eq!(
            b.to_string(),
            "I/O error: corrupt qcow2 image: L2 entry past the end"
        );
        let BlockError::Device(cause) = b else {
            panic!("not a device error: {b:?}");
        };
        assert!(matches!(
            cause.downcast_ref::<ImageError>(),
            Some(ImageError::Corrupt(m)) if m == "L2 entry past the end"
        ));
        // I/O and block errors pass through unwrapped.
        let io = BlockError::from(ImageError::Io(std::io::Error::other("disk")));
        assert!(matches!(io, BlockError::Io(_)));
        assert!(matches!(
            BlockError::from(ImageError::Block(BlockError::NoSpace)),
            BlockError::NoSpace
        ));
    }
}
