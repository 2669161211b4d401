//! Secret key material.
//!
//! Content keys and master keys live in [`SecretBytes`]: no `Debug`/`Display` output of the bytes,
//! zeroized on drop, readable only through [`SecretBytes::expose`] (the habit of s3s and rustls).

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes that must never be printed or outlive their use.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the caller's copy moves in, so no stray copy is left behind.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A copy of `bytes`. Prefer [`SecretBytes::new`] where the source can be moved.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut v = vec![0u8; len];
        fill_random(&mut v);
        Self(v)
    }

    /// The one way to read the secret.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.0.len())
    }
}

/// Fills `buf` from the OS CSPRNG. A machine without an entropy source cannot encrypt safely,
/// so failure is a panic, not an error to recover from.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = SecretBytes::new(vec![0xAB; 32]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab,"));
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(
            SecretBytes::random(32).expose(),
            SecretBytes::random(32).expose()
        );
    }
}
