//! A set that remembers only its last `capacity` entries, oldest forgotten first.
//!
//! The host keeps several such memories of the recent past, each bounded so that a host
//! running for months does not grow with every call it ever saw: channels that recently left
//! Stasis (a late listing or a redelivered StasisStart must not revive them) and fingerprints
//! of events already handled (a redelivery must not repeat their side effects).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// See the module docs.
pub struct Recent<T> {
    set: HashSet<T>,
    order: VecDeque<T>,
    capacity: usize,
}

impl<T: Hash + Eq + Clone> Recent<T> {
    pub fn new(capacity: usize) -> Recent<T> {
        Recent {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Remembers `item`, forgetting the oldest entry beyond the capacity.
    pub fn insert(&mut self, item: T) {
        if !self.set.insert(item.clone()) {
            return;
        }
        self.order.push_back(item);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }

    pub fn contains<Q>(&self, item: &Q) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.set.contains(item)
    }

    /// Forgets `item` now.
    pub fn remove<Q>(&mut self, item: &Q)
    where
        T: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.set.remove(item) {
            self.order.retain(|o| o.borrow() != item);
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity_and_on_request() {
        let mut recent = Recent::new(3);
        for n in 0..5u64 {
            recent.insert(n);
        }
        recent.insert(4);
        assert!(!recent.contains(&0) && !recent.contains(&1));
        assert!(recent.contains(&2) && recent.contains(&4));
        assert_eq!(recent.len(), 3);
        recent.remove(&3);
        assert!(!recent.contains(&3));
        recent.insert(5);
        recent.insert(6);
        assert_eq!(recent.len(), 3, "the removed entry's slot is reused");
    }
}
