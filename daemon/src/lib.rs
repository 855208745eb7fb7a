//! Tern's daemon (`ternd`): the certificate authority and pairing service, the state
//! store, the node runtime, the operator API and CLI, and the Linux node host.

pub mod api;
pub mod ca;
pub mod cli;
pub mod model;
pub mod node_host;
pub mod pairing;
pub mod pairing_responder;
pub mod revocation;
pub mod runtime;
pub mod serve;
pub mod store;
