//! Persisted instants: plain milliseconds (`u64`), so stored records keep their format.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::Instant;

pub(crate) fn serialize<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
    at.as_millis().serialize(s)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
    u64::deserialize(d).map(Instant::from_millis)
}
