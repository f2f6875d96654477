//! Nix's own base32 ("nix32"): a 32-letter alphabet without e, o, t, u, whose digits are
//! emitted from the last bit group to the first. Store path hashes and narinfo hashes use it.

use thiserror::Error;

/// The alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Nix32Error {
    #[error("invalid nix32 character {0:?}")]
    InvalidChar(char),
    #[error("nix32 string of {0} characters does not encode a whole number of bytes")]
    BadLength(usize),
}

/// Number of nix32 characters needed for `len` bytes.
pub fn encoded_len(len: usize) -> usize {
    if len == 0 { 0 } else { (len * 8 - 1) / 5 + 1 }
}

/// Encodes bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() {
            // Shifting a u8 by 8 would overflow; for j == 0 the high part is unused anyway.
            ((bytes[i + 1] as u16) << (8 - j)) as u8
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Decodes nix32. Rejects characters outside the alphabet, lengths that no byte count
/// produces, and set bits beyond the last byte (so every byte string has exactly one form).
pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let size = s.len() * 5 / 8;
    if encoded_len(size) != s.len() {
        return Err(Nix32Error::BadLength(s.len()));
    }
    let mut out = vec![0u8; size];
    for (n, c) in s.bytes().rev().enumerate() {
        let d = digit(c).ok_or(Nix32Error::InvalidChar(c as char))?;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= d << j;
        let carry = ((d as u16) >> (8 - j)) as u8;
        if i + 1 < size {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Nix32Error::InvalidChar(c as char));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors_from_nix() {
        // sha256("") as Nix prints it with `nix-hash --type sha256 --to-base32`.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            encode(&bytes),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("e"), Err(Nix32Error::BadLength(1)));
        assert!(matches!(
            decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e"),
            Err(Nix32Error::InvalidChar('e'))
        ));
        // 52 chars encode 32 bytes with 4 spare bits in the first digit: they must be zero.
        assert!(decode("zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,80}") {
            let _ = decode(&s);
        }
    }
}
