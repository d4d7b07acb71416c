//! Session ids: 256 random bits, base64url, opaque to the browser. The store only ever
//! sees their SHA-256 (`IdHash`), so a store dump cannot be replayed as cookies.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::random;

/// A session id as held in the browser's cookie. Cannot be printed: `Debug` shows a
/// short hash only.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(Zeroizing<String>);

impl SessionId {
    /// A fresh id from the CSPRNG.
    pub fn generate() -> Self {
        Self(Zeroizing::new(random::random_token()))
    }

    /// Accepts only the exact shape `generate` produces (43 base64url characters that
    /// decode to 32 bytes); anything else is not a session id and never reaches the store.
    pub fn parse(value: &str) -> Option<Self> {
        let ok = value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && URL_SAFE_NO_PAD
                .decode(value)
                .is_ok_and(|bytes| bytes.len() == 32);
        ok.then(|| Self(Zeroizing::new(value.to_owned())))
    }

    /// The value to put in the cookie. Only the cookie writer should call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the id: the only form the store keeps.
    pub fn hash(&self) -> IdHash {
        IdHash(random::sha256_hex(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({})", self.hash().short())
    }
}

/// SHA-256 of a session id, lower-case hex. Safe to store and to log in short form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdHash(String);

impl IdHash {
    /// Wraps a hash read back from the store.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The handle shown to admins and written to logs: the first 12 hex digits.
    pub fn short(&self) -> &str {
        // `get`: a value read back from the store is not trusted to be ASCII.
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::fmt::Display for IdHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_round_trip() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse(id.expose()), Some(id.clone()));
        assert_eq!(id.hash().as_str().len(), 64);
        assert!(!format!("{id:?}").contains(id.expose()));
    }

    #[test]
    fn odd_values_are_not_ids() {
        for bad in [
            "",
            "*",
            "%",
            "a\r\nSet-Cookie: x",
            "../../etc/passwd",
            "' OR 1=1 --",
            &"A".repeat(42),
            &"A".repeat(44),
            "\u{200b}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_43_char_ids(s in ".{0,100}") {
            if let Some(id) = SessionId::parse(&s) {
                prop_assert_eq!(id.expose().len(), 43);
            }
        }
    }
}
