//! The per-app key/value store behind the WIT `kv` interface.
//!
//! One store per app name, shared by every call and every version of the app (it lives in
//! [`AppShared`](super::AppShared)), so state survives a hot swap. In memory only: the WIT
//! contract promises sharing between calls, not durability.
//!
//! Sizes are bounded so one app cannot eat the host's memory: a write that would break a
//! bound is dropped with a warning (the WIT `set` has no error channel, and trapping the
//! guest for it would turn a quota into a crash).

use std::collections::HashMap;

use parking_lot::Mutex;

/// Bounds of one app's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most keys.
    pub max_entries: usize,
    /// Most bytes of keys plus values.
    pub max_total_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_entries: 100_000,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("key of {0} bytes exceeds the limit of {1}")]
    KeyTooLong(usize, usize),
    #[error("value of {0} bytes exceeds the limit of {1}")]
    ValueTooLong(usize, usize),
    #[error("the store holds its maximum of {0} keys")]
    TooManyEntries(usize),
    #[error("the store holds its maximum of {0} bytes")]
    Full(usize),
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, String>,
    bytes: usize,
}

/// An app's key/value store.
pub struct KvStore {
    limits: KvLimits,
    inner: Mutex<Inner>,
}

impl KvStore {
    pub fn new(limits: KvLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.inner.lock().map.get(key).cloned()
    }

    pub fn set(&self, key: &str, value: String) -> Result<(), KvError> {
        let l = &self.limits;
        if key.len() > l.max_key_bytes {
            return Err(KvError::KeyTooLong(key.len(), l.max_key_bytes));
        }
        if value.len() > l.max_value_bytes {
            return Err(KvError::ValueTooLong(value.len(), l.max_value_bytes));
        }
        let mut inner = self.inner.lock();
        let old = inner.map.get(key).map(|v| key.len() + v.len());
        if old.is_none() && inner.map.len() >= l.max_entries {
            return Err(KvError::TooManyEntries(l.max_entries));
        }
        let bytes = inner.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > l.max_total_bytes {
            return Err(KvError::Full(l.max_total_bytes));
        }
        inner.bytes = bytes;
        inner.map.insert(key.to_owned(), value);
        Ok(())
    }

    pub fn delete(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(v) = inner.map.remove(key) {
            inner.bytes -= key.len() + v.len();
        }
    }

    /// Adds `delta` to the integer at `key` under the store's lock, so concurrent calls
    /// never lose an update. An absent key or a value that is not an integer counts as 0;
    /// the sum saturates instead of wrapping.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(KvError::KeyTooLong(key.len(), self.limits.max_key_bytes));
        }
        let mut inner = self.inner.lock();
        let current = inner
            .map
            .get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let next = current.saturating_add(delta);
        let value = next.to_string();
        let old = inner.map.get(key).map(|v| key.len() + v.len());
        if old.is_none() && inner.map.len() >= self.limits.max_entries {
            return Err(KvError::TooManyEntries(self.limits.max_entries));
        }
        inner.bytes = inner.bytes - old.unwrap_or(0) + key.len() + value.len();
        inner.map.insert(key.to_owned(), value);
        Ok(next)
    }

    /// Number of keys (for admin and tests).
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_increment() {
        let kv = KvStore::new(KvLimits {
            max_key_bytes: 4,
            max_value_bytes: 4,
            max_entries: 2,
            max_total_bytes: 100,
        });
        assert!(kv.set("k", "v".into()).is_ok());
        assert!(matches!(
            kv.set("kkkkk", "v".into()),
            Err(KvError::KeyTooLong(..))
        ));
        assert!(matches!(
            kv.set("k", "vvvvv".into()),
            Err(KvError::ValueTooLong(..))
        ));
        assert_eq!(kv.increment("n", 5).unwrap(), 5);
        assert_eq!(kv.increment("n", -7).unwrap(), -2);
        assert!(matches!(
            kv.set("x", "1".into()),
            Err(KvError::TooManyEntries(2))
        ));
        assert_eq!(
            kv.increment("k", 1).unwrap(),
            1,
            "a non-integer counts as 0"
        );
        kv.delete("k");
        assert_eq!(kv.get("k"), None);
        assert_eq!(kv.len(), 1);
    }

    #[test]
    fn increment_is_atomic_across_threads() {
        let kv = std::sync::Arc::new(KvStore::new(KvLimits::default()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        kv.increment("c", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("c").as_deref(), Some("4000"));
    }
}
