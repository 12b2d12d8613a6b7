//! Content digests (`sha256:<64 hex>`), the identity of every blob berth stores.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A verified-form `sha256:<hex>` digest. Other algorithms are refused: the
/// registries and images berth serves all use sha256, and accepting a digest we
/// cannot verify would let unverified bytes into the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestError {
    pub value: String,
    pub reason: &'static str,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest { hex: hex::encode(hasher.finalize()) }
    }

    /// Parses a bare 64-character lowercase hex string.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let err = |reason| DigestError { value: hex.to_string(), reason };
        if hex.len() != 64 {
            return Err(err("sha256 hex must be 64 characters"));
        }
        if !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err("sha256 hex must be lowercase hexadecimal"));
        }
        Ok(Digest { hex: hex.to_string() })
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 12-character prefix that Docker and crictl show as a short id.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex)) => Digest::from_hex(hex).map_err(|e| DigestError { value: s.to_string(), ..e }),
            Some(_) => Err(DigestError { value: s.to_string(), reason: "only sha256 digests are supported" }),
            None => Err(DigestError { value: s.to_string(), reason: "expected algorithm:hex" }),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hashes() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn rejects_malformed() {
        assert!("sha512:abcd".parse::<Digest>().is_err());
        assert!("sha256:ABCD".parse::<Digest>().is_err());
        assert!("e3b0c44298fc".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "G".repeat(64)).parse::<Digest>().is_err());
    }
}
