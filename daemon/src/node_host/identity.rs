//! The node's identity and its state directory.
//!
//! A node generates its own P-256 key once and never lets it leave the directory; it
//! sends a CSR at pairing and keeps what pairing hands back (its client certificate, the
//! CA certificate, the daemon's pinned fingerprint) next to the daemon's addresses (one
//! or several daemons sharing that CA and certificate).
//!
//! Layout (`$XDG_STATE_HOME/tern-node`, `~/.local/state/tern-node`, or a chosen path):
//!
//! | file | content |
//! |---|---|
//! | `node.key.pem` | the private key, PKCS#8 PEM, mode 0600 |
//! | `node.toml` | the device id; once paired, the daemon's addresses and fingerprint |
//! | `client.der` | the client certificate (once paired) |
//! | `ca.der` | the daemon's CA certificate (once paired) |
//!
//! Every write goes to a temporary file that is synced, then renamed over the old one,
//! and the directory is synced: a crash leaves the old file or the new one. `node.toml`
//! is written last, so it names a pairing only once the certificates are in place.
//!
//! `node.toml` lists the addresses as `daemons = ["host:port", ...]`; a file from before
//! the list, with a single `daemon = "host:port"`, still loads, and is rewritten in the
//! new form the next time the state changes.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use transport_tokio::pairing::PairingBundle;
use transport_tokio::tls::{Fingerprint, client_config};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::addrs::{AddrError, parse_addrs};
use crate::ca::{Fingerprint as HexFingerprint, check_device_id};

/// The private key's file.
pub const KEY_FILE: &str = "node.key.pem";
/// The node's state: device id, daemon addresses and fingerprint.
pub const STATE_FILE: &str = "node.toml";
/// The client certificate, DER.
pub const CLIENT_CERT_FILE: &str = "client.der";
/// The daemon's CA certificate, DER.
pub const CA_CERT_FILE: &str = "ca.der";
/// The directory's name under the user's state directory.
pub const STATE_DIR_NAME: &str = "tern-node";
/// A certificate is renewed once its end is this close.
pub const RENEWAL_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why an identity could not be created, loaded or changed.
#[derive(Debug)]
pub enum IdentityError {
    /// Neither `XDG_STATE_HOME` nor `HOME` names a directory: pass a state directory.
    NoStateDir,
    /// No identity in this directory.
    NotFound(PathBuf),
    /// An identity exists in this directory already.
    AlreadyExists(PathBuf),
    /// A half-written directory: `missing` should be there and is not.
    Incomplete { missing: PathBuf },
    /// A file that does not read as what it should hold.
    Corrupt { path: PathBuf, reason: String },
    /// The private key can be read by other users.
    InsecureKey { path: PathBuf, mode: u32 },
    /// A device id that is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    BadDeviceId(String),
    /// The node has not paired yet.
    NotPaired,
    /// A daemon address list that is empty or holds something that is not `host:port`.
    BadDaemons(AddrError),
    /// A certificate handed to the node does not fit it (another key, another device,
    /// another CA, expired).
    CertificateMismatch(String),
    /// Reading or writing a file failed.
    Io { path: PathBuf, source: io::Error },
    /// The key or the CSR could not be generated.
    Generate(String),
    /// The TLS configuration could not be built from the identity.
    Tls(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::NoStateDir => f.write_str(
                "no state directory: neither XDG_STATE_HOME nor HOME is set; pass --state-dir",
            ),
            IdentityError::NotFound(p) => {
                write!(f, "no node identity in {}: pair first", p.display())
            }
            IdentityError::AlreadyExists(p) => {
                write!(f, "a node identity exists in {} already", p.display())
            }
            IdentityError::Incomplete { missing } => write!(
                f,
                "the state directory is half-written: {} is missing",
                missing.display()
            ),
            IdentityError::Corrupt { path, reason } => {
                write!(f, "{} is corrupt: {reason}", path.display())
            }
            IdentityError::InsecureKey { path, mode } => write!(
                f,
                "{} is readable by other users (mode {mode:o}); it must be 0600",
                path.display()
            ),
            IdentityError::BadDeviceId(id) => write!(
                f,
                "invalid device id {id:?}: 1-64 characters of [A-Za-z0-9._-]"
            ),
            IdentityError::NotPaired => f.write_str("the node has not paired yet"),
            IdentityError::BadDaemons(e) => write!(f, "{e}"),
            IdentityError::CertificateMismatch(why) => {
                write!(f, "certificate does not fit this node: {why}")
            }
            IdentityError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            IdentityError::Generate(e) => write!(f, "key generation failed: {e}"),
            IdentityError::Tls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paired: Option<PairedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairedFile {
    #[serde(default)]
    daemons: Vec<String>,
    /// The one address files written before the list held; read, never written.
    #[serde(default, skip_serializing)]
    daemon: Option<String>,
    server_fingerprint: HexFingerprint,
}

impl PairedFile {
    /// The addresses, the old single one first, each once.
    fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.daemons.len() + 1);
        for addr in self.daemon.iter().chain(&self.daemons) {
            if !out.contains(addr) {
                out.push(addr.clone());
            }
        }
        out
    }
}

/// What pairing left: enough to connect with mutual TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct Paired {
    /// The daemon's addresses, `host:port` each, at least one: daemons that share the
    /// CA and the server certificate pinned here.
    pub daemons: Vec<String>,
    /// The daemon's server certificate fingerprint, pinned at every connection.
    pub server_fingerprint: Fingerprint,
    pub client_cert_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
    /// When the client certificate expires.
    pub not_after: SystemTime,
}

impl fmt::Debug for Paired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Paired")
            .field("daemons", &self.daemons)
            .field("server_fingerprint", &self.server_fingerprint)
            .field("client_cert", &Fingerprint::of(&self.client_cert_der))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The node's identity, backed by its state directory.
pub struct NodeIdentity {
    dir: PathBuf,
    device_id: String,
    key: KeyPair,
    paired: Option<Paired>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("dir", &self.dir)
            .field("device_id", &self.device_id)
            .field("paired", &self.paired)
            .finish_non_exhaustive()
    }
}

/// The default state directory: `$XDG_STATE_HOME/tern-node`, else
/// `~/.local/state/tern-node`.
pub fn default_state_dir() -> Result<PathBuf, IdentityError> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return Ok(state.join(STATE_DIR_NAME));
    }
    let home = std::env::var_os("HOME")
        .and_then(absolute)
        .ok_or(IdentityError::NoStateDir)?;
    Ok(home.join(".local/state").join(STATE_DIR_NAME))
}

/// A new device id: `node-` and 8 random hex digits.
pub fn generate_device_id() -> Result<String, IdentityError> {
    let n = getrandom::u32().map_err(|e| IdentityError::Generate(e.to_string()))?;
    Ok(format!("node-{n:08x}"))
}

impl NodeIdentity {
    /// Creates an identity in `dir` (made, mode 0700, if absent): a new key pair and the
    /// device id `device_id`, or a generated one. Refused if `dir` holds one already.
    pub fn create(dir: &Path, device_id: Option<&str>) -> Result<Self, IdentityError> {
        let device_id = match device_id {
            Some(id) => id.to_owned(),
            None => generate_device_id()?,
        };
        check_device_id(&device_id).map_err(|_| IdentityError::BadDeviceId(device_id.clone()))?;
        for name in [STATE_FILE, KEY_FILE] {
            if dir.join(name).exists() {
                return Err(IdentityError::AlreadyExists(dir.to_owned()));
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        let identity = Self {
            dir: dir.to_owned(),
            device_id,
            key,
            paired: None,
        };
        // The key first: a directory with a state file but no key is never left.
        write_atomic(
            &dir.join(KEY_FILE),
            identity.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        identity.write_state()?;
        Ok(identity)
    }

    /// Loads the identity in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let state_path = dir.join(STATE_FILE);
        let key_path = dir.join(KEY_FILE);
        match (state_path.exists(), key_path.exists()) {
            (false, false) => return Err(IdentityError::NotFound(dir.to_owned())),
            (true, false) => return Err(IdentityError::Incomplete { missing: key_path }),
            (false, true) => {
                return Err(IdentityError::Incomplete {
                    missing: state_path,
                });
            }
            (true, true) => {}
        }
        let mode = fs::metadata(&key_path)
            .map_err(io_at(&key_path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecureKey {
                path: key_path,
                mode: mode & 0o7777,
            });
        }
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(corrupt(&key_path, "not a P-256 key"));
        }
        let state: StateFile =
            toml::from_str(&read_text(&state_path)?).map_err(|e| corrupt(&state_path, e))?;
        check_device_id(&state.device_id)
            .map_err(|_| corrupt(&state_path, format!("bad device id {:?}", state.device_id)))?;
        let mut identity = Self {
            dir: dir.to_owned(),
            device_id: state.device_id,
            key,
            paired: None,
        };
        if let Some(p) = state.paired {
            // Not checked as strictly as new input: an address kept by an older version
            // stays usable, and the resolver says what is wrong with one that is not.
            let daemons = p.addresses();
            if daemons.is_empty() {
                return Err(corrupt(&state_path, "it names no daemon address"));
            }
            let client_path = dir.join(CLIENT_CERT_FILE);
            let ca_path = dir.join(CA_CERT_FILE);
            let client = read_required(&client_path)?;
            let ca = read_required(&ca_path)?;
            let not_after = identity
                .check_certificate(&client, &ca, &identity.device_id)
                .map_err(|e| corrupt(&client_path, e))?;
            identity.paired = Some(Paired {
                daemons,
                server_fingerprint: Fingerprint(p.server_fingerprint.0),
                client_cert_der: client,
                ca_cert_der: ca,
                not_after,
            });
        }
        Ok(identity)
    }

    /// Loads the identity in `dir`, or creates one if there is none.
    pub fn load_or_create(dir: &Path, device_id: Option<&str>) -> Result<Self, IdentityError> {
        match Self::load(dir) {
            Err(IdentityError::NotFound(_)) => Self::create(dir, device_id),
            other => other,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device id: proposed until pairing, then the one the certificate names.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn paired(&self) -> Option<&Paired> {
        self.paired.as_ref()
    }

    /// A CSR for this node's key, subject CN the device id (the CA takes only the key).
    pub fn csr_der(&self) -> Result<Vec<u8>, IdentityError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.device_id.as_str());
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// The private key for TLS.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Keeps what pairing handed back, with the daemon's addresses (`host:port` each,
    /// or several separated by commas; at least one). The certificate must carry this
    /// node's key, name the bundle's device id and be signed by the bundle's CA; the
    /// device id becomes the bundle's.
    pub fn install_pairing<I, S>(
        &mut self,
        bundle: &PairingBundle,
        daemons: I,
    ) -> Result<(), IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let daemons = daemon_list(daemons)?;
        check_device_id(&bundle.device_id)
            .map_err(|_| IdentityError::BadDeviceId(bundle.device_id.clone()))?;
        let not_after = self
            .check_certificate(&bundle.client_cert, &bundle.ca_cert, &bundle.device_id)
            .map_err(IdentityError::CertificateMismatch)?;
        if not_after <= SystemTime::now() {
            return Err(IdentityError::CertificateMismatch("it has expired".into()));
        }
        write_atomic(&self.dir.join(CLIENT_CERT_FILE), &bundle.client_cert, 0o644)?;
        write_atomic(&self.dir.join(CA_CERT_FILE), &bundle.ca_cert, 0o644)?;
        self.device_id = bundle.device_id.clone();
        self.paired = Some(Paired {
            daemons,
            server_fingerprint: bundle.server_fingerprint,
            client_cert_der: bundle.client_cert.clone(),
            ca_cert_der: bundle.ca_cert.clone(),
            not_after,
        });
        self.write_state()
    }

    /// Replaces the daemon's addresses (`host:port` each, or several separated by commas;
    /// at least one), written to `node.toml` if they changed. Says whether they did.
    pub fn set_daemons<I, S>(&mut self, daemons: I) -> Result<bool, IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let daemons = daemon_list(daemons)?;
        let paired = self.paired.as_mut().ok_or(IdentityError::NotPaired)?;
        if paired.daemons == daemons {
            return Ok(false);
        }
        paired.daemons = daemons;
        self.write_state()?;
        Ok(true)
    }

    /// Whether the client certificate is within [`RENEWAL_WINDOW`] of its end at `now`.
    pub fn needs_renewal(&self, now: SystemTime) -> Result<bool, IdentityError> {
        let paired = self.paired.as_ref().ok_or(IdentityError::NotPaired)?;
        Ok(now + RENEWAL_WINDOW >= paired.not_after)
    }

    /// Replaces the client certificate with a renewed one: same key, same device, same
    /// CA, not expired.
    pub fn install_renewed(&mut self, cert_der: &[u8]) -> Result<(), IdentityError> {
        let paired = self.paired.as_ref().ok_or(IdentityError::NotPaired)?;
        let not_after = self
            .check_certificate(cert_der, &paired.ca_cert_der, &self.device_id)
            .map_err(IdentityError::CertificateMismatch)?;
        if not_after <= SystemTime::now() {
            return Err(IdentityError::CertificateMismatch("it has expired".into()));
        }
        write_atomic(&self.dir.join(CLIENT_CERT_FILE), cert_der, 0o644)?;
        if let Some(p) = self.paired.as_mut() {
            p.client_cert_der = cert_der.to_vec();
            p.not_after = not_after;
        }
        Ok(())
    }

    /// The node plane's TLS configuration: this node's certificate and key, the daemon
    /// pinned.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let paired = self.paired.as_ref().ok_or(IdentityError::NotPaired)?;
        client_config(
            paired.server_fingerprint,
            vec![CertificateDer::from(paired.client_cert_der.clone())],
            self.private_key(),
        )
        .map_err(|e| IdentityError::Tls(e.to_string()))
    }

    /// Checks that `cert` carries our key, names `device_id` and is signed by `ca`;
    /// returns its expiry.
    fn check_certificate(
        &self,
        cert: &[u8],
        ca: &[u8],
        device_id: &str,
    ) -> Result<SystemTime, String> {
        let (rest, ca) =
            X509Certificate::from_der(ca).map_err(|e| format!("CA certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the CA certificate".into());
        }
        let (rest, cert) =
            X509Certificate::from_der(cert).map_err(|e| format!("client certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the client certificate".into());
        }
        if cert.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err("it is for another key".into());
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());
        if cn != Some(device_id) {
            return Err(format!("it names {cn:?}, not {device_id:?}"));
        }
        if cert.issuer() != ca.subject() {
            return Err("another CA issued it".into());
        }
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "its signature does not verify with the CA's key".to_owned())?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        Ok(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn write_state(&self) -> Result<(), IdentityError> {
        let state = StateFile {
            device_id: self.device_id.clone(),
            paired: self.paired.as_ref().map(|p| PairedFile {
                daemons: p.daemons.clone(),
                daemon: None,
                server_fingerprint: HexFingerprint(p.server_fingerprint.0),
            }),
        };
        let path = self.dir.join(STATE_FILE);
        let text = toml::to_string(&state).map_err(|e| corrupt(&path, e))?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }
}

/// A checked, non-empty address list.
fn daemon_list<I, S>(daemons: I) -> Result<Vec<String>, IdentityError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let daemons = parse_addrs(daemons).map_err(IdentityError::BadDaemons)?;
    if daemons.is_empty() {
        return Err(IdentityError::BadDaemons(AddrError::Empty));
    }
    Ok(daemons)
}

/// Writes `data` to `path` through a synced temporary file renamed over it, then syncs
/// the directory, so a crash leaves the old content or the new one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| corrupt(path, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary file left by a crash may carry another mode: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    file.write_all(data).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_at(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl fmt::Display) -> IdentityError {
    IdentityError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_text(path: &Path) -> Result<String, IdentityError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    String::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8 text"))
}

fn read_required(path: &Path) -> Result<Vec<u8>, IdentityError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(IdentityError::Incomplete {
            missing: path.to_owned(),
        }),
        Err(e) => Err(io_at(path)(e)),
    }
}
