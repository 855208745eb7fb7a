//! A node's capability list, carried as its encoding.
//!
//! A received list stays a slice of the frame and is decoded as it is iterated, so a
//! `Message` holding one costs a pointer and a length instead of a fixed array of
//! descriptors on a microcontroller's stack. The list is validated once, when the message
//! is decoded (every descriptor decodes and is encoded canonically, at most
//! [`MAX_CAPABILITIES`] of them): iteration cannot fail afterwards.

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec::canonical_len;
use super::messages::CapabilityDescriptor;

/// Most capabilities one node announces.
pub const MAX_CAPABILITIES: usize = 32;

/// More than [`MAX_CAPABILITIES`] descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyCapabilities {
    pub count: usize,
}

impl core::fmt::Display for TooManyCapabilities {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} capabilities announced; at most {MAX_CAPABILITIES} are accepted",
            self.count
        )
    }
}

impl core::error::Error for TooManyCapabilities {}

/// Capability descriptors: either a list a sender built, or the encoding a receiver got.
#[derive(Clone, Copy)]
pub struct Capabilities<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    List(&'a [CapabilityDescriptor<'a>]),
    /// Concatenated postcard encodings of `count` descriptors, already validated.
    Encoded {
        bytes: &'a [u8],
        count: usize,
    },
}

impl<'a> Capabilities<'a> {
    pub const EMPTY: Capabilities<'static> = Capabilities(Repr::List(&[]));

    /// A list to send.
    pub fn new(list: &'a [CapabilityDescriptor<'a>]) -> Result<Self, TooManyCapabilities> {
        if list.len() > MAX_CAPABILITIES {
            return Err(TooManyCapabilities { count: list.len() });
        }
        Ok(Self(Repr::List(list)))
    }

    pub fn len(&self) -> usize {
        match self.0 {
            Repr::List(list) => list.len(),
            Repr::Encoded { count, .. } => count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> CapabilityIter<'a> {
        CapabilityIter(self.0)
    }
}

impl<'a> IntoIterator for Capabilities<'a> {
    type Item = CapabilityDescriptor<'a>;
    type IntoIter = CapabilityIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterates descriptors, decoding received ones on the fly.
#[derive(Debug, Clone)]
pub struct CapabilityIter<'a>(Repr<'a>);

impl<'a> Iterator for CapabilityIter<'a> {
    type Item = CapabilityDescriptor<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Repr::List(list) => {
                let (first, rest) = list.split_first()?;
                *list = rest;
                Some(*first)
            }
            Repr::Encoded { bytes, count } => {
                // Validated at decode time, so an error here cannot happen; end quietly.
                let (item, rest) = postcard::take_from_bytes(bytes).ok()?;
                *bytes = rest;
                *count -= 1;
                Some(item)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = Capabilities(self.0).len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for CapabilityIter<'_> {}

impl core::fmt::Debug for Capabilities<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl core::fmt::Debug for Repr<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(CapabilityIter(*self)).finish()
    }
}

impl PartialEq for Capabilities<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Capabilities<'_> {}

/// Counts the descriptors in an encoded list, refusing anything malformed, non-canonical or
/// too long.
fn validate(mut bytes: &[u8]) -> Result<usize, &'static str> {
    let mut count = 0;
    while !bytes.is_empty() {
        let (descriptor, rest) = postcard::take_from_bytes::<CapabilityDescriptor<'_>>(bytes)
            .map_err(|_| "malformed capability descriptor")?;
        // The list is re-encoded as received, so the message-level check cannot see a
        // padded varint in here; the same length argument holds per descriptor.
        if canonical_len(&descriptor) != Some(bytes.len() - rest.len()) {
            return Err("non-canonical capability descriptor");
        }
        bytes = rest;
        count += 1;
        if count > MAX_CAPABILITIES {
            return Err("too many capabilities");
        }
    }
    Ok(count)
}

// Wire form: a byte string (varint length, then the descriptors' encodings back to back).
impl Serialize for Capabilities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list = match self.0 {
            Repr::Encoded { bytes, .. } => return s.serialize_bytes(bytes),
            Repr::List(list) => list,
        };
        let mut len = 0;
        for c in list {
            len += postcard::serialize_with_flavor(c, postcard::ser_flavors::Size::default())
                .map_err(|_| S::Error::custom("capability descriptor does not encode"))?;
        }
        // A sequence of `len` u8 is byte-for-byte a byte string in postcard; it lets the
        // descriptors be written straight through without a scratch buffer.
        let mut seq = s.serialize_seq(Some(len))?;
        let mut failed = None;
        for c in list {
            let forward = Forward {
                seq: &mut seq,
                failed: &mut failed,
            };
            if postcard::serialize_with_flavor(c, forward).is_err() {
                return Err(failed.unwrap_or_else(|| S::Error::custom("descriptor encoding")));
            }
        }
        seq.end()
    }
}

struct Forward<'s, T: SerializeSeq> {
    seq: &'s mut T,
    failed: &'s mut Option<T::Error>,
}

impl<T: SerializeSeq> postcard::ser_flavors::Flavor for Forward<'_, T> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.seq.serialize_element(&byte).map_err(|e| {
            *self.failed = Some(e);
            postcard::Error::SerializeBufferFull
        })
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Capabilities<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <&'de [u8]>::deserialize(d)?;
        let count = validate(bytes).map_err(D::Error::custom)?;
        Ok(Self(Repr::Encoded { bytes, count }))
    }
}
