//! A value sealed by the key ring (`session::seal`), as the store keeps it: opaque text
//! the store writes and reads back, never opens.

/// A value sealed by the key ring, as stored. Only `KeyRing::open` reveals it. Shared:
/// copying a session record (the cache hands out copies) only counts a reference.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(std::sync::Arc<str>);

impl Sealed {
    /// Wraps a value read back from the store.
    pub fn from_stored(s: String) -> Self {
        Self(s.into())
    }
    pub fn as_stored(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}
