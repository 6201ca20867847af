//! The key of the state's large maps (tasks and agents by id): a `String`, ordered exactly as strings are, but
//! compared eight bytes at a time in registers. A lookup in a `BTreeMap<String, _>` of 100,000 tasks compares
//! about forty keys, each through a call to `memcmp`: with every status, placement and index change looking tasks
//! up several times, that was a quarter of each member's CPU under load. The order (and so every iteration, list
//! and snapshot) is unchanged, and a key encodes as the string it holds.
//!
//! Look up with `Id::of(id)` to get the fast comparison; a plain `&str` works too (`Key: Borrow<str>`), with
//! `str`'s.

use std::borrow::Borrow;
use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// An owned key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(String);

/// A borrowed key: what maps of `Key`s are searched with.
#[derive(Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Id(str);

impl Id {
    pub fn of(s: &str) -> &Id {
        // SAFETY: `Id` is `repr(transparent)` over `str`, so the two references have the same layout and validity.
        unsafe { &*(s as *const str as *const Id) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Byte order, as `[u8]::cmp`, eight bytes at a time.
fn compare(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_be_bytes(a[i..i + 8].try_into().expect("eight bytes"));
        let y = u64::from_be_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        if x != y {
            return x.cmp(&y);
        }
        i += 8;
    }
    while i < n {
        if a[i] != b[i] {
            return a[i].cmp(&b[i]);
        }
        i += 1;
    }
    a.len().cmp(&b.len())
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> Ordering {
        compare(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        compare(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Borrow<Id> for Key {
    fn borrow(&self) -> &Id {
        Id::of(&self.0)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(s)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key(s.to_string())
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_order_as_strings_do() {
        let words = [
            "",
            "a",
            "ab",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgi",
            "abcdefg",
            "sim-00001",
            "sim-00010",
            "sim-0001",
            "é",
            "e\u{301}",
            "0f5e9b1c-8c1d-4f44-9a1e-1b2c3d4e5f60",
            "0f5e9b1c-8c1d-4f44-9a1e-1b2c3d4e5f6",
            "zzzzzzzzzzzzzzzzz",
            "zzzzzzzzzzzzzzzzy",
        ];
        for a in words {
            for b in words {
                assert_eq!(Key::from(a).cmp(&Key::from(b)), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(Id::of(a).cmp(Id::of(b)), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn a_map_of_keys_is_searched_either_way_and_encodes_as_strings() {
        let map: BTreeMap<Key, u32> = [("t2", 2), ("t1", 1), ("t10", 10)].map(|(k, v)| (Key::from(k), v)).into();
        assert_eq!(map.get(Id::of("t10")), Some(&10));
        assert_eq!(map.get("t1"), Some(&1));
        assert_eq!(map.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["t1", "t10", "t2"]);
        let plain: BTreeMap<String, u32> = map.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(rmp_serde::to_vec_named(&map).unwrap(), rmp_serde::to_vec_named(&plain).unwrap());
        assert_eq!(serde_json::to_string(&map).unwrap(), serde_json::to_string(&plain).unwrap());
    }
}
