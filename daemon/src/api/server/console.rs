//! The web console: its files (embedded in the binary), its login, its sessions.
//!
//! Login proves possession of an operator identity without sending its key: the page
//! asks for a challenge, signs `tern-console-login\n<challenge>` with the identity's
//! key (WebCrypto, ECDSA P-256) and sends the signature with the certificate. The daemon
//! checks the certificate as it checks a TLS client's (the operator CA issued it, the
//! operator is not revoked), then the signature, and opens a session: a random cookie
//! (`HttpOnly`, `Secure`, `SameSite=Strict`) and a CSRF token the page sends in a header
//! with every request. The session keeps the certificate, which is checked again on
//! every request, so revoking the operator ends it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header::{self, HeaderValue};
use http::{Method as HttpMethod, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::OperatorApi;
use super::http::{Body, bytes_response, read_body, role_name, truncate};
use crate::api::{ApiError, Caller, Via};

/// The page's files, as the repository holds them.
const INDEX_HTML: &[u8] = include_bytes!("../../../console/index.html");
const APP_JS: &[u8] = include_bytes!("../../../console/app.js");
const STYLE_CSS: &[u8] = include_bytes!("../../../console/style.css");

const COOKIE: &str = "tern_session";
const CSRF_HEADER: &str = "x-tern-csrf";
/// What the page signs, before the challenge.
pub const LOGIN_CONTEXT: &str = "tern-console-login\n";
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(120);
/// Outstanding challenges and open sessions are bounded: a flood of logins cannot grow
/// the daemon's memory.
const MAX_CHALLENGES: usize = 1024;
const MAX_SESSIONS: usize = 1024;
/// Longest text a QR code is drawn for (a pairing URI is under 200 bytes).
const MAX_QR_TEXT: usize = 1024;

struct Session {
    cert_der: Vec<u8>,
    csrf: String,
    expires: Instant,
}

/// The console's state on one listener.
pub(in crate::api) struct Console {
    lifetime: Duration,
    challenges: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Login {
    certificate_pem: String,
    challenge: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QrText {
    text: String,
}

impl Console {
    pub(in crate::api) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            challenges: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub(super) async fn route<H: OperatorApi>(
        &self,
        handler: &H,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_owned();
        // Read before any refusal, so the connection stays usable after one.
        let (parts, body) = req.into_parts();
        let body = if parts.method == HttpMethod::POST {
            read_body(body).await?
        } else {
            bytes::Bytes::new()
        };
        let req = Request::from_parts(parts, ());
        match (req.method().clone(), path.as_str()) {
            (HttpMethod::GET, "/" | "/index.html") => {
                Ok(asset("text/html; charset=utf-8", INDEX_HTML))
            }
            (HttpMethod::GET, "/assets/app.js") => {
                Ok(asset("text/javascript; charset=utf-8", APP_JS))
            }
            (HttpMethod::GET, "/assets/style.css") => {
                Ok(asset("text/css; charset=utf-8", STYLE_CSS))
            }
            (HttpMethod::GET, "/console/session") => {
                let caller = self.caller_of(handler, &req, false)?;
                let csrf = self.csrf_of(&req).unwrap_or_default();
                Ok(session_json(&caller, &csrf, None))
            }
            (HttpMethod::POST, "/console/challenge") => {
                check_origin(&req)?;
                self.challenge()
            }
            (HttpMethod::POST, "/console/login") => {
                check_origin(&req)?;
                self.login(handler, &body)
            }
            (HttpMethod::POST, "/console/logout") => {
                self.caller_of(handler, &req, true)?;
                if let Some(token) = cookie(&req) {
                    self.lock_sessions().remove(&token);
                }
                let mut resp = bytes_response(StatusCode::OK, "application/json", b"{}".to_vec());
                resp.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "tern_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
                    ),
                );
                Ok(resp)
            }
            (HttpMethod::POST, "/console/qr") => {
                self.caller_of(handler, &req, true)?;
                let QrText { text } = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::malformed(format!("expected {{\"text\": ...}}: {e}")))?;
                qr_svg(&text)
            }
            _ => Err(ApiError::not_found(format!(
                "nothing at {}",
                truncate(&path)
            ))),
        }
    }

    /// The caller behind a console request: a live session, its CSRF token in the
    /// header, the request from this origin.
    pub(super) fn caller<H: OperatorApi, B>(
        &self,
        handler: &H,
        req: &Request<B>,
    ) -> Result<Caller, ApiError> {
        self.caller_of(handler, req, true)
    }

    fn caller_of<H: OperatorApi, B>(
        &self,
        handler: &H,
        req: &Request<B>,
        state_changing: bool,
    ) -> Result<Caller, ApiError> {
        let token = cookie(req)
            .ok_or_else(|| ApiError::unauthenticated("log in: no operator identity or session"))?;
        let cert = {
            let mut sessions = self.lock_sessions();
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            let session = sessions
                .get(&token)
                .ok_or_else(|| ApiError::unauthenticated("the session has ended: log in again"))?;
            if state_changing {
                check_origin(req)?;
                let sent = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
                if sent
                    .is_none_or(|sent| !constant_time_eq(sent.as_bytes(), session.csrf.as_bytes()))
                {
                    return Err(ApiError::permission_denied(
                        "missing or wrong CSRF token (the X-Tern-CSRF header)",
                    ));
                }
            }
            session.cert_der.clone()
        };
        match handler.authenticate(&cert) {
            Ok(mut caller) => {
                caller.via = Via::ConsoleSession;
                Ok(caller)
            }
            Err(e) => {
                // Revoked (or expired): the session ends with it.
                self.lock_sessions().remove(&token);
                Err(e)
            }
        }
    }

    fn csrf_of<B>(&self, req: &Request<B>) -> Option<String> {
        let token = cookie(req)?;
        self.lock_sessions().get(&token).map(|s| s.csrf.clone())
    }

    fn challenge(&self) -> Result<Response<Body>, ApiError> {
        let challenge = random_token()?;
        let mut challenges = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        challenges.retain(|_, expires| *expires > now);
        if challenges.len() >= MAX_CHALLENGES {
            return Err(ApiError::new(
                crate::api::v1::ErrorCode::ResourceExhausted,
                "too many logins under way; try again in a minute",
            ));
        }
        challenges.insert(challenge.clone(), now + CHALLENGE_LIFETIME);
        let body = serde_json::json!({ "challenge": challenge });
        Ok(bytes_response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        ))
    }

    fn login<H: OperatorApi>(&self, handler: &H, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let login: Login = serde_json::from_slice(body).map_err(|e| {
            ApiError::malformed(format!(
                "expected {{\"certificatePem\", \"challenge\", \"signature\"}}: {e}"
            ))
        })?;
        // Single use, whatever follows.
        let fresh = self
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&login.challenge)
            .is_some_and(|expires| expires > Instant::now());
        if !fresh {
            return Err(ApiError::unauthenticated(
                "the login challenge is unknown or expired: try again",
            ));
        }
        let cert_der = pem_certificate(&login.certificate_pem)?;
        let mut caller = handler.authenticate(&cert_der)?;
        let signature = STANDARD
            .decode(login.signature.trim())
            .map_err(|_| ApiError::invalid_argument("signature must be base64"))?;
        let signed = format!("{LOGIN_CONTEXT}{}", login.challenge);
        verify_p256(&cert_der, signed.as_bytes(), &signature)?;
        caller.via = Via::ConsoleSession;
        let token = random_token()?;
        let csrf = random_token()?;
        {
            let mut sessions = self.lock_sessions();
            let now = Instant::now();
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS {
                return Err(ApiError::new(
                    crate::api::v1::ErrorCode::ResourceExhausted,
                    "too many console sessions are open",
                ));
            }
            sessions.insert(
                token.clone(),
                Session {
                    cert_der,
                    csrf: csrf.clone(),
                    expires: now + self.lifetime,
                },
            );
        }
        let cookie = format!(
            "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
            self.lifetime.as_secs()
        );
        Ok(session_json(&caller, &csrf, Some(cookie)))
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn session_json(caller: &Caller, csrf: &str, cookie: Option<String>) -> Response<Body> {
    let body = serde_json::json!({
        "operator": caller.name,
        "role": caller.role.as_str_name(),
        "roleName": role_name(caller.role),
        "csrfToken": csrf,
    });
    let mut resp = bytes_response(
        StatusCode::OK,
        "application/json",
        body.to_string().into_bytes(),
    );
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    resp
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response<Body> {
    let mut resp = bytes_response(StatusCode::OK, content_type, bytes.to_vec());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The session cookie's value, if the request carries one.
fn cookie<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// A browser names the page's origin on every POST: it must be this daemon's.
fn check_origin<B>(req: &Request<B>) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let same = match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin.strip_prefix("https://") == Some(host),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(ApiError::permission_denied(
            "the request comes from another origin",
        ))
    }
}

fn pem_certificate(pem: &str) -> Result<Vec<u8>, ApiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .ok_or_else(|| ApiError::invalid_argument("certificatePem holds no PEM certificate"))
}

/// Checks an ECDSA P-256 signature (the 64-byte `r || s` form WebCrypto makes) by the
/// key of `cert_der`.
fn verify_p256(cert_der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ApiError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|_| ApiError::invalid_argument("the certificate does not parse"))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(message, signature)
        .map_err(|_| ApiError::unauthenticated("the signature does not match the identity's key"))
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn qr_svg(text: &str) -> Result<Response<Body>, ApiError> {
    if text.is_empty() || text.len() > MAX_QR_TEXT {
        return Err(ApiError::invalid_argument(format!(
            "text must be 1..={MAX_QR_TEXT} bytes"
        )));
    }
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| ApiError::invalid_argument(format!("no QR code for it: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    Ok(bytes_response(
        StatusCode::OK,
        "image/svg+xml",
        svg.into_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let req = Request::builder()
            .header("cookie", "a=1; tern_session=abc; b=2")
            .body(())
            .unwrap();
        assert_eq!(cookie(&req).as_deref(), Some("abc"));
        let req = Request::builder()
            .header("cookie", "tern_session=")
            .body(())
            .unwrap();
        assert_eq!(cookie(&req), None);
    }

    #[test]
    fn another_origin_is_refused() {
        let req = |origin: &str| {
            Request::builder()
                .header("host", "127.0.0.1:7444")
                .header("origin", origin)
                .body(())
                .unwrap()
        };
        assert!(check_origin(&req("https://127.0.0.1:7444")).is_ok());
        assert!(check_origin(&req("https://evil.example")).is_err());
        assert!(check_origin(&req("http://127.0.0.1:7444")).is_err());
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pkcs8 = key.serialize_der();
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &rng,
        )
        .unwrap();
        let sig = signer.sign(&rng, b"hello").unwrap();
        assert!(verify_p256(cert.der(), b"hello", sig.as_ref()).is_ok());
        assert!(verify_p256(cert.der(), b"hellp", sig.as_ref()).is_err());
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &other.serialize_der(),
            &rng,
        )
        .unwrap();
        let sig = other.sign(&rng, b"hello").unwrap();
        assert!(verify_p256(cert.der(), b"hello", sig.as_ref()).is_err());
    }
}
