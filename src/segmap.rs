//! A hash map split into [`SEGMENTS`] smaller maps, so that growing never stalls a shard.
//!
//! A `HashMap` grows by moving every entry into a table twice the size, all at once. For the maps
//! that grow with traffic — idempotency keys, payments, received transfers — that is tens of
//! milliseconds at a few hundred thousand entries and more later, during which the shard's
//! executor serves nothing (measured with glommio's stall detector: 50 ms at ~500 000 keys). Split
//! into segments chosen by a hash of the key, each resize moves 1/[`SEGMENTS`] of the entries.
//!
//! The segment is chosen with FNV-1a, not the maps' keyed SipHash: a client who picks keys that
//! all land in one segment gets one ordinary `HashMap`, the behaviour without segments; within a
//! segment the keyed hash still protects against collisions. It serializes as one map, so the
//! snapshot format does not change.

use std::borrow::Borrow;
use std::collections::hash_map::{self, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// Segments per map (a power of two).
pub const SEGMENTS: usize = 64;

/// FNV-1a, to pick a segment.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // Fold the high bits in: FNV's low bits alone mix poorly.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn segment_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut hasher);
    (hasher.finish() as usize) & (SEGMENTS - 1)
}

/// A map of `K` to `V` in [`SEGMENTS`] `HashMap`s.
#[derive(Clone)]
pub struct SegMap<K, V> {
    segments: Box<[HashMap<K, V>]>,
    len: usize,
}

impl<K, V> Default for SegMap<K, V> {
    fn default() -> Self {
        SegMap {
            segments: (0..SEGMENTS).map(|_| HashMap::new()).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> SegMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.segments[segment_of(key)].get(key)
    }

    /// The value of `key`, to change.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.segments[segment_of(key)].get_mut(key)
    }

    /// Whether `key` is held.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.segments[segment_of(key)].contains_key(key)
    }

    /// Sets the value of `key`, returning the old one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.segments[segment_of(&key)].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.segments[segment_of(key)].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The entry of `key`, to insert or change in place.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        let segment = segment_of(&key);
        let entry = self.segments[segment].entry(key);
        Entry {
            entry,
            len: &mut self.len,
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.segments.iter().flat_map(HashMap::iter)
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.segments.iter().flat_map(HashMap::values)
    }
}

/// An entry of a [`SegMap`]: `or_insert_with` / `or_insert`, or match on [`Entry::get`].
pub struct Entry<'m, K, V> {
    entry: hash_map::Entry<'m, K, V>,
    len: &'m mut usize,
}

impl<'m, K, V> Entry<'m, K, V> {
    /// The value, inserting `make()` if the key was absent.
    pub fn or_insert_with(self, make: impl FnOnce() -> V) -> &'m mut V {
        if matches!(self.entry, hash_map::Entry::Vacant(_)) {
            *self.len += 1;
        }
        self.entry.or_insert_with(make)
    }

    /// The value, inserting `value` if the key was absent.
    pub fn or_insert(self, value: V) -> &'m mut V {
        self.or_insert_with(|| value)
    }

    /// The existing value (to change it), or `None` after inserting `value` for an absent key.
    pub fn occupied_or_insert(self, value: V) -> Option<&'m mut V> {
        match self.entry {
            hash_map::Entry::Occupied(occupied) => Some(occupied.into_mut()),
            hash_map::Entry::Vacant(vacant) => {
                *self.len += 1;
                vacant.insert(value);
                None
            }
        }
    }
}

impl<K, V> IntoIterator for SegMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<HashMap<K, V>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.segments.into_vec().into_iter().flatten()
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for SegMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut map = SegMap::new();
        for (key, value) in items {
            map.insert(key, value);
        }
        map
    }
}

impl<K: Hash + Eq, V: PartialEq> PartialEq for SegMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        // The same key is always in the same segment.
        self.len == other.len && self.segments == other.segments
    }
}

impl<K: Hash + Eq, V: Eq> Eq for SegMap<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SegMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.segments.iter().flat_map(HashMap::iter))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SegMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.segments.iter().flat_map(HashMap::iter) {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for SegMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(std::marker::PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Hash + Eq,
            V: Deserialize<'de>,
        {
            type Value = SegMap<K, V>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SegMap::new();
                while let Some((key, value)) = access.next_entry()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_hash_map() {
        let mut map = SegMap::new();
        let mut reference = HashMap::new();
        for i in 0..5000u64 {
            let key = format!("k{}", i % 3000);
            assert_eq!(map.insert(key.clone(), i), reference.insert(key, i));
            if i % 7 == 0 {
                let gone = format!("k{}", i / 2);
                assert_eq!(map.remove(&gone), reference.remove(&gone));
            }
            if i % 11 == 0 {
                let key = format!("e{}", i % 50);
                *map.entry(key.clone()).or_insert(0) += 1;
                *reference.entry(key).or_insert(0) += 1;
            }
            assert_eq!(map.len(), reference.len());
        }
        for (key, value) in &reference {
            assert_eq!(map.get(key.as_str()), Some(value));
            assert!(map.contains_key(key.as_str()));
        }
        assert_eq!(map.iter().count(), reference.len());
        let mut values: Vec<u64> = map.values().copied().collect();
        let mut expected: Vec<u64> = reference.values().copied().collect();
        values.sort_unstable();
        expected.sort_unstable();
        assert_eq!(values, expected);
        let owned: HashMap<String, u64> = map.clone().into_iter().collect();
        assert_eq!(owned, reference);
        assert_eq!(map, reference.into_iter().collect::<SegMap<_, _>>());
    }

    #[test]
    fn occupied_or_insert_counts_only_new_keys() {
        let mut map = SegMap::new();
        assert!(map.entry("a").occupied_or_insert(1).is_none());
        *map.entry("a").occupied_or_insert(5).unwrap() += 10;
        assert_eq!(map.get("a"), Some(&11));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn keys_spread_over_the_segments() {
        let mut counts = [0usize; SEGMENTS];
        for i in 0..64_000 {
            counts[segment_of(&format!("pay_{i:016x}"))] += 1;
        }
        // 1000 expected per segment.
        assert!(
            counts.iter().all(|&count| (700..1300).contains(&count)),
            "{counts:?}"
        );
    }

    #[test]
    fn serializes_exactly_as_a_hash_map() {
        let mut map = SegMap::new();
        map.insert("only".to_string(), 7u32);
        let reference: HashMap<String, u32> = [("only".to_string(), 7u32)].into_iter().collect();
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&reference).unwrap()
        );
        let back: SegMap<String, u32> = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.get("b"), Some(&2));
    }
}
