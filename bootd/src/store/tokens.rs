//! API bearer tokens (`bootd token add|list|rm`, `serve --api-listen`).
//! The registry keeps only each token's SHA-256; the token itself is
//! printed once by `token add`. Token writes do not move the generation:
//! they change nothing serve serves.

use super::Result;

/// A stored token: its name, what it may do and when it was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    /// Hex SHA-256 of the token. Never printed: `token list` and the API
    /// show the other fields only.
    pub sha256: String,
    /// May read, may not change anything.
    pub read_only: bool,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds of the last request it authorised (recorded at most
    /// once a minute); `None` = never used.
    pub last_used: Option<i64>,
}

pub trait Tokens {
    /// Stores a token by name; `Duplicate` if the name (or hash) exists.
    fn add_token(&mut self, name: &str, sha256: &str, read_only: bool) -> Result<TokenInfo>;
    /// Every token, by name.
    fn tokens(&self) -> Result<Vec<TokenInfo>>;
    /// `NotFound` if there is none of that name.
    fn remove_token(&mut self, name: &str) -> Result<TokenInfo>;
    /// Sets the token's `last_used` to `at` (Unix seconds).
    fn token_used(&mut self, name: &str, at: i64) -> Result<()>;
}

pub(super) const SELECT: &str =
    "SELECT name, sha256, read_only, created, last_used FROM api_tokens";

pub(super) fn duplicate(name: &str) -> super::StoreError {
    super::StoreError::Duplicate {
        kind: "token",
        field: "name",
        value: name.to_string(),
    }
}
