//! Certificates for the comparison: a test CA made with rcgen, the daemon's server
//! certificate and one client certificate per node, all fed to the project's own rustls
//! configurations (`transport_tokio::tls`), so every transport runs the same TLS.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use transport_tokio::tls::{Fingerprint, RevocationList, client_config, server_config};

use super::BenchError;

/// A certificate authority for the run.
pub struct Ca {
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    pub fn new(name: &str) -> Result<Self, BenchError> {
        let key = KeyPair::generate().map_err(BenchError::context("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params
            .self_signed(&key)
            .map_err(BenchError::context("CA certificate"))?;
        Ok(Self {
            der: CertificateDer::from(cert.der().to_vec()),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf certificate with subject CN `cn`: the daemon's (IP SAN 127.0.0.1,
    /// serverAuth) or a node's (clientAuth; the CN is its device id).
    pub fn leaf(&self, cn: &str, server: bool) -> Result<Leaf, BenchError> {
        let key = KeyPair::generate().map_err(BenchError::context("leaf key"))?;
        let names = if server {
            vec!["127.0.0.1".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(names).map_err(BenchError::context("leaf"))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(BenchError::context("leaf certificate"))?;
        Ok(Leaf {
            cert: CertificateDer::from(cert.der().to_vec()),
            key: key.serialize_der(),
        })
    }
}

/// A certificate and its PKCS#8 key.
#[derive(Clone)]
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Leaf {
    pub fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Self {
        Self {
            cert: CertificateDer::from(cert),
            key,
        }
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    pub fn key_der(&self) -> &[u8] {
        &self.key
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// A node's client configuration with this certificate, pinning the daemon's `pin`.
    pub fn client(&self, pin: Fingerprint) -> Result<Arc<rustls::ClientConfig>, BenchError> {
        client_config(pin, vec![self.cert.clone()], self.key())
            .map_err(BenchError::context("client TLS configuration"))
    }
}

/// What a daemon needs to serve: the CA its nodes chain to and its own certificate.
#[derive(Debug, Clone)]
pub struct DaemonIdentity {
    pub ca: CertificateDer<'static>,
    pub server: Leaf,
}

impl DaemonIdentity {
    /// The daemon's TLS configuration (client certificates checked against the CA and a
    /// live revocation list at every handshake, no resumption) and that list.
    pub fn server_tls(
        &self,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<RevocationList>), BenchError> {
        let revocation = Arc::new(RevocationList::new());
        let tls = server_config(
            self.ca.clone(),
            vec![self.server.cert.clone()],
            self.server.key(),
            revocation.clone(),
        )
        .map_err(BenchError::context("server TLS configuration"))?;
        Ok((tls, revocation))
    }

    pub fn pin(&self) -> Fingerprint {
        self.server.fingerprint()
    }

    /// The identity as `KEY=hex` pairs for a child process's environment.
    pub fn to_env(&self) -> [(&'static str, String); 3] {
        [
            (ENV_CA, hex(&self.ca)),
            (ENV_CERT, hex(&self.server.cert)),
            (ENV_KEY, hex(self.server.key_der())),
        ]
    }

    /// The identity a parent put in this process's environment.
    pub fn from_env() -> Result<Self, BenchError> {
        let var = |name: &str| -> Result<Vec<u8>, BenchError> {
            let text = std::env::var(name)
                .map_err(|_| BenchError(format!("{name} is not set by the parent")))?;
            unhex(&text).ok_or_else(|| BenchError(format!("{name} is not hex")))
        };
        Ok(Self {
            ca: CertificateDer::from(var(ENV_CA)?),
            server: Leaf::from_der(var(ENV_CERT)?, var(ENV_KEY)?),
        })
    }
}

/// A CA, the daemon's identity under it, and `nodes` node certificates (CN `node-<i>`).
pub fn fleet(nodes: usize) -> Result<(DaemonIdentity, Vec<Leaf>), BenchError> {
    let ca = Ca::new("tern bench CA")?;
    let server = ca.leaf("ternd", true)?;
    let leaves = (0..nodes)
        .map(|i| ca.leaf(&node_id(i), false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        DaemonIdentity {
            ca: ca.der.clone(),
            server,
        },
        leaves,
    ))
}

/// The device id of node `i` (its certificate's CN).
pub fn node_id(i: usize) -> String {
    format!("node-{i}")
}

const ENV_CA: &str = "TERN_BENCH_CA";
const ENV_CERT: &str = "TERN_BENCH_CERT";
const ENV_KEY: &str = "TERN_BENCH_KEY";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
