//! Operator identities: the operator CA (a CA of its own, so a node's certificate can
//! never pass as an operator's and an operator's never opens the node plane), the
//! operators it issued, and the TLS configuration of the operator listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::api::v1::Role;
use crate::api::{ApiError, Caller, Via};
use crate::ca::{CertificateAuthority, DAY_MS, Fingerprint, IssuancePolicy};
use crate::model::{Operator, OperatorRole};
use crate::runtime::persist::now_ms;
use crate::store::{Store, Write};

/// How long an operator identity lasts; `ternd operator add` issues a new one.
pub const OPERATOR_VALIDITY_MS: u64 = 365 * DAY_MS;

/// The operators a daemon knows, by certificate fingerprint.
pub struct OperatorRegistry {
    ca: CertificateAuthority,
    known: RwLock<HashMap<[u8; 32], Operator>>,
}

impl std::fmt::Debug for OperatorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRegistry")
            .field("ca", &self.ca.fingerprint())
            .finish_non_exhaustive()
    }
}

fn rng() -> Result<ChaCha20Rng, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
    Ok(ChaCha20Rng::from_seed(seed))
}

pub fn role_of(role: OperatorRole) -> Role {
    match role {
        OperatorRole::Viewer => Role::Viewer,
        OperatorRole::Admin => Role::Admin,
    }
}

impl OperatorRegistry {
    /// Loads the operator CA (creating it on the first start: the first daemon's wins
    /// on a shared store) and the operators.
    pub async fn load(store: &Store) -> Result<Self, String> {
        let stored = match store.operator_ca().await.map_err(|e| e.to_string())? {
            Some(stored) => stored,
            None => {
                let policy = IssuancePolicy {
                    client_validity_ms: OPERATOR_VALIDITY_MS,
                    ..IssuancePolicy::default()
                };
                let ca =
                    CertificateAuthority::create("Tern operator CA", now_ms(), policy, &mut rng()?)
                        .map_err(|e| e.to_string())?;
                store
                    .write(vec![Write::CreateOperatorCa(ca.to_stored())])
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .operator_ca()
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the operator CA was not stored")?
            }
        };
        let ca = CertificateAuthority::from_stored(&stored).map_err(|e| e.to_string())?;
        let registry = Self {
            ca,
            known: RwLock::new(HashMap::new()),
        };
        registry.refresh(store).await?;
        Ok(registry)
    }

    /// Reads the operators again (another daemon may have added or revoked one).
    pub async fn refresh(&self, store: &Store) -> Result<(), String> {
        let all = store.operators().await.map_err(|e| e.to_string())?;
        let map = all.into_iter().map(|o| (o.fingerprint, o)).collect();
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// The operator `cert_der` names, if it is one this daemon issued, not revoked and
    /// not expired.
    pub fn authenticate(&self, cert_der: &[u8]) -> Result<Caller, ApiError> {
        let info = self.ca.verify_client(cert_der).map_err(|_| {
            ApiError::unauthenticated("this certificate is not an operator identity of this daemon")
        })?;
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let op = known.get(&info.fingerprint.0).ok_or_else(|| {
            ApiError::unauthenticated(format!(
                "operator identity {:?} is not known to this daemon",
                info.device_id
            ))
        })?;
        if op.revoked_ms.is_some() {
            return Err(ApiError::unauthenticated(format!(
                "operator identity {:?} is revoked",
                op.name
            )));
        }
        if op.not_after_ms <= now_ms() {
            return Err(ApiError::unauthenticated(format!(
                "operator identity {:?} has expired: issue a new one",
                op.name
            )));
        }
        Ok(Caller {
            name: op.name.clone(),
            role: role_of(op.role),
            via: Via::Certificate,
        })
    }

    /// A certificate for the key in `csr_der`, named `name`; the operator record to
    /// store.
    pub fn issue(
        &self,
        name: &str,
        role: OperatorRole,
        csr_der: &[u8],
    ) -> Result<(Operator, String), ApiError> {
        let now = now_ms();
        let mut rng = rng().map_err(ApiError::internal)?;
        let cert = self
            .ca
            .issue_client(csr_der, name, now, &mut rng)
            .map_err(|e| ApiError::invalid_argument(format!("cannot issue the identity: {e}")))?;
        let pem = pem("CERTIFICATE", &cert.der);
        Ok((
            Operator {
                name: name.to_owned(),
                role,
                fingerprint: cert.fingerprint.0,
                cert_der: cert.der,
                not_after_ms: cert.not_after_ms,
                created_ms: now,
                revoked_ms: None,
            },
            pem,
        ))
    }

    /// Records what the store now holds for one operator.
    pub fn remember(&self, op: Operator) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        known.retain(|_, o| o.name != op.name || o.fingerprint == op.fingerprint);
        known.insert(op.fingerprint, op);
    }

    /// Marks `name` revoked here at once; the store holds it for the other daemons.
    pub fn forget(&self, name: &str, at_ms: u64) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        for op in known.values_mut().filter(|o| o.name == name) {
            op.revoked_ms.get_or_insert(at_ms);
        }
    }

    /// TLS for the operator listener: a certificate from the daemon's CA for `names`,
    /// and client certificates from the operator CA only (optional: the console's
    /// browser logs in instead).
    pub fn listener_tls(
        &self,
        daemon_ca: &CertificateAuthority,
        addr: SocketAddr,
        public_names: &[String],
    ) -> Result<rustls::ServerConfig, String> {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if !addr.ip().is_unspecified() {
            names.insert(0, addr.ip().to_string());
        }
        for n in public_names {
            let host = n.rsplit_once(':').map_or(n.as_str(), |(h, _)| h);
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            if !host.is_empty() && !names.contains(&host) {
                names.push(host);
            }
        }
        let server = daemon_ca
            .issue_server(&names, now_ms(), &mut rng()?)
            .map_err(|e| e.to_string())?;
        let key = rcgen::KeyPair::from_pem(&server.key_pem).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.certificate_der().to_vec()))
            .map_err(|e| e.to_string())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![
                    CertificateDer::from(server.cert_der),
                    CertificateDer::from(daemon_ca.certificate_der().to_vec()),
                ],
                key,
            )
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The record an operator listing shows.
pub fn record(op: &Operator) -> crate::api::v1::OperatorRecord {
    crate::api::v1::OperatorRecord {
        name: op.name.clone(),
        role: role_of(op.role) as i32,
        certificate_fingerprint: Fingerprint(op.fingerprint).to_hex(),
        created_at_ms: op.created_ms,
        not_after_ms: op.not_after_ms,
        revoked_at_ms: op.revoked_ms.unwrap_or(0),
    }
}

/// PEM text of one DER object.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
