//! What a paired node keeps, as one fixed-layout record in the caller's storage (a file
//! on a Linux board, a flash sector on a microcontroller).
//!
//! Layout, version 1, [`RECORD_LEN`] bytes, integers little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `TNID` |
//! | 4 | 2 | version (1) |
//! | 6 | 1 + 64 | device id: length, then UTF-8 |
//! | 71 | 32 | node key: the P-256 private scalar |
//! | 103 | 32 | server pin: SHA-256 of the daemon's certificate |
//! | 135 | 2 + 1024 | client certificate: length, then DER |
//! | 1161 | 2 + 1024 | CA certificate: length, then DER (length 0: not kept) |
//! | 2187 | 1 + 128 | daemon address (`host:port`): length, then UTF-8 |
//! | 2316 | 16 | zero |
//! | 2332 | 4 | CRC-32 (IEEE) of bytes 0..2332 |
//!
//! The length is a multiple of 32 bytes, a write unit of common flash controllers. A
//! record is read back like a peer's input: every length is checked against its field
//! before anything is used, and a bad record is a typed [`RecordError`], never a panic.

use heapless::{String, Vec};
use zeroize::Zeroize;

use crate::key::{KEY_LEN, NodeKey};
use crate::tls::Fingerprint;

/// Largest certificate an identity keeps (client or CA), DER bytes.
pub const MAX_CERT_LEN: usize = 1024;
/// Largest device id: the session's node id limit.
pub const MAX_DEVICE_ID_LEN: usize = protocol_core::session::MAX_NODE_ID;
/// Largest daemon address (`host:port`).
pub const MAX_ADDRESS_LEN: usize = 128;

/// Bytes of a stored record.
pub const RECORD_LEN: usize = 2336;
/// The record format this build writes and reads.
pub const RECORD_VERSION: u16 = 1;

const MAGIC: [u8; 4] = *b"TNID";
const VERSION_AT: usize = 4;
const DEVICE_ID_AT: usize = 6;
const KEY_AT: usize = DEVICE_ID_AT + 1 + MAX_DEVICE_ID_LEN;
const PIN_AT: usize = KEY_AT + KEY_LEN;
const CLIENT_CERT_AT: usize = PIN_AT + 32;
const CA_CERT_AT: usize = CLIENT_CERT_AT + 2 + MAX_CERT_LEN;
const ADDRESS_AT: usize = CA_CERT_AT + 2 + MAX_CERT_LEN;
const PADDING_AT: usize = ADDRESS_AT + 1 + MAX_ADDRESS_LEN;
const CHECKSUM_AT: usize = RECORD_LEN - 4;

const _: () = assert!(PADDING_AT <= CHECKSUM_AT);
const _: () = assert!(RECORD_LEN.is_multiple_of(32));
// Text lengths are stored in one byte.
const _: () = assert!(MAX_DEVICE_ID_LEN <= 255);
const _: () = assert!(MAX_ADDRESS_LEN <= 255);

/// A field given to [`Identity::new`] that the record cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityError {
    /// The device id is empty or longer than [`MAX_DEVICE_ID_LEN`] bytes.
    DeviceId { len: usize },
    /// The client certificate is empty or longer than [`MAX_CERT_LEN`] bytes.
    ClientCertificate { len: usize },
    /// The CA certificate is longer than [`MAX_CERT_LEN`] bytes.
    CaCertificate { len: usize },
    /// The daemon address is empty or longer than [`MAX_ADDRESS_LEN`] bytes.
    Address { len: usize },
}

impl core::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IdentityError::DeviceId { len } => {
                write!(
                    f,
                    "device id of {len} bytes (1 to {MAX_DEVICE_ID_LEN} allowed)"
                )
            }
            IdentityError::ClientCertificate { len } => {
                write!(
                    f,
                    "client certificate of {len} bytes (1 to {MAX_CERT_LEN} allowed)"
                )
            }
            IdentityError::CaCertificate { len } => {
                write!(
                    f,
                    "CA certificate of {len} bytes (at most {MAX_CERT_LEN} allowed)"
                )
            }
            IdentityError::Address { len } => {
                write!(
                    f,
                    "daemon address of {len} bytes (1 to {MAX_ADDRESS_LEN} allowed)"
                )
            }
        }
    }
}

impl core::error::Error for IdentityError {}

/// Why a stored record was not read as an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Nothing is stored: no bytes, or erased storage (all `0xFF` or all zero). The node
    /// is not paired.
    Blank,
    /// The bytes are not an identity record (another magic): the storage holds something
    /// else.
    Foreign,
    /// An identity record of a format this build does not read.
    UnsupportedVersion { found: u16 },
    /// An identity record that is damaged.
    Corrupt(Corruption),
}

/// What is wrong with a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Fewer bytes than [`RECORD_LEN`].
    Truncated { len: usize },
    /// The checksum does not match the content.
    Checksum,
    /// A length field exceeds its field, or a required field is empty.
    Length,
    /// A text field is not UTF-8.
    Text,
    /// The key bytes are not a P-256 private key.
    Key,
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::Blank => f.write_str("no identity stored: the node is not paired"),
            RecordError::Foreign => {
                f.write_str("the storage holds something else than an identity")
            }
            RecordError::UnsupportedVersion { found } => write!(
                f,
                "identity record version {found} is not readable (this build reads {RECORD_VERSION})"
            ),
            RecordError::Corrupt(c) => write!(f, "identity record corrupt: {c:?}"),
        }
    }
}

impl core::error::Error for RecordError {}

/// A paired node's identity: everything it needs to connect to its daemon.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    device_id: String<MAX_DEVICE_ID_LEN>,
    key: NodeKey,
    client_cert: Vec<u8, MAX_CERT_LEN>,
    ca_cert: Vec<u8, MAX_CERT_LEN>,
    server_pin: Fingerprint,
    daemon: String<MAX_ADDRESS_LEN>,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("client_cert", &Fingerprint::of(&self.client_cert))
            .field("server_pin", &self.server_pin)
            .field("daemon", &self.daemon)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from its parts, each checked against what the record holds.
    /// `ca_cert` may be empty (the node pins the daemon and needs no CA to connect).
    pub fn new(
        device_id: &str,
        key: NodeKey,
        client_cert: &[u8],
        ca_cert: &[u8],
        server_pin: Fingerprint,
        daemon: &str,
    ) -> Result<Self, IdentityError> {
        let device_id = String::try_from(device_id)
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or(IdentityError::DeviceId {
                len: device_id.len(),
            })?;
        let client_cert = Vec::from_slice(client_cert)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or(IdentityError::ClientCertificate {
                len: client_cert.len(),
            })?;
        let ca_cert = Vec::from_slice(ca_cert)
            .map_err(|_| IdentityError::CaCertificate { len: ca_cert.len() })?;
        let daemon = String::try_from(daemon)
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or(IdentityError::Address { len: daemon.len() })?;
        Ok(Self {
            device_id,
            key,
            client_cert,
            ca_cert,
            server_pin,
            daemon,
        })
    }

    /// The device id the client certificate names: the session's node id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The node's client certificate, DER.
    pub fn client_cert(&self) -> &[u8] {
        &self.client_cert
    }

    /// The daemon's CA certificate, DER; empty if not kept.
    pub fn ca_cert(&self) -> &[u8] {
        &self.ca_cert
    }

    /// The daemon's server certificate fingerprint, checked at every connection.
    pub fn server_pin(&self) -> Fingerprint {
        self.server_pin
    }

    /// Where the daemon listens, `host:port`.
    pub fn daemon(&self) -> &str {
        &self.daemon
    }

    /// Writes the record into `record`.
    pub fn encode(&self, record: &mut [u8; RECORD_LEN]) {
        record.fill(0);
        record[..4].copy_from_slice(&MAGIC);
        put_u16(record, VERSION_AT, RECORD_VERSION);
        put_text(record, DEVICE_ID_AT, MAX_DEVICE_ID_LEN, &self.device_id);
        record[KEY_AT..KEY_AT + KEY_LEN].copy_from_slice(&*self.key.to_bytes());
        record[PIN_AT..PIN_AT + 32].copy_from_slice(self.server_pin.as_bytes());
        put_blob(record, CLIENT_CERT_AT, &self.client_cert);
        put_blob(record, CA_CERT_AT, &self.ca_cert);
        put_text(record, ADDRESS_AT, MAX_ADDRESS_LEN, &self.daemon);
        seal(record);
    }

    /// Reads a record: the bytes a store returned (fewer than [`RECORD_LEN`] if it held
    /// fewer).
    pub fn decode(record: &[u8]) -> Result<Self, RecordError> {
        if record.is_empty() || record.iter().all(|&b| b == 0xFF) || record.iter().all(|&b| b == 0)
        {
            return Err(RecordError::Blank);
        }
        if record.get(..4) != Some(&MAGIC[..]) {
            return Err(RecordError::Foreign);
        }
        let corrupt = RecordError::Corrupt;
        let record: &[u8; RECORD_LEN] = record
            .try_into()
            .map_err(|_| corrupt(Corruption::Truncated { len: record.len() }))?;
        let version = u16::from_le_bytes([record[VERSION_AT], record[VERSION_AT + 1]]);
        if version != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion { found: version });
        }
        let stored = u32::from_le_bytes([
            record[CHECKSUM_AT],
            record[CHECKSUM_AT + 1],
            record[CHECKSUM_AT + 2],
            record[CHECKSUM_AT + 3],
        ]);
        if crc32(&record[..CHECKSUM_AT]) != stored {
            return Err(corrupt(Corruption::Checksum));
        }
        let device_id = text(record, DEVICE_ID_AT, MAX_DEVICE_ID_LEN)?;
        let mut key_bytes = [0u8; KEY_LEN];
        key_bytes.copy_from_slice(&record[KEY_AT..KEY_AT + KEY_LEN]);
        let key = NodeKey::from_bytes(&key_bytes);
        key_bytes.zeroize();
        let key = key.map_err(|_| corrupt(Corruption::Key))?;
        let mut pin = [0u8; 32];
        pin.copy_from_slice(&record[PIN_AT..PIN_AT + 32]);
        let client_cert = blob(record, CLIENT_CERT_AT)?;
        let ca_cert = blob(record, CA_CERT_AT)?;
        let daemon = text(record, ADDRESS_AT, MAX_ADDRESS_LEN)?;
        Self::new(
            device_id,
            key,
            client_cert,
            ca_cert,
            Fingerprint(pin),
            daemon,
        )
        .map_err(|_| corrupt(Corruption::Length))
    }
}

/// Where a node keeps its identity record. Writing a blank record (all `0xFF`, say)
/// forgets the identity.
// Executors on microcontrollers are single-threaded: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait IdentityStore {
    type Error: core::fmt::Debug;

    /// Reads what is stored into `record`; returns how many bytes were stored (0 when
    /// nothing is, fewer than [`RECORD_LEN`] when a shorter file was found).
    async fn read(&mut self, record: &mut [u8; RECORD_LEN]) -> Result<usize, Self::Error>;

    /// Replaces what is stored with `record`, whole.
    async fn write(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), Self::Error>;
}

/// Why [`load_identity`] found no usable identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError<E> {
    /// The store failed.
    Store(E),
    /// The store's record is not an identity (blank, foreign, corrupt).
    Record(RecordError),
}

impl<E: core::fmt::Debug> core::fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::Store(e) => write!(f, "identity store failed: {e:?}"),
            LoadError::Record(e) => e.fmt(f),
        }
    }
}

/// Reads the identity from `store`, using `scratch` for the record (wiped after).
pub async fn load_identity<S: IdentityStore>(
    store: &mut S,
    scratch: &mut [u8; RECORD_LEN],
) -> Result<Identity, LoadError<S::Error>> {
    let read = store.read(scratch).await;
    let decoded = match read {
        Ok(len) => Identity::decode(&scratch[..len.min(RECORD_LEN)]).map_err(LoadError::Record),
        Err(e) => Err(LoadError::Store(e)),
    };
    scratch.zeroize();
    decoded
}

/// Writes `identity` to `store`, using `scratch` for the record (wiped after).
pub async fn save_identity<S: IdentityStore>(
    store: &mut S,
    identity: &Identity,
    scratch: &mut [u8; RECORD_LEN],
) -> Result<(), S::Error> {
    identity.encode(scratch);
    let written = store.write(scratch).await;
    scratch.zeroize();
    written
}

fn put_u16(record: &mut [u8], at: usize, value: u16) {
    record[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_text(record: &mut [u8], at: usize, max: usize, text: &str) {
    debug_assert!(text.len() <= max);
    record[at] = text.len() as u8;
    record[at + 1..at + 1 + text.len()].copy_from_slice(text.as_bytes());
}

fn put_blob(record: &mut [u8], at: usize, blob: &[u8]) {
    put_u16(record, at, blob.len() as u16);
    record[at + 2..at + 2 + blob.len()].copy_from_slice(blob);
}

fn text(record: &[u8; RECORD_LEN], at: usize, max: usize) -> Result<&str, RecordError> {
    let len = usize::from(record[at]);
    if len > max {
        return Err(RecordError::Corrupt(Corruption::Length));
    }
    core::str::from_utf8(&record[at + 1..at + 1 + len])
        .map_err(|_| RecordError::Corrupt(Corruption::Text))
}

fn blob(record: &[u8; RECORD_LEN], at: usize) -> Result<&[u8], RecordError> {
    let len = usize::from(u16::from_le_bytes([record[at], record[at + 1]]));
    if len > MAX_CERT_LEN {
        return Err(RecordError::Corrupt(Corruption::Length));
    }
    Ok(&record[at + 2..at + 2 + len])
}

/// Writes the checksum of a record whose bytes were edited in place (a tool that repairs
/// or migrates one; the fuzz target that reaches the field checks behind the checksum).
pub fn seal(record: &mut [u8; RECORD_LEN]) {
    let checksum = crc32(&record[..CHECKSUM_AT]);
    record[CHECKSUM_AT..].copy_from_slice(&checksum.to_le_bytes());
}

/// CRC-32 (IEEE 802.3, reflected, the zlib one), bit by bit: a record is checked once
/// per boot, so no table is worth its flash.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn layout_fits_its_length() {
        assert_eq!(PADDING_AT, 2316);
        assert_eq!(CHECKSUM_AT, 2332);
    }
}
