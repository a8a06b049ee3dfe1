//! Certificate fingerprints: the SHA-256 of a DER certificate, the only thing peers pin.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::NetError;

/// The text every fingerprint starts with.
const PREFIX: &str = "sha256:";
/// Bytes in a SHA-256 digest.
const LEN: usize = 32;

/// SHA-256 of a DER-encoded certificate, shown as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate given in DER form.
    pub fn of_der(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", hex::encode(self.0))
    }
}

impl FromStr for Fingerprint {
    type Err = NetError;

    /// Accepts `sha256:` (any case) followed by 64 hex digits (any case), optionally written in
    /// colon-separated pairs as `openssl x509 -fingerprint -sha256` prints them.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadFingerprint {
            input: input.to_owned(),
        };
        let trimmed = input.trim();
        let (prefix, digits) = trimmed.split_at_checked(PREFIX.len()).ok_or_else(bad)?;
        if !prefix.eq_ignore_ascii_case(PREFIX) {
            return Err(bad());
        }
        let hex_digits = strip_pair_separators(digits).ok_or_else(bad)?;
        let mut bytes = [0u8; LEN];
        hex::decode_to_slice(&hex_digits, &mut bytes).map_err(|_| bad())?;
        Ok(Fingerprint(bytes))
    }
}

/// `AB:CD:…` → `ABCD…`; text without colons is returned unchanged. `None` when colons are present
/// but do not separate pairs of characters (a mangled copy is better refused than guessed at).
fn strip_pair_separators(digits: &str) -> Option<String> {
    if !digits.contains(':') {
        return Some(digits.to_owned());
    }
    let pairs: Vec<&str> = digits.split(':').collect();
    if pairs.iter().all(|pair| pair.len() == 2) {
        Some(pairs.concat())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_prefixed_lowercase_hex() {
        let fp = Fingerprint([0xAB; 32]);
        assert_eq!(fp.to_string(), format!("sha256:{}", "ab".repeat(32)));
    }

    #[test]
    fn rejects_short_long_and_odd_inputs() {
        for input in [
            "",
            "sha256:",
            "sha256",
            "sha1:abcd",
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}", "a".repeat(66)),
            &format!("sha256:{}", "g".repeat(64)),
            &"a".repeat(64),
            &format!("sha256:{}", "abc:".repeat(16)),
            "sha256:é",
        ] {
            let err = input.parse::<Fingerprint>().unwrap_err();
            assert!(
                matches!(err, NetError::BadFingerprint { .. }),
                "{input:?}: {err}"
            );
        }
    }
}
