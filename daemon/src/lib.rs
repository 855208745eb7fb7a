//! Tern's daemon library: the certificate authority, the pairing service that runs the
//! daemon's side of pairing against it, and the revocation set the transports consult.

pub mod ca;
pub mod pairing;
pub mod revocation;
