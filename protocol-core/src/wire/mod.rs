//! The node protocol's messages, their encoding, and version negotiation.
//!
//! One frame carries one [`Message`], postcard-encoded. Decoding borrows strings and
//! byte payloads from the frame, so a microcontroller decodes without allocating.

mod capabilities;
mod codec;
mod messages;
mod version;

pub use capabilities::{Capabilities, CapabilityIter, MAX_CAPABILITIES, TooManyCapabilities};
pub use codec::{DecodeError, EncodeError, decode_message, encode_message, encode_payload};
pub(crate) use codec::{decode_exact, encode_framed, encode_into};
pub use messages::*;
pub use version::{PROTOCOL_VERSIONS, VersionMismatch, VersionRange, negotiate};
