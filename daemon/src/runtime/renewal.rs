//! Certificate renewal for a connected node: its `tern.renew` event carries a CSR, the
//! daemon's [`Renewer`] issues a certificate for the node the session is bound to (never
//! a name taken from the event), and the node's `tern.certificate` capability installs
//! it. At most one renewal per node per [`MIN_INTERVAL_MS`], so a node cannot make the CA
//! sign in a loop.

use std::sync::Arc;

use node_contract::names::INSTALL_CERTIFICATE;
use node_contract::{JSON, RenewRequest, Renewed, hex};
use tracing::{info, warn};

use super::Runtime;
use super::calls::CallStatus;
use super::persist::now_ms;

/// Renewals one node may ask for: one per ten minutes.
pub const MIN_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// How long the node has to install the certificate.
const INSTALL_TIMEOUT_MS: u64 = 60_000;

/// Issues renewed certificates (the daemon's CA) and records them.
pub trait Renewer: Send + Sync + 'static {
    /// A certificate for `device_id` and the key in `csr_der`, recorded as the device's.
    fn renew(&self, device_id: &str, csr_der: &[u8]) -> Result<Vec<u8>, String>;
}

impl Runtime {
    /// Where renewal requests go; without one they are refused (logged).
    pub fn set_renewer(&self, renewer: Arc<dyn Renewer>) {
        let _ = self.renewer.set(renewer);
    }

    /// Handles node `node`'s renewal request (the body of its `tern.renew` event).
    pub(crate) async fn renew(self: Arc<Self>, node: String, body: Vec<u8>) {
        let Some(renewer) = self.renewer.get().cloned() else {
            warn!(%node, "certificate renewal asked, but this daemon does not renew");
            return;
        };
        let now = now_ms();
        {
            let mut state = self.lock();
            let last = state.renewals.entry(node.clone()).or_insert(0);
            if *last != 0 && now.saturating_sub(*last) < MIN_INTERVAL_MS {
                warn!(%node, "certificate renewal asked again too soon; ignored");
                return;
            }
            *last = now;
        }
        let csr = serde_json::from_slice::<RenewRequest<'_>>(&body)
            .ok()
            .and_then(|request| {
                let mut der = vec![0; hex::decoded_len(request.csr.len())];
                request.csr_der(&mut der).ok()?;
                Some(der)
            });
        let Some(csr) = csr else {
            warn!(%node, "malformed certificate renewal request");
            return;
        };
        let cert = match renewer.renew(&node, &csr) {
            Ok(cert) => cert,
            Err(e) => {
                warn!(%node, error = %e, "certificate renewal refused");
                return;
            }
        };
        let mut text = vec![0; hex::encoded_len(cert.len())];
        let input = Renewed::new(&cert, &mut text)
            .ok()
            .and_then(|renewed| serde_json::to_vec(&renewed).ok())
            .unwrap_or_default();
        let placed = self.call(
            now,
            &node,
            INSTALL_CERTIFICATE,
            JSON,
            input,
            INSTALL_TIMEOUT_MS,
        );
        let Ok((_, outcome)) = placed else {
            warn!(%node, "could not send the renewed certificate");
            return;
        };
        match outcome.await {
            Ok(o) if o.state == CallStatus::Succeeded => {
                info!(%node, "renewed certificate installed on the node");
            }
            Ok(o) => {
                warn!(%node, status = o.state.as_str(), message = o.error.as_deref().unwrap_or(""), "the node did not install its renewed certificate")
            }
            Err(_) => {}
        }
    }
}
