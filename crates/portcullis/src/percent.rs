//! The gateway's one percent-decoder (RFC 3986 §2.1), on the `percent-encoding` crate.
//! Callers decide what to refuse on top: the path rules (`crate::path`) refuse encoded
//! separators and double encoding, `return_to` (`session::return_to`) judges the raw
//! and the decoded form alike.

/// Something in a raw string that decoding would turn into something else: a `%XX`
/// escape and the byte it stands for, a `%` that starts no valid escape, or a byte
/// from `also` (as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Escape(u8),
    BadEscape,
    Byte(u8),
}

/// Every escape in `raw`, and every occurrence of a byte of `also`, in order.
pub fn scan<'a>(raw: &'a str, also: &'a [u8]) -> impl Iterator<Item = Found> + 'a {
    raw.bytes()
        .enumerate()
        .filter(move |(_, b)| *b == b'%' || also.contains(b))
        .map(move |(i, b)| {
            if b != b'%' {
                return Found::Byte(b);
            }
            let escape = raw.as_bytes().get(i..i + 3).unwrap_or_default();
            let mut decoded = percent_encoding::percent_decode(escape);
            match (decoded.next(), decoded.next(), escape.len()) {
                (Some(byte), None, 3) => Found::Escape(byte),
                _ => Found::BadEscape,
            }
        })
}

/// `raw` with every `%XX` escape decoded once; a `%` that starts no escape stays.
pub fn decode_once(raw: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(raw).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_found_in_order_and_decoded_once() {
        let found: Vec<Found> = scan("/a%2Fb%zz\\%25%4", b"\\").collect();
        assert_eq!(
            found,
            [
                Found::Escape(b'/'),
                Found::BadEscape,
                Found::Byte(b'\\'),
                Found::Escape(b'%'),
                Found::BadEscape,
            ]
        );
        assert_eq!(decode_once("/a%2Fb%2541%zz"), b"/a/b%41%zz");
    }
}
