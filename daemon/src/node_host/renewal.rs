//! Certificate renewal over the node's authenticated session, without pairing again:
//! the node host's side of the exchange `node_contract::renewal` defines.
//!
//! Within its renewal window the node sends the event `tern.renew` carrying a CSR for
//! its own key; the daemon (which knows the node from the session's certificate, not
//! from anything in the event) issues a certificate for the same device and calls the
//! node's `tern.certificate` capability with it. The node checks it (its key, its device
//! id, its CA, not expired) before keeping it, and its next connection presents it.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use node_contract::names::RENEW_EVENT;
use node_contract::{Installed, RenewRequest, Renewed, descriptors, hex};
use rustls::ClientConfig;

use super::capabilities::{CallContext, CallFuture, Capability, CapabilityError, Descriptor};
use super::identity::NodeIdentity;
use super::runtime::NodeHandle;

/// How often a node host checks whether its certificate is due.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The node plane's TLS configuration as of now: replaced when a renewed certificate is
/// installed, read by every dial.
#[derive(Clone)]
pub struct TlsSource(Arc<RwLock<Arc<ClientConfig>>>);

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource").finish_non_exhaustive()
    }
}

impl TlsSource {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    pub fn get(&self) -> Arc<ClientConfig> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, config: Arc<ClientConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

/// The capability that installs a renewed certificate.
pub struct InstallCertificate {
    descriptor: Descriptor,
    identity: Arc<Mutex<NodeIdentity>>,
    tls: TlsSource,
}

impl std::fmt::Debug for InstallCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallCertificate").finish_non_exhaustive()
    }
}

impl InstallCertificate {
    pub fn new(identity: Arc<Mutex<NodeIdentity>>, tls: TlsSource) -> Self {
        Self {
            descriptor: descriptors::INSTALL_CERTIFICATE.into(),
            identity,
            tls,
        }
    }
}

impl Capability for InstallCertificate {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn call(&self, input: Vec<u8>, _: CallContext) -> CallFuture {
        let identity = self.identity.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let der = renewed_certificate(&input)?;
            let config = {
                let mut id = identity.lock().unwrap_or_else(PoisonError::into_inner);
                id.install_renewed(&der)
                    .map_err(|e| CapabilityError::BadInput(format!("refused: {e}")))?;
                id.client_config()
                    .map_err(|e| CapabilityError::Failed(e.to_string()))?
            };
            tls.set(config);
            tracing::info!("renewed certificate installed");
            Ok(serde_json::to_vec(&Installed { installed: true }).unwrap_or_default())
        })
    }
}

/// Reads `tern.certificate`'s input: the renewed certificate's DER, from its hex. The
/// identity checks it before keeping it.
pub fn renewed_certificate(input: &[u8]) -> Result<Vec<u8>, CapabilityError> {
    let renewed: Renewed<'_> = serde_json::from_slice(input)
        .map_err(|e| CapabilityError::BadInput(format!("not a renewed certificate: {e}")))?;
    let mut der = vec![0; hex::decoded_len(renewed.cert.len())];
    let n = renewed
        .cert_der(&mut der)
        .map_err(|e| CapabilityError::BadInput(format!("the certificate is not hex: {e}")))?
        .len();
    der.truncate(n);
    Ok(der)
}

/// Whether the certificate ends within `window` of `now`.
pub fn due(identity: &NodeIdentity, now: SystemTime, window: Duration) -> bool {
    identity
        .paired()
        .is_some_and(|p| now + window >= p.not_after)
}

/// Asks for a renewal whenever the certificate is due (at start, then every
/// [`CHECK_EVERY`]); the answer arrives as a call of `tern.certificate`.
pub async fn renew_when_due(
    identity: Arc<Mutex<NodeIdentity>>,
    handle: NodeHandle,
    window: Duration,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let csr = {
            let id = identity.lock().unwrap_or_else(PoisonError::into_inner);
            if !due(&id, SystemTime::now(), window) {
                continue;
            }
            id.csr_der()
        };
        let Ok(csr) = csr else { continue };
        let mut text = vec![0; hex::encoded_len(csr.len())];
        let Ok(request) = RenewRequest::new(&csr, &mut text) else {
            continue;
        };
        tracing::info!("certificate due for renewal: asking the daemon");
        if handle.send_event(RENEW_EVENT, &request).await.is_err() {
            return;
        }
    }
}
