//! Tern's operator API contract: the protobuf messages and the `Operator` service that
//! `ternd` serves to its CLI, its web console and any HTTP client, generated from
//! `tern/operator/v1/operator.proto` (which documents the HTTP mapping).
//!
//! `no_std` with `alloc`, so the same types can serve any client.

#![no_std]
#![forbid(unsafe_code)]

/// Version 1 of the operator contract (`tern.operator.v1`).
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/tern.operator.v1.rs"));
}

pub use prost::{DecodeError, EncodeError, Message};

/// The contract version a client may name in its `Tern-Contract` header. Changed whenever a change to the
/// messages would be misread by a peer built against the previous version.
pub const CONTRACT_VERSION: u32 = 1;

/// The `.proto` source of the contract, for clients in other languages.
pub const OPERATOR_PROTO: &str = include_str!("../tern/operator/v1/operator.proto");

/// The compiled descriptors of the contract (a `FileDescriptorSet`, with its imports):
/// what the daemon reads the JSON mapping, the OpenAPI document and each method's role
/// from.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/operator.fds"));
