//! The daemon's identity: its CA and TLS server certificate, created on first start and
//! kept in the store; the server certificate is issued again when the names it must
//! carry change or it nears expiry.

use std::sync::Arc;

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use transport_tokio::quic::{ENDPOINT_KEY_LEN, EndpointKeys};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ca::{CertificateAuthority, Fingerprint, IssuancePolicy, ServerIdentity};
use crate::runtime::persist::now_ms;
use crate::store::{Store, Write};

/// The CA and the server certificate in use.
#[derive(Clone)]
pub struct Identity {
    pub ca: Arc<CertificateAuthority>,
    pub server: ServerIdentity,
    /// The QUIC endpoint's keys, the same across restarts.
    pub endpoint_keys: EndpointKeys,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("ca", &self.ca_fingerprint_hex())
            .field("server", &self.server_fingerprint_hex())
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    pub fn server_fingerprint(&self) -> Fingerprint {
        self.server.fingerprint
    }

    pub fn ca_fingerprint_hex(&self) -> String {
        hex(&self.ca.fingerprint().0)
    }

    pub fn server_fingerprint_hex(&self) -> String {
        hex(&self.server.fingerprint.0)
    }

    /// The CA certificate's expiry, in Unix milliseconds.
    pub fn ca_not_after_ms(&self) -> u64 {
        not_after_ms(self.ca.certificate_der()).unwrap_or(0)
    }

    /// The rustls server configuration: client certificates from this CA, checked
    /// against `revocation` at every handshake.
    pub fn server_tls(
        &self,
        revocation: Arc<dyn transport_tokio::tls::Revocation>,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let key = rcgen::KeyPair::from_pem(&self.server.key_pem).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        transport_tokio::tls::server_config(
            CertificateDer::from(self.ca.certificate_der().to_vec()),
            vec![CertificateDer::from(self.server.cert_der.clone())],
            key,
            revocation,
        )
        .map_err(|e| e.to_string())
    }
}

fn not_after_ms(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    u64::try_from(secs).ok().map(|s| s.saturating_mul(1000))
}

/// The DNS names and IP addresses a certificate is issued for.
fn names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Loads the identity from the store, creating what is missing; a server certificate
/// whose names differ from `names`, or that nears expiry, is issued again. Daemons that
/// start together on one shared store keep the identity the first of them stored: what
/// is created is written only where nothing is, then read back.
pub async fn load_or_create(store: &Store, names: &[String]) -> Result<Identity, String> {
    if let Some(identity) = load_or_create_once(store, names).await? {
        return Ok(identity);
    }
    // Another daemon stored its identity first: use that one.
    load_or_create_once(store, names)
        .await?
        .ok_or_else(|| "the stored identity changed twice while starting".to_owned())
}

/// The identity, or `None` when what this call created lost to another daemon's.
async fn load_or_create_once(store: &Store, names: &[String]) -> Result<Option<Identity>, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let now = now_ms();
    let mut writes = Vec::new();
    let ca = match store.ca().await.map_err(|e| e.to_string())? {
        Some(stored) => CertificateAuthority::from_stored(&stored).map_err(|e| e.to_string())?,
        None => {
            let ca =
                CertificateAuthority::create("Tern CA", now, IssuancePolicy::default(), &mut rng)
                    .map_err(|e| e.to_string())?;
            writes.push(Write::CreateCa(ca.to_stored()));
            ca
        }
    };
    let mut wanted: Vec<String> = names.to_vec();
    wanted.sort();
    let stored_server = store.server_identity().await.map_err(|e| e.to_string())?;
    let had_server = stored_server.is_some();
    let server = match stored_server {
        Some(s)
            if {
                let mut have = names_of(&s.cert_der);
                have.sort();
                have == wanted
                    && !ca.needs_rotation(&s.cert_der, now).unwrap_or(true)
                    && writes.is_empty()
            } =>
        {
            s
        }
        _ => {
            let s = ca
                .issue_server(names, now, &mut rng)
                .map_err(|e| e.to_string())?;
            writes.push(if had_server && writes.is_empty() {
                Write::PutServerIdentity(s.clone())
            } else {
                Write::CreateServerIdentity(s.clone())
            });
            s
        }
    };
    let endpoint_keys = match store.endpoint_keys().await.map_err(|e| e.to_string())? {
        Some(keys) => keys,
        None => {
            let mut reset = [0u8; ENDPOINT_KEY_LEN];
            let mut token = [0u8; ENDPOINT_KEY_LEN];
            getrandom::fill(&mut reset).map_err(|e| e.to_string())?;
            getrandom::fill(&mut token).map_err(|e| e.to_string())?;
            let keys = EndpointKeys::new(reset, token);
            writes.push(Write::CreateEndpointKeys(keys.clone()));
            keys
        }
    };
    if !writes.is_empty() {
        store.write(writes).await.map_err(|e| e.to_string())?;
        let kept = (
            store.ca().await.map_err(|e| e.to_string())?,
            store.server_identity().await.map_err(|e| e.to_string())?,
            store.endpoint_keys().await.map_err(|e| e.to_string())?,
        );
        if kept
            != (
                Some(ca.to_stored()),
                Some(server.clone()),
                Some(endpoint_keys.clone()),
            )
        {
            return Ok(None);
        }
    }
    Ok(Some(Identity {
        ca: Arc::new(ca),
        server,
        endpoint_keys,
    }))
}
