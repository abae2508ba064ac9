//! The JSON of values that repeat from one event to the next, serialized once.
//!
//! In a signal storm one sender signals one target again and again: every record holds the
//! same two processes and the same ancestry (whose running times change once a millisecond).
//! Serializing them was most of the reader's work. A field serialized through a [`Memo`] is
//! written as the JSON made for an equal value a few records before (kept as a `RawValue`):
//! the same bytes, since what serde writes is a function of the value alone.

use std::{cell::RefCell, thread::LocalKey};

use serde::{ser::Error, Serialize, Serializer};
use serde_json::value::RawValue;

/// How many values a memo keeps: the sender and the target of a storm, with room to spare.
const ENTRIES: usize = 4;

/// The last few values of one kind, each with its JSON.
pub struct Memo<T> {
    entries: Vec<(T, Box<RawValue>)>,
    /// The entry the next new value replaces, once all are taken.
    next: usize,
}

impl<T: PartialEq + Clone + Serialize> Memo<T> {
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    /// Writes `value` to `serializer`, from the JSON kept for an equal value if there is one.
    pub fn serialize<S: Serializer>(
        &mut self,
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if let Some((_, json)) = self.entries.iter().find(|(kept, _)| kept == value) {
            return json.serialize(serializer);
        }
        let json = serde_json::value::to_raw_value(value).map_err(S::Error::custom)?;
        let written = json.serialize(serializer);
        let entry = (value.clone(), json);
        if self.entries.len() < ENTRIES {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % ENTRIES;
        }
        written
    }
}

/// [`Memo::serialize`] through this thread's memo `memo`: for `#[serde(serialize_with)]`,
/// which passes no state of its own. The reader writes events from one thread. A value met
/// while the memo is in use (one nested in another of its kind) is serialized as it is.
pub fn through<T, S>(
    memo: &'static LocalKey<RefCell<Memo<T>>>,
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error>
where
    T: PartialEq + Clone + Serialize + 'static,
    S: Serializer,
{
    memo.with(|memo| match memo.try_borrow_mut() {
        Ok(mut memo) => memo.serialize(value, serializer),
        Err(_) => value.serialize(serializer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Serialize)]
    struct Sample {
        name: String,
        n: u32,
    }

    #[test]
    fn writes_what_serde_json_writes_for_the_value_kept_or_not() {
        let mut memo = Memo::new();
        let values: Vec<Sample> = (0..12)
            .map(|i| Sample {
                name: format!("s\"{}", i % 6),
                n: i % 3,
            })
            .collect();
        // Twice over, so that later values find earlier ones kept, and some replaced.
        for value in values.iter().chain(&values) {
            let mut out = Vec::new();
            memo.serialize(value, &mut serde_json::Serializer::new(&mut out))
                .unwrap();
            assert_eq!(out, serde_json::to_vec(value).unwrap());
        }
        assert_eq!(memo.entries.len(), ENTRIES);
    }

    thread_local! {
        static NESTED: RefCell<Memo<Nested>> = const { RefCell::new(Memo::new()) };
    }

    /// A value that holds another of its kind, both through the same memo.
    #[derive(Clone, PartialEq, Serialize)]
    struct Nested {
        #[serde(serialize_with = "nested")]
        inner: Option<Box<Nested>>,
    }

    fn nested<S: Serializer>(inner: &Option<Box<Nested>>, s: S) -> Result<S::Ok, S::Error> {
        match inner {
            Some(inner) => through(&NESTED, &**inner, s),
            None => s.serialize_none(),
        }
    }

    #[test]
    fn a_value_nested_in_its_own_kind_is_written_whole() {
        let value = Nested {
            inner: Some(Box::new(Nested {
                inner: Some(Box::new(Nested { inner: None })),
            })),
        };
        let mut out = Vec::new();
        through(&NESTED, &value, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(out, br#"{"inner":{"inner":{"inner":null}}}"#);
    }
}
