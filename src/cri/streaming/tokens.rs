//! Single-use tokens that name a pending stream request in a URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// 192 random bits: unguessable, and URL-safe once base64url-encoded.
const TOKEN_BYTES: usize = 24;

/// Pending requests by token. A token is given out once, taken at most once,
/// and forgotten after `ttl` if nobody takes it.
pub struct TokenCache<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> TokenCache<T> {
    pub fn new(ttl: Duration) -> Self {
        TokenCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    pub fn insert(&self, value: T) -> String {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; TOKEN_BYTES]>());
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        entries.insert(token.clone(), (now + self.ttl, value));
        token
    }

    /// The request behind `token`, unless it was taken already or expired.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (expires, value) = entries.remove(token)?;
        (expires > Instant::now()).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_serves_once() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let token = cache.insert("exec");
        assert_eq!(cache.take(&token), Some("exec"));
        assert_eq!(cache.take(&token), None);
    }

    #[test]
    fn tokens_are_long_url_safe_and_distinct() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let (first, second) = (cache.insert(1), cache.insert(2));
        assert_ne!(first, second);
        assert!(first.len() * 6 >= 128);
        assert!(first.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{first}");
        assert_eq!(cache.take(&second), Some(2));
        assert_eq!(cache.take(&first), Some(1));
    }

    #[test]
    fn an_unused_token_expires() {
        let cache = TokenCache::new(Duration::from_millis(30));
        let token = cache.insert("attach");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.take(&token), None);
    }

    #[test]
    fn unknown_tokens_get_nothing() {
        let cache: TokenCache<u8> = TokenCache::new(Duration::from_secs(60));
        assert_eq!(cache.take(""), None);
        assert_eq!(cache.take("not-a-token"), None);
    }
}
