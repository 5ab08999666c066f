//! Tags, branches and Call-IDs (RFC 3261 §19.3: at least 32 bits of
//! randomness). The endpoint and each registration own a source, seeded from
//! the OS in production and from a fixed seed in tests, so that a simulated
//! run is reproducible bit for bit.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A source of random tokens. Interior mutability lets response builders that
/// only read the endpoint (`&self`) still draw a To tag.
#[derive(Debug)]
pub struct Tokens(RefCell<StdRng>);

impl Tokens {
    /// Seeded from the operating system.
    pub fn from_os() -> Self {
        Tokens(RefCell::new(StdRng::from_os_rng()))
    }

    /// Seeded for a reproducible run.
    pub fn from_seed(seed: u64) -> Self {
        Tokens(RefCell::new(StdRng::seed_from_u64(seed)))
    }

    /// `len` characters of `[a-z0-9]` (about 5.2 bits each).
    pub fn token(&self, len: usize) -> String {
        let mut rng = self.0.borrow_mut();
        (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
    }

    /// 32 random bytes (a key).
    pub fn key(&self) -> [u8; 32] {
        self.0.borrow_mut().random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sources_repeat_and_tokens_use_the_alphabet() {
        let (a, b) = (Tokens::from_seed(7), Tokens::from_seed(7));
        let ta: Vec<String> = (0..5).map(|_| a.token(16)).collect();
        let tb: Vec<String> = (0..5).map(|_| b.token(16)).collect();
        assert_eq!(ta, tb);
        assert!(ta.iter().all(|t| t.len() == 16 && t.bytes().all(|c| ALPHABET.contains(&c))));
        assert_ne!(ta[0], ta[1]);
        assert_ne!(Tokens::from_os().token(16), Tokens::from_os().token(16));
    }
}
