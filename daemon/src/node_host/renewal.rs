//! Certificate renewal over the node's authenticated session, without pairing again.
//!
//! Within its renewal window the node sends the event [`RENEW_EVENT`] carrying a CSR for
//! its own key; the daemon (which knows the node from the session's certificate, not
//! from anything in the event) issues a certificate for the same device and calls the
//! node's [`INSTALL_CAPABILITY`] with it. The node checks it (its key, its device id,
//! its CA, not expired) before keeping it, and its next connection presents it.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use serde::{Deserialize, Serialize};

use super::capabilities::{CallContext, CallFuture, Capability, CapabilityError, Descriptor};
use super::identity::NodeIdentity;
use super::runtime::NodeHandle;

/// The event that asks for a renewed certificate.
pub const RENEW_EVENT: &str = "tern.renew";
/// The capability the daemon calls with the renewed certificate.
pub const INSTALL_CAPABILITY: &str = "tern.certificate";
/// How often a node host checks whether its certificate is due.
pub const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The [`RENEW_EVENT`]'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The CSR's DER, hex.
    pub csr: String,
}

/// The [`INSTALL_CAPABILITY`]'s input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renewed {
    /// The certificate's DER, hex.
    pub cert: String,
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

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
            descriptor: Descriptor::json(
                INSTALL_CAPABILITY,
                "installs a certificate the daemon renewed for this node",
                false,
            ),
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
            let renewed: Renewed = serde_json::from_slice(&input).map_err(|e| {
                CapabilityError::BadInput(format!("not a renewed certificate: {e}"))
            })?;
            let der = from_hex(&renewed.cert)
                .ok_or_else(|| CapabilityError::BadInput("the certificate is not hex".into()))?;
            let config = {
                let mut id = identity.lock().unwrap_or_else(PoisonError::into_inner);
                id.install_renewed(&der)
                    .map_err(|e| CapabilityError::BadInput(format!("refused: {e}")))?;
                id.client_config()
                    .map_err(|e| CapabilityError::Failed(e.to_string()))?
            };
            tls.set(config);
            tracing::info!("renewed certificate installed");
            Ok(serde_json::to_vec(&serde_json::json!({"installed": true})).unwrap_or_default())
        })
    }
}

/// Whether the certificate ends within `window` of `now`.
pub fn due(identity: &NodeIdentity, now: SystemTime, window: Duration) -> bool {
    identity
        .paired()
        .is_some_and(|p| now + window >= p.not_after)
}

/// Asks for a renewal whenever the certificate is due (at start, then every
/// [`CHECK_EVERY`]); the answer arrives as a call of [`INSTALL_CAPABILITY`].
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
        tracing::info!("certificate due for renewal: asking the daemon");
        let request = RenewRequest { csr: to_hex(&csr) };
        if handle.send_event(RENEW_EVENT, &request).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
