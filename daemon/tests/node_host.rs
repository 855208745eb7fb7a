//! The Linux node host: each capability through the registry, the identity on disk, the
//! service files, and a node host against a daemon over loopback TCP + TLS
//! that answers calls, streams events, survives a cut connection and a restart, and
//! stops when revoked; with several daemon addresses, it skips a dead one and moves to
//! another when its daemon goes, both in process and as `ternd node run` against real
//! `ternd serve` processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20::ChaCha20Rng;
use daemon::ca::{
    CertificateAuthority, ClientCertificate, IssuancePolicy, ServerIdentity, verify_csr,
};
use daemon::node_host::addrs::DaemonAddrs;
use daemon::node_host::capabilities::{
    AWAITING_APPROVAL, ApprovalRequest, CallContext, Capability, CapabilityError, Descriptor,
    OpenUrlOptions, Opened, Prompter, Registry, RegistryError, UrlPolicy, parse_loadavg,
    parse_meminfo, parse_uptime,
};
use daemon::node_host::connect::{Backoff, Dialer, HostError, NodeHost, NodeHostConfig, TcpDialer};
use daemon::node_host::identity::{
    CA_CERT_FILE, CLIENT_CERT_FILE, IdentityError, KEY_FILE, NodeIdentity, STATE_FILE,
};
use daemon::node_host::runtime::NodeHandle;
use daemon::node_host::service::{
    InstallOptions, NodeConfigFile, ServiceAction, ServiceError, UNIT_NAME, install, render_unit,
    systemctl, systemd_running,
};
use node_contract::Health;
use protocol_core::session::{
    CallState, Config, DaemonSession, Instant, OwnedDaemonEvent, OwnedOutcome,
};
use protocol_core::wire::{CallId, Payload, RejectCode, Stage};
use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spake2plus::rand_core::SeedableRng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use transport_tokio::pairing::PairingBundle;
use transport_tokio::tcp::{Connector, DeviceConnection, Listener, ListenerConfig, Routes};
use transport_tokio::tls::{Fingerprint, RevocationList, server_config};
use transport_tokio::{Application, Driver, Journal, JournalStore, MemJournals, StoragePool};

const JSON: &str = "application/json";
const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([9; 32])
}

async fn invoke(registry: &Registry, name: &str, input: &[u8]) -> Result<Vec<u8>, CapabilityError> {
    registry
        .invoke(name, JSON, input.to_vec(), CallContext::detached())
        .await
}

// ----- capabilities -----

#[tokio::test]
async fn echo_returns_json_unchanged_and_refuses_other_bytes() {
    let registry = Registry::builtin(OpenUrlOptions::default());
    let input = br#"{"a": [1, 2.5, "x"], "b": null}"#;
    assert_eq!(invoke(&registry, "echo", input).await.unwrap(), input);
    for bad in [&b"not json"[..], b"{\"a\":", b""] {
        let e = invoke(&registry, "echo", bad).await.unwrap_err();
        assert!(matches!(e, CapabilityError::BadInput(_)), "{e}");
        assert!(matches!(
            e.to_outcome(),
            OwnedOutcome::Rejected {
                code: RejectCode::BadInput,
                ..
            }
        ));
    }
    // The registry checks the content type before the handler runs.
    let e = registry
        .invoke(
            "echo",
            "text/plain",
            b"{}".to_vec(),
            CallContext::detached(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CapabilityError::BadInput(_)), "{e}");
    let e = invoke(&registry, "no.such", b"{}").await.unwrap_err();
    assert_eq!(e, CapabilityError::UnknownCapability("no.such".into()));
    assert!(matches!(
        e.to_outcome(),
        OwnedOutcome::Rejected {
            code: RejectCode::UnknownCapability,
            ..
        }
    ));
}

#[tokio::test]
async fn health_reports_the_systems_figures() {
    let registry = Registry::builtin(OpenUrlOptions::default());
    let out = invoke(&registry, "system.health", b"{}").await.unwrap();
    let h: Health<'_> = serde_json::from_slice(&out).unwrap();
    assert!(h.uptime_s > 0.0, "{h:?}");
    let (load, memory, disk) = (h.load.unwrap(), h.memory.unwrap(), h.disk.unwrap());
    assert!(load.one >= 0.0 && load.five >= 0.0 && load.fifteen >= 0.0);
    assert!(memory.total_bytes > 1 << 20, "{h:?}");
    assert!(memory.available_bytes > 0 && memory.available_bytes <= memory.total_bytes);
    assert_eq!(disk.path, "/");
    assert!(disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes);
    assert!(!h.hostname.unwrap().is_empty());
    // A Linux host has no microcontroller figures, and does not write them as null.
    assert_eq!((h.static_ram, h.heap, h.stack), (None, None, None));
    assert!(!String::from_utf8_lossy(&out).contains("null"));
    // The same figures the files give, read independently.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(memory.total_bytes, total_kb * 1024);

    // Another filesystem, by path.
    let dir = tempfile::tempdir().unwrap();
    let input = serde_json::json!({ "path": dir.path() }).to_string();
    let out = invoke(&registry, "system.health", input.as_bytes())
        .await
        .unwrap();
    let disk = serde_json::from_slice::<Health<'_>>(&out)
        .unwrap()
        .disk
        .unwrap();
    assert_eq!(Path::new(disk.path), dir.path());
    assert!(disk.total_bytes > 0);

    for bad in [
        &br#"{"path": "relative/dir"}"#[..],
        br#"{"paht": "/"}"#,
        b"[1",
    ] {
        let e = invoke(&registry, "system.health", bad).await.unwrap_err();
        assert!(matches!(e, CapabilityError::BadInput(_)), "{e}");
    }
    let e = invoke(&registry, "system.health", br#"{"path": "/no/such/dir"}"#)
        .await
        .unwrap_err();
    assert!(matches!(e, CapabilityError::Failed(_)), "{e}");
}

#[test]
fn proc_parsers_read_real_formats_and_refuse_garbage() {
    assert_eq!(parse_uptime("12345.67 54321.00\n").unwrap(), 12345.67);
    let load = parse_loadavg("0.52 0.58 1.59 1/467 12345\n").unwrap();
    assert_eq!((load.one, load.five, load.fifteen), (0.52, 0.58, 1.59));
    let mem =
        parse_meminfo("MemTotal:       16318412 kB\nMemFree: 1 kB\nMemAvailable:    8000000 kB\n")
            .unwrap();
    assert_eq!(mem.total_bytes, 16_318_412 * 1024);
    assert_eq!(mem.available_bytes, 8_000_000 * 1024);

    assert!(parse_uptime("").is_err());
    assert!(parse_uptime("-3 1").is_err());
    assert!(parse_uptime("NaN 1").is_err());
    assert!(parse_loadavg("0.1 0.2").is_err());
    assert!(parse_loadavg("0.1 x 0.3").is_err());
    assert!(
        parse_meminfo("MemTotal: 5 kB\n").is_err(),
        "no MemAvailable"
    );
    assert!(parse_meminfo("MemTotal: 5 MB\nMemAvailable: 1 kB\n").is_err());
    assert!(parse_meminfo("MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n").is_err());
}

/// Answers every question with `answer` and remembers the questions.
struct Scripted {
    answer: bool,
    asked: Mutex<Vec<ApprovalRequest>>,
}

impl Scripted {
    fn new(answer: bool) -> Arc<Self> {
        Arc::new(Self {
            answer,
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked(&self) -> Vec<ApprovalRequest> {
        self.asked.lock().unwrap().clone()
    }
}

impl Prompter for Scripted {
    fn confirm(
        &self,
        request: ApprovalRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        self.asked.lock().unwrap().push(request);
        let answer = self.answer;
        Box::pin(async move { answer })
    }
}

/// An opener that writes the URL it was given into `file`.
fn recording_opener(file: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"printf %s "$1" > "$0""#.into(),
        file.to_str().unwrap().into(),
    ]
}

fn open_url_registry(policy: UrlPolicy, prompter: Option<Arc<Scripted>>, file: &Path) -> Registry {
    Registry::builtin(OpenUrlOptions {
        policy,
        prompter: prompter.map(|p| p as Arc<dyn Prompter>),
        opener: recording_opener(file),
    })
}

async fn open_url(
    registry: &Registry,
    url: &str,
) -> (Result<Vec<u8>, CapabilityError>, Vec<(Stage, String)>) {
    let (ctx, mut progress) = CallContext::with_progress(8);
    let input = serde_json::json!({ "url": url }).to_string().into_bytes();
    let r = registry.invoke("desktop.open_url", JSON, input, ctx).await;
    let mut stages = Vec::new();
    while let Ok(p) = progress.try_recv() {
        stages.push((p.stage, p.detail));
    }
    (r, stages)
}

#[tokio::test]
async fn open_url_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("opened");
    let url = "https://example.com/a?b=c";

    // Deny: refused, typed, nothing run.
    let r = open_url_registry(UrlPolicy::Deny, None, &file);
    assert!(
        r.get("desktop.open_url")
            .unwrap()
            .descriptor()
            .needs_approval
    );
    let (res, stages) = open_url(&r, url).await;
    let e = res.unwrap_err();
    assert_eq!(e, CapabilityError::NeedsApproval);
    assert_eq!(
        e.to_outcome(),
        OwnedOutcome::Rejected {
            code: RejectCode::Denied,
            reason: "needs local approval".into()
        }
    );
    assert!(stages.is_empty());
    assert!(!file.exists());

    // Allow: opened at once with the normalised URL, exit status reported.
    let r = open_url_registry(UrlPolicy::Allow, None, &file);
    assert!(
        !r.get("desktop.open_url")
            .unwrap()
            .descriptor()
            .needs_approval
    );
    let (res, stages) = open_url(&r, url).await;
    let opened: Opened = serde_json::from_slice(&res.unwrap()).unwrap();
    assert_eq!((opened.url.as_str(), opened.exit_code), (url, 0));
    assert!(stages.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), url);
    std::fs::remove_file(&file).unwrap();

    // Prompt, yes: the stage is reported before the person is asked, then it opens.
    let yes = Scripted::new(true);
    let r = open_url_registry(UrlPolicy::Prompt, Some(yes.clone()), &file);
    let (res, stages) = open_url(&r, "http://example.org/").await;
    res.unwrap();
    assert_eq!(
        stages.first(),
        Some(&(Stage::AwaitingApproval, AWAITING_APPROVAL.to_owned()))
    );
    assert_eq!(yes.asked().len(), 1);
    assert_eq!(yes.asked()[0].url, "http://example.org/");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "http://example.org/"
    );
    std::fs::remove_file(&file).unwrap();

    // Prompt, no: denied, nothing run.
    let no = Scripted::new(false);
    let r = open_url_registry(UrlPolicy::Prompt, Some(no.clone()), &file);
    let (res, stages) = open_url(&r, url).await;
    assert_eq!(res.unwrap_err(), CapabilityError::Denied);
    assert_eq!(
        stages,
        [(Stage::AwaitingApproval, AWAITING_APPROVAL.to_owned())]
    );
    assert_eq!(no.asked().len(), 1);
    assert!(!file.exists());

    // Prompt without anyone to ask: refused.
    let r = open_url_registry(UrlPolicy::Prompt, None, &file);
    assert_eq!(
        open_url(&r, url).await.0.unwrap_err(),
        CapabilityError::NeedsApproval
    );

    // Only http(s) URLs with a host, whatever the policy; nobody is asked.
    let asked = Scripted::new(true);
    for policy in [UrlPolicy::Allow, UrlPolicy::Prompt] {
        let r = open_url_registry(policy, Some(asked.clone()), &file);
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "ftp://example.com/x",
            "-oProxyCommand=x",
            "not a url",
            "http://",
        ] {
            let e = open_url(&r, bad).await.0.unwrap_err();
            assert!(matches!(e, CapabilityError::BadInput(_)), "{bad}: {e}");
        }
    }
    assert!(asked.asked().is_empty());
    assert!(!file.exists());

    // An opener that fails is reported with its status.
    let r = Registry::builtin(OpenUrlOptions {
        policy: UrlPolicy::Allow,
        prompter: None,
        opener: vec!["false".into()],
    });
    let e = open_url(&r, url).await.0.unwrap_err();
    assert!(
        matches!(&e, CapabilityError::Failed(why) if why.contains("exit status: 1")),
        "{e}"
    );
}

struct Fixed(Descriptor);

impl Capability for Fixed {
    fn descriptor(&self) -> &Descriptor {
        &self.0
    }
    fn call(&self, _: Vec<u8>, _: CallContext) -> daemon::node_host::capabilities::CallFuture {
        Box::pin(async { Ok(b"42".to_vec()) })
    }
}

#[tokio::test]
async fn registry_takes_more_capabilities_and_refuses_bad_ones() {
    let mut r = Registry::builtin(OpenUrlOptions::default());
    let names: Vec<_> = r
        .wire_descriptors()
        .iter()
        .map(|d| d.name.to_owned())
        .collect();
    assert_eq!(names, ["echo", "system.health", "desktop.open_url"]);
    r.add(Fixed(Descriptor::json("answer", "the answer", false)))
        .unwrap();
    assert_eq!(invoke(&r, "answer", b"{}").await.unwrap(), b"42");
    assert_eq!(
        r.add(Fixed(Descriptor::json("echo", "again", false))),
        Err(RegistryError::Duplicate("echo".into()))
    );
    for bad in ["", "Upper", "with space", &"x".repeat(65)] {
        assert!(matches!(
            r.add(Fixed(Descriptor::json(bad, "", false))),
            Err(RegistryError::BadName(_))
        ));
    }
    for i in r.wire_descriptors().len()..32 {
        r.add(Fixed(Descriptor::json(&format!("c{i}"), "", false)))
            .unwrap();
    }
    assert_eq!(
        r.add(Fixed(Descriptor::json("one.too.many", "", false))),
        Err(RegistryError::TooMany)
    );
}

// ----- identity -----

fn test_ca() -> CertificateAuthority {
    CertificateAuthority::create(
        "tern test CA",
        now_ms(),
        IssuancePolicy::default(),
        &mut rng(),
    )
    .unwrap()
}

fn issue(ca: &CertificateAuthority, identity: &NodeIdentity) -> ClientCertificate {
    ca.issue_client(
        &identity.csr_der().unwrap(),
        identity.device_id(),
        now_ms(),
        &mut rng(),
    )
    .unwrap()
}

fn bundle(
    ca: &CertificateAuthority,
    issued: &ClientCertificate,
    server: &ServerIdentity,
) -> PairingBundle {
    PairingBundle {
        device_id: issued.device_id.clone(),
        client_cert: issued.der.clone(),
        ca_cert: ca.certificate_der().to_vec(),
        server_fingerprint: Fingerprint(server.fingerprint.0),
    }
}

fn paired_identity(
    dir: &Path,
    ca: &CertificateAuthority,
    server: &ServerIdentity,
    daemon: &str,
) -> NodeIdentity {
    let mut identity = NodeIdentity::create(dir, None).unwrap();
    let issued = issue(ca, &identity);
    identity
        .install_pairing(&bundle(ca, &issued, server), [daemon])
        .unwrap();
    identity
}

#[test]
fn identity_is_created_paired_saved_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut identity = NodeIdentity::create(&state, None).unwrap();
    let id = identity.device_id().to_owned();
    assert!(id.starts_with("node-") && id.len() == 13, "{id}");
    assert!(id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&state), 0o700);
    assert!(identity.paired().is_none());
    assert!(matches!(
        identity.client_config(),
        Err(IdentityError::NotPaired)
    ));
    // A second identity in the same place is refused; another device id is kept.
    assert!(matches!(
        NodeIdentity::create(&state, None),
        Err(IdentityError::AlreadyExists(_))
    ));
    assert_eq!(NodeIdentity::load(&state).unwrap().device_id(), id);
    let other = NodeIdentity::create(&dir.path().join("other"), Some("kitchen-pi")).unwrap();
    assert_eq!(other.device_id(), "kitchen-pi");
    assert!(matches!(
        NodeIdentity::create(&dir.path().join("bad"), Some("no spaces")),
        Err(IdentityError::BadDeviceId(_))
    ));

    // The CSR is what the CA accepts; the certificate comes back for our key.
    let csr = identity.csr_der().unwrap();
    verify_csr(&csr).unwrap();
    let ca = test_ca();
    let server = ca
        .issue_server(&["127.0.0.1".into()], now_ms(), &mut rng())
        .unwrap();
    let issued = ca
        .issue_client(&csr, "node-assigned", now_ms(), &mut rng())
        .unwrap();
    identity
        .install_pairing(&bundle(&ca, &issued, &server), ["127.0.0.1:7443"])
        .unwrap();
    assert_eq!(identity.device_id(), "node-assigned");

    let loaded = NodeIdentity::load(&state).unwrap();
    assert_eq!(loaded.device_id(), "node-assigned");
    let paired = loaded.paired().unwrap();
    assert_eq!(paired, identity.paired().unwrap());
    assert_eq!(paired.daemons, ["127.0.0.1:7443"]);
    assert_eq!(paired.server_fingerprint.0, server.fingerprint.0);
    assert_eq!(paired.client_cert_der, issued.der);
    assert_eq!(paired.ca_cert_der, ca.certificate_der());
    assert_eq!(
        paired
            .not_after
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        issued.not_after_ms
    );
    loaded.client_config().unwrap();
    // The same key: a CSR from the loaded identity carries the same public key.
    assert_eq!(
        verify_csr(&loaded.csr_der().unwrap()).unwrap().public_key,
        verify_csr(&csr).unwrap().public_key
    );
    // No temporary files left behind.
    let mut names: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [CA_CERT_FILE, CLIENT_CERT_FILE, KEY_FILE, STATE_FILE]
    );
}

#[test]
fn half_written_or_corrupt_directories_are_typed_errors() {
    let ca = test_ca();
    let server = ca
        .issue_server(&["127.0.0.1".into()], now_ms(), &mut rng())
        .unwrap();
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        paired_identity(dir.path(), &ca, &server, "127.0.0.1:1");
        dir
    };
    let load = |dir: &tempfile::TempDir| NodeIdentity::load(dir.path()).unwrap_err();

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        NodeIdentity::load(empty.path()),
        Err(IdentityError::NotFound(_))
    ));

    let dir = fresh();
    std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
    assert!(
        matches!(load(&dir), IdentityError::Incomplete { missing } if missing.ends_with(STATE_FILE))
    );

    let dir = fresh();
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    assert!(
        matches!(load(&dir), IdentityError::Incomplete { missing } if missing.ends_with(KEY_FILE))
    );

    let dir = fresh();
    std::fs::remove_file(dir.path().join(CLIENT_CERT_FILE)).unwrap();
    assert!(
        matches!(load(&dir), IdentityError::Incomplete { missing } if missing.ends_with(CLIENT_CERT_FILE))
    );

    let dir = fresh();
    std::fs::write(dir.path().join(STATE_FILE), "device_id = [").unwrap();
    assert!(
        matches!(load(&dir), IdentityError::Corrupt { path, .. } if path.ends_with(STATE_FILE))
    );

    let dir = fresh();
    std::fs::write(dir.path().join(STATE_FILE), "device_id = \"../etc\"\n").unwrap();
    assert!(matches!(load(&dir), IdentityError::Corrupt { .. }));

    let dir = fresh();
    let key = dir.path().join(KEY_FILE);
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(matches!(load(&dir), IdentityError::Corrupt { path, .. } if path == key));

    let dir = fresh();
    let cert = dir.path().join(CLIENT_CERT_FILE);
    let mut der = std::fs::read(&cert).unwrap();
    der.truncate(der.len() / 2);
    std::fs::write(&cert, der).unwrap();
    assert!(matches!(load(&dir), IdentityError::Corrupt { .. }));

    let dir = fresh();
    let key = dir.path().join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        load(&dir),
        IdentityError::InsecureKey { mode: 0o644, .. }
    ));
}

#[test]
fn pairing_and_renewal_take_only_certificates_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let server = ca
        .issue_server(&["127.0.0.1".into()], now_ms(), &mut rng())
        .unwrap();
    let mut identity = NodeIdentity::create(dir.path(), None).unwrap();

    // A certificate for another key.
    let stranger = NodeIdentity::create(&dir.path().join("s"), None).unwrap();
    let theirs = issue(&ca, &stranger);
    let mut b = bundle(&ca, &theirs, &server);
    b.device_id = identity.device_id().to_owned();
    assert!(matches!(
        identity.install_pairing(&b, ["x:1"]),
        Err(IdentityError::CertificateMismatch(_))
    ));
    // Ours, but the bundle names another CA, or another device.
    let ours = issue(&ca, &identity);
    let mut b = bundle(&ca, &ours, &server);
    b.ca_cert = test_ca().certificate_der().to_vec();
    assert!(matches!(
        identity.install_pairing(&b, ["x:1"]),
        Err(IdentityError::CertificateMismatch(_))
    ));
    let mut b = bundle(&ca, &ours, &server);
    b.device_id = "node-other".into();
    assert!(matches!(
        identity.install_pairing(&b, ["x:1"]),
        Err(IdentityError::CertificateMismatch(_))
    ));
    assert!(identity.paired().is_none());
    assert!(!dir.path().join(CLIENT_CERT_FILE).exists());

    identity
        .install_pairing(&bundle(&ca, &ours, &server), ["x:1"])
        .unwrap();
    let not_after = identity.paired().unwrap().not_after;
    let now = SystemTime::now();
    assert!(!identity.needs_renewal(now).unwrap());
    assert!(
        identity
            .needs_renewal(not_after - Duration::from_secs(29 * 86_400))
            .unwrap()
    );
    assert!(
        !identity
            .needs_renewal(not_after - Duration::from_secs(31 * 86_400))
            .unwrap()
    );

    // Renewal: the CA re-issues for the same key; a certificate for another key is refused.
    assert!(matches!(
        identity.install_renewed(&theirs.der),
        Err(IdentityError::CertificateMismatch(_))
    ));
    let later = now_ms() + 1000;
    let renewed = ca
        .reissue(&ours.der, &identity.csr_der().unwrap(), later, &mut rng())
        .unwrap();
    identity.install_renewed(&renewed.der).unwrap();
    let loaded = NodeIdentity::load(dir.path()).unwrap();
    assert_eq!(loaded.paired().unwrap().client_cert_der, renewed.der);
    assert!(loaded.paired().unwrap().not_after >= not_after);
}

#[test]
fn the_daemon_addresses_are_a_list_and_old_files_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let server = ca
        .issue_server(&["127.0.0.1".into()], now_ms(), &mut rng())
        .unwrap();
    let mut identity = NodeIdentity::create(dir.path(), None).unwrap();
    let issued = issue(&ca, &identity);
    let b = bundle(&ca, &issued, &server);

    // Not an address, or none at all: refused, nothing written.
    for bad in [&["a.example:7443", "b.example"][..], &[], &["a:1,,b:2"]] {
        assert!(
            matches!(
                identity.install_pairing(&b, bad),
                Err(IdentityError::BadDaemons(_))
            ),
            "{bad:?}"
        );
    }
    assert!(identity.paired().is_none());

    // Repeated and comma-separated entries make one list, each address once.
    identity
        .install_pairing(
            &b,
            ["a.example:7443, [::1]:7443", "a.example:7443", "10.0.0.9:1"],
        )
        .unwrap();
    let list = ["a.example:7443", "[::1]:7443", "10.0.0.9:1"];
    assert_eq!(identity.paired().unwrap().daemons, list);
    let state = dir.path().join(STATE_FILE);
    let written: toml::Value = toml::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let paired = written["paired"].as_table().unwrap();
    assert!(!paired.contains_key("daemon"), "{paired:?}");
    assert_eq!(
        paired["daemons"].as_array().unwrap(),
        &list.map(|a| toml::Value::String(a.into()))
    );
    assert_eq!(
        NodeIdentity::load(dir.path())
            .unwrap()
            .paired()
            .unwrap()
            .daemons,
        list
    );

    // Given other addresses later, it keeps them; the same ones change nothing.
    assert!(identity.set_daemons(["b.example:7443"]).unwrap());
    assert!(!identity.set_daemons(["b.example:7443"]).unwrap());
    assert!(identity.set_daemons(Vec::<String>::new()).is_err());
    assert_eq!(
        NodeIdentity::load(dir.path())
            .unwrap()
            .paired()
            .unwrap()
            .daemons,
        ["b.example:7443"]
    );

    // A file written before the list: one `daemon`.
    let fp = written["paired"]["server_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let device = identity.device_id().to_owned();
    let old = format!(
        "device_id = \"{device}\"\n\n[paired]\ndaemon = \"old.example:7443\"\nserver_fingerprint = \"{fp}\"\n"
    );
    std::fs::write(&state, &old).unwrap();
    let mut loaded = NodeIdentity::load(dir.path()).unwrap();
    assert_eq!(loaded.paired().unwrap().daemons, ["old.example:7443"]);
    assert_eq!(
        loaded.paired().unwrap().server_fingerprint.0,
        server.fingerprint.0
    );
    // Rewritten in the new form once its addresses change.
    assert!(
        loaded
            .set_daemons(["old.example:7443", "new.example:7443"])
            .unwrap()
    );
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("daemons = ["), "{text}");
    assert!(!text.contains("daemon ="), "{text}");
    // Both forms in one file: the single one first, each address once.
    std::fs::write(
        &state,
        old.replace(
            "daemon = ",
            "daemons = [\"x.example:1\", \"old.example:7443\"]\ndaemon = ",
        ),
    )
    .unwrap();
    assert_eq!(
        NodeIdentity::load(dir.path())
            .unwrap()
            .paired()
            .unwrap()
            .daemons,
        ["old.example:7443", "x.example:1"]
    );
    // A pairing with no address at all does not load.
    std::fs::write(&state, old.replace("daemon = \"old.example:7443\"\n", "")).unwrap();
    assert!(matches!(
        NodeIdentity::load(dir.path()),
        Err(IdentityError::Corrupt { .. })
    ));
}

// ----- service -----

#[test]
fn install_writes_the_config_and_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfigFile {
        daemons: vec!["ternd.example:7443".into(), "[2001:db8::1]:7443".into()],
        state_dir: "/var/lib/tern node".into(),
        url_policy: UrlPolicy::Prompt,
        opener: None,
        heartbeat_secs: Some(30),
    };
    let options = InstallOptions {
        unit_dir: dir.path().join("units"),
        config_path: dir.path().join("etc/node 100%.toml"),
        exe: "/usr/local/bin/ternd".into(),
    };
    let installed = install(&config, &options).unwrap();
    assert_eq!(
        installed.unit_path,
        dir.path().join("units").join(UNIT_NAME)
    );
    let unit = std::fs::read_to_string(&installed.unit_path).unwrap();
    let config_arg = options.config_path.to_str().unwrap().replace('%', "%%");
    let exec = format!("ExecStart=\"/usr/local/bin/ternd\" node run --config \"{config_arg}\"");
    assert!(unit.lines().any(|l| l == exec), "{unit}");
    assert!(unit.lines().any(|l| l == "Restart=on-failure"), "{unit}");
    assert!(unit.contains("[Install]\nWantedBy=multi-user.target"));
    assert_eq!(NodeConfigFile::load(&options.config_path).unwrap(), config);
    let text = std::fs::read_to_string(&options.config_path).unwrap();
    assert!(text.contains("url_policy = \"prompt\""), "{text}");

    // Paths that would break the unit are refused.
    assert!(matches!(
        render_unit(Path::new("ternd"), Path::new("/etc/x.toml")),
        Err(ServiceError::BadPath(_))
    ));
    assert!(matches!(
        render_unit(
            Path::new("/bin/ternd"),
            Path::new("/etc/x\n[Service]\nExecStartPre=/bin/sh")
        ),
        Err(ServiceError::BadPath(_))
    ));
    assert!(
        text.contains("daemons = [\"ternd.example:7443\", \"[2001:db8::1]:7443\"]"),
        "{text}"
    );
    std::fs::write(&options.config_path, "daemon = 1").unwrap();
    assert!(matches!(
        NodeConfigFile::load(&options.config_path),
        Err(ServiceError::BadConfig { .. })
    ));
}

#[test]
fn the_config_file_takes_one_address_or_several() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        NodeConfigFile::load(&path)
    };
    // The form `ternd node install` wrote before the list.
    let old = load("daemon = \"a.example:7443\"\nstate_dir = \"/var/lib/tern\"\n").unwrap();
    assert_eq!(old.daemons, ["a.example:7443"]);
    assert_eq!(old.state_dir, Path::new("/var/lib/tern"));
    let list =
        load("daemons = [\"a.example:7443\", \"b.example:7443,[::1]:7443\"]\nstate_dir = \"/s\"\n")
            .unwrap();
    assert_eq!(
        list.daemons,
        ["a.example:7443", "b.example:7443", "[::1]:7443"]
    );
    let both = load(
        "daemon = \"a.example:7443\"\ndaemons = [\"b.example:7443\", \"a.example:7443\"]\nstate_dir = \"/s\"\n",
    )
    .unwrap();
    assert_eq!(both.daemons, ["a.example:7443", "b.example:7443"]);
    // None: the node uses the addresses it kept at pairing.
    assert!(load("state_dir = \"/s\"\n").unwrap().daemons.is_empty());
    for bad in [
        "daemons = [\"a.example\"]\nstate_dir = \"/s\"\n",
        "daemons = [\"a:1,\"]\nstate_dir = \"/s\"\n",
        "daemon = \"::1:7443\"\nstate_dir = \"/s\"\n",
        "daemons = \"a:1\"\nstate_dir = \"/s\"\n",
        "daemonz = [\"a:1\"]\nstate_dir = \"/s\"\n",
    ] {
        assert!(
            matches!(load(bad), Err(ServiceError::BadConfig { .. })),
            "{bad}"
        );
    }
    // Saved and read back the same.
    list.save(&path).unwrap();
    assert_eq!(NodeConfigFile::load(&path).unwrap(), list);
}

#[test]
fn systemctl_without_systemd_is_a_clear_error() {
    if systemd_running() {
        return;
    }
    let e = systemctl(ServiceAction::Status).unwrap_err();
    assert!(matches!(e, ServiceError::NoSystemd));
    assert!(e.to_string().contains("systemd is not running"));
}

// ----- end to end over loopback TCP + TLS -----

/// A command to the test daemon.
enum DaemonCmd {
    /// Call a capability, learn the call id.
    Call {
        capability: String,
        input: Vec<u8>,
        id: oneshot::Sender<CallId>,
    },
    Cancel(CallId),
}

struct DaemonApp {
    events: mpsc::UnboundedSender<OwnedDaemonEvent>,
}

impl Application<DaemonSession<Box<[u8]>>> for DaemonApp {
    type Command = DaemonCmd;

    fn handle_events(&mut self, s: &mut DaemonSession<Box<[u8]>>, _: Instant) {
        while let Some(ev) = s.poll_event() {
            let _ = self.events.send(OwnedDaemonEvent::from(ev));
        }
    }

    fn handle_command(&mut self, s: &mut DaemonSession<Box<[u8]>>, now: Instant, c: DaemonCmd) {
        match c {
            DaemonCmd::Call {
                capability,
                input,
                id,
            } => {
                let input = Payload {
                    content_type: JSON,
                    data: &input,
                };
                let _ = id.send(s.call(now, &capability, input, 10_000).unwrap());
            }
            DaemonCmd::Cancel(id) => {
                s.cancel(id).unwrap();
            }
        }
    }
}

/// Forwards TCP connections to `target` until told to cut them all; closes its port
/// when dropped.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), target).await
    }

    /// A proxy on `at` (a port another proxy left, once it is free again).
    async fn start_at(at: SocketAddr, target: SocketAddr) -> Self {
        let listener = tokio::time::timeout(WAIT, async {
            loop {
                match TcpListener::bind(at).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await
        .expect("the port is free again");
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            accepted,
            task,
        }
    }

    /// Closes its port, then drops the connections it holds.
    async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.cut();
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection open now (both sides see the stream end).
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A daemon on loopback: a real CA and server certificate, the listener, and one
/// journaled session per node that lives across its connections.
struct TestDaemon {
    ca: CertificateAuthority,
    server: ServerIdentity,
    revocation: Arc<RevocationList>,
    /// The listener itself, for more proxies in front of it.
    listening: SocketAddr,
    proxy: Proxy,
    events: mpsc::UnboundedReceiver<OwnedDaemonEvent>,
    calls: mpsc::Sender<DaemonCmd>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl TestDaemon {
    async fn start() -> Self {
        let ca = test_ca();
        let server = ca
            .issue_server(&["127.0.0.1".into()], now_ms(), &mut rng())
            .unwrap();
        let key = KeyPair::from_pem(&server.key_pem).unwrap().serialize_der();
        let revocation = Arc::new(RevocationList::new());
        let tls = server_config(
            CertificateDer::from(ca.certificate_der().to_vec()),
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            revocation.clone(),
        )
        .unwrap();
        let listener = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            revocation.clone(),
            ListenerConfig::default(),
        )
        .await
        .unwrap();
        let listening = listener.local_addr().unwrap();
        let proxy = Proxy::start(listening).await;
        let (nodes_tx, mut nodes_rx) = mpsc::channel::<DeviceConnection>(8);
        let routes = Routes {
            nodes: nodes_tx,
            pairing: None,
        };
        let listen = tokio::spawn(async move {
            let _ = listener.run(routes).await;
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (calls, mut calls_rx) = mpsc::channel::<DaemonCmd>(16);
        let serve = tokio::spawn(async move {
            let config = Config::server(64 * 1024);
            let pool = StoragePool::new(config.storage_len(), 2);
            let store: Arc<dyn JournalStore> = Arc::new(MemJournals::new());
            let mut session: Option<DaemonSession<Box<[u8]>>> = None;
            let mut app = DaemonApp { events: events_tx };
            // One node: its connections are served one after another.
            while let Some(conn) = nodes_rx.recv().await {
                let id = conn.device_id().to_owned();
                let s = session
                    .get_or_insert_with(|| DaemonSession::new(config, &id, &mut rng()).unwrap());
                let journal = Journal::new(store.clone(), id.as_str());
                let driver = Driver::new(s, &pool, journal, &mut app).with_commands(&mut calls_rx);
                let _ = conn.serve(driver).await;
            }
        });
        Self {
            ca,
            server,
            revocation,
            listening,
            proxy,
            events,
            calls,
            tasks: vec![listen, serve],
        }
    }

    async fn expect<T>(&mut self, mut pick: impl FnMut(&OwnedDaemonEvent) -> Option<T>) -> T {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.events.recv().await.expect("daemon running");
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
        })
        .await
        .expect("daemon event in time")
    }

    async fn call(&mut self, capability: &str, input: &[u8]) -> CallId {
        let (id, rx) = oneshot::channel();
        self.calls
            .send(DaemonCmd::Call {
                capability: capability.into(),
                input: input.to_vec(),
                id,
            })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn cancel(&mut self, id: CallId) {
        self.calls.send(DaemonCmd::Cancel(id)).await.unwrap();
    }

    /// The final state of call `id`, and the node's answer.
    async fn result(&mut self, id: CallId) -> (CallState, Option<OwnedOutcome>) {
        self.expect(|ev| match ev {
            OwnedDaemonEvent::CallUpdate {
                call_id,
                state,
                outcome,
                ..
            } if *call_id == id && state.is_final() => Some((*state, outcome.clone())),
            _ => None,
        })
        .await
    }

    async fn success(&mut self, capability: &str, input: &[u8]) -> Vec<u8> {
        let id = self.call(capability, input).await;
        match self.result(id).await {
            (CallState::Succeeded, Some(OwnedOutcome::Success(p))) => {
                assert_eq!(p.content_type, JSON);
                p.data
            }
            other => panic!("{capability}: {other:?}"),
        }
    }
}

/// Starts a node host for `identity`, journaling into `store`.
fn start_host(
    identity: &NodeIdentity,
    registry: Registry,
    store: &MemJournals,
    tweak: impl FnOnce(&mut NodeHostConfig),
) -> (NodeHandle, JoinHandle<Result<(), HostError>>) {
    let dialer = Arc::new(TcpDialer::from_identity(identity).unwrap());
    start_host_with(identity, registry, store, dialer, tweak)
}

/// Starts a node host for `identity` that dials with `dialer`.
fn start_host_with(
    identity: &NodeIdentity,
    registry: Registry,
    store: &MemJournals,
    dialer: Arc<dyn Dialer>,
    tweak: impl FnOnce(&mut NodeHostConfig),
) -> (NodeHandle, JoinHandle<Result<(), HostError>>) {
    let mut config = NodeHostConfig::new(identity.device_id());
    config.backoff = Backoff {
        initial_ms: 20,
        max_ms: 200,
        reset_after_ms: 60_000,
    };
    config.heartbeat = None;
    tweak(&mut config);
    let restored = store.journal(&config.journal_key);
    let (host, handle) = NodeHost::new(
        config,
        Arc::new(registry),
        vec![dialer],
        Arc::new(store.clone()),
        restored,
    );
    (handle, tokio::spawn(host.run()))
}

async fn ended(task: JoinHandle<Result<(), HostError>>) -> Result<(), HostError> {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("node host ends in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_host_answers_streams_reconnects_and_resumes() {
    let mut daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let paired = paired_identity(
        dir.path(),
        &daemon.ca,
        &daemon.server,
        &daemon.proxy.addr.to_string(),
    );
    // The host runs from what was saved.
    let identity = NodeIdentity::load(dir.path()).unwrap();
    assert_eq!(identity.device_id(), paired.device_id());
    let opened = dir.path().join("opened");
    let yes = Scripted::new(true);
    let registry = open_url_registry(UrlPolicy::Prompt, Some(yes.clone()), &opened);
    let store = MemJournals::new();
    let (handle, task) = start_host(&identity, registry, &store, |c| {
        c.heartbeat = Some(Duration::from_millis(200))
    });

    // Registration.
    let caps = daemon
        .expect(|ev| match ev {
            OwnedDaemonEvent::Register { capabilities, .. } => Some(capabilities.clone()),
            _ => None,
        })
        .await;
    let names: Vec<_> = caps.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["echo", "system.health", "desktop.open_url"]);
    assert!(caps[2].needs_approval && !caps[0].needs_approval);

    // Calls.
    let input = br#"{"x":[1,2,3]}"#;
    assert_eq!(daemon.success("echo", input).await, input);
    let health = daemon.success("system.health", b"{}").await;
    let health: Health<'_> = serde_json::from_slice(&health).unwrap();
    assert!(health.uptime_s > 0.0 && health.memory.unwrap().total_bytes > 0);
    let id = daemon.call("no.such", b"{}").await;
    assert!(matches!(
        daemon.result(id).await,
        (CallState::Rejected(RejectCode::UnknownCapability), _)
    ));
    let id = daemon.call("echo", b"not json").await;
    assert!(matches!(
        daemon.result(id).await,
        (CallState::Rejected(RejectCode::BadInput), _)
    ));

    // A call that needs approval shows the stage first, then opens.
    let id = daemon
        .call("desktop.open_url", br#"{"url":"https://example.com/x"}"#)
        .await;
    daemon
        .expect(|ev| {
            matches!(ev, OwnedDaemonEvent::CallUpdate { call_id, state: CallState::AwaitingApproval, .. } if *call_id == id)
                .then_some(())
        })
        .await;
    assert!(matches!(daemon.result(id).await, (CallState::Succeeded, _)));
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        "https://example.com/x"
    );
    assert_eq!(yes.asked().len(), 1);

    // The heartbeat's health events, and the host's own events.
    let beat = daemon
        .expect(|ev| match ev {
            OwnedDaemonEvent::Event { name, payload, .. } if name == "health" => {
                Some(payload.data.clone())
            }
            _ => None,
        })
        .await;
    let beat: Health<'_> = serde_json::from_slice(&beat).unwrap();
    assert!(beat.uptime_s > 0.0);
    handle
        .send_event("door", &serde_json::json!({ "open": true }))
        .await
        .unwrap();
    let door = daemon
        .expect(|ev| match ev {
            OwnedDaemonEvent::Event { name, payload, .. } if name == "door" => {
                Some(payload.data.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(door, br#"{"open":true}"#);

    // Cut the connection: the host reconnects and resumes the same session; an event
    // sent while it was away arrives once it is back.
    let mut status = handle.status();
    let session = status.borrow().session.unwrap();
    assert_eq!(status.borrow().connections, 1);
    daemon.proxy.cut();
    tokio::time::timeout(WAIT, status.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    let away = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .send_event("while-away", &serde_json::json!({ "n": 1 }))
                .await
        })
    };
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Connected { resumed: true, .. }).then_some(()))
        .await;
    daemon
        .expect(|ev| {
            matches!(ev, OwnedDaemonEvent::Event { name, .. } if name == "while-away").then_some(())
        })
        .await;
    away.await.unwrap().unwrap();
    let s = status.borrow().clone();
    assert!(s.connected && s.resumed && s.connections == 2, "{s:?}");
    assert_eq!(s.session, Some(session));
    assert_eq!(daemon.success("echo", b"[true]").await, b"[true]");

    // Shutdown: a goodbye, then the loop ends.
    handle.shutdown();
    ended(task).await.unwrap();
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Disconnected(_)).then_some(()))
        .await;

    // A restarted host restores its session from the journal and resumes it.
    let registry = Registry::builtin(OpenUrlOptions::default());
    let (handle, task) = start_host(&identity, registry, &store, |_| {});
    let resumed = daemon
        .expect(|ev| match ev {
            OwnedDaemonEvent::Connected { resumed, .. } => Some(*resumed),
            OwnedDaemonEvent::SessionReset { .. } => panic!("the session was reset"),
            _ => None,
        })
        .await;
    assert!(resumed);
    let mut status = handle.status();
    let s = tokio::time::timeout(WAIT, status.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(s.resumed && s.session == Some(session), "{s:?}");
    assert_eq!(daemon.success("echo", b"{}").await, b"{}");
    handle.shutdown();
    ended(task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_host_stops_instead_of_retrying() {
    let mut daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = paired_identity(
        dir.path(),
        &daemon.ca,
        &daemon.server,
        &daemon.proxy.addr.to_string(),
    );
    let store = MemJournals::new();

    // Revoked while connected: the daemon's Error(Revoked) ends the loop.
    let (_handle, task) = start_host(
        &identity,
        Registry::builtin(OpenUrlOptions::default()),
        &store,
        |_| {},
    );
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;
    daemon.revocation.revoke_device(identity.device_id());
    assert!(matches!(ended(task).await, Err(HostError::Revoked)));

    // Revoked before connecting: the handshake's alert ends it.
    let (_handle, task) = start_host(
        &identity,
        Registry::builtin(OpenUrlOptions::default()),
        &store,
        |_| {},
    );
    assert!(matches!(ended(task).await, Err(HostError::Revoked)));

    // A daemon that is not the pinned one is never trusted.
    let other = tempfile::tempdir().unwrap();
    let mut wrong = NodeIdentity::create(other.path(), None).unwrap();
    let issued = issue(&daemon.ca, &wrong);
    let mut b = bundle(&daemon.ca, &issued, &daemon.server);
    b.server_fingerprint = Fingerprint([7; 32]);
    wrong
        .install_pairing(&b, [daemon.proxy.addr.to_string()])
        .unwrap();
    let (_handle, task) = start_host(
        &wrong,
        Registry::builtin(OpenUrlOptions::default()),
        &store,
        |_| {},
    );
    assert!(matches!(ended(task).await, Err(HostError::PinMismatch)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_host_skips_a_dead_address_and_moves_on_when_its_daemon_goes() {
    let mut daemon = TestDaemon::start().await;
    // Two ways to the daemon, and a port nothing listens on.
    let a = Proxy::start(daemon.listening).await;
    let b = Proxy::start(daemon.listening).await;
    let dead = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let dir = tempfile::tempdir().unwrap();
    let mut identity = NodeIdentity::create(dir.path(), None).unwrap();
    let issued = issue(&daemon.ca, &identity);
    identity
        .install_pairing(
            &bundle(&daemon.ca, &issued, &daemon.server),
            [dead, a.addr, b.addr].map(|x| x.to_string()),
        )
        .unwrap();
    // In the order listed, so the dead one is tried first.
    let addrs =
        Arc::new(DaemonAddrs::new(identity.paired().unwrap().daemons.clone()).in_listed_order());
    let dialer = TcpDialer::new(
        Connector::new(identity.client_config().unwrap()),
        addrs.clone(),
    );
    let store = MemJournals::new();
    let (handle, task) = start_host_with(
        &identity,
        Registry::builtin(OpenUrlOptions::default()),
        &store,
        Arc::new(dialer),
        |_| {},
    );
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;
    assert_eq!(addrs.preferred(), Some(a.addr));
    assert_eq!((a.accepted(), b.accepted()), (1, 0));
    assert_eq!(daemon.success("echo", b"[1]").await, b"[1]");
    let session = handle.status().borrow().session.unwrap();

    // The daemon behind `a` goes away: the node moves to `b` and resumes its session.
    let gone = a.addr;
    a.close().await;
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Connected { resumed: true, .. }).then_some(()))
        .await;
    assert_eq!(addrs.preferred(), Some(b.addr));
    assert_eq!(b.accepted(), 1);
    assert_eq!(daemon.success("echo", b"[2]").await, b"[2]");
    assert_eq!(handle.status().borrow().session, Some(session));

    // `a` comes back, and `b`'s connection drops: the node stays on `b`, which answers.
    let a = Proxy::start_at(gone, daemon.listening).await;
    b.cut();
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Connected { resumed: true, .. }).then_some(()))
        .await;
    assert_eq!((a.accepted(), b.accepted()), (0, 2));
    assert_eq!(addrs.preferred(), Some(b.addr));
    assert_eq!(daemon.success("echo", b"[3]").await, b"[3]");
    handle.shutdown();
    ended(task).await.unwrap();
}

/// Runs until cancelled; says when it was stopped.
struct Stall {
    descriptor: Descriptor,
    started: mpsc::UnboundedSender<()>,
    stopped: mpsc::UnboundedSender<()>,
}

struct SaysWhenDropped(mpsc::UnboundedSender<()>);

impl Drop for SaysWhenDropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Capability for Stall {
    fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
    fn call(&self, _: Vec<u8>, _: CallContext) -> daemon::node_host::capabilities::CallFuture {
        let guard = SaysWhenDropped(self.stopped.clone());
        let _ = self.started.send(());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(Vec::new())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stops_its_handler() {
    let mut daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = paired_identity(
        dir.path(),
        &daemon.ca,
        &daemon.server,
        &daemon.proxy.addr.to_string(),
    );
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
    let mut registry = Registry::builtin(OpenUrlOptions::default());
    registry
        .add(Stall {
            descriptor: Descriptor::json("stall", "never ends", false),
            started: started_tx,
            stopped: stopped_tx,
        })
        .unwrap();
    let store = MemJournals::new();
    let (handle, task) = start_host(&identity, registry, &store, |_| {});

    let id = daemon.call("stall", b"{}").await;
    tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped.try_recv().is_err(), "still running");
    daemon.cancel(id).await;
    assert!(matches!(daemon.result(id).await, (CallState::Cancelled, _)));
    tokio::time::timeout(WAIT, stopped.recv())
        .await
        .unwrap()
        .unwrap();
    // Other calls go on.
    assert_eq!(daemon.success("echo", b"1").await, b"1");
    handle.shutdown();
    ended(task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_room_instead_of_being_dropped() {
    let mut daemon = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = paired_identity(
        dir.path(),
        &daemon.ca,
        &daemon.server,
        &daemon.proxy.addr.to_string(),
    );
    let store = MemJournals::new();
    // A replay buffer that holds a handful of events: the rest must wait for acks.
    let (handle, task) = start_host(
        &identity,
        Registry::builtin(OpenUrlOptions::default()),
        &store,
        |c| {
            c.session = Config::server(1024);
            c.event_queue = 4;
        },
    );
    daemon
        .expect(|ev| matches!(ev, OwnedDaemonEvent::Register { .. }).then_some(()))
        .await;

    // Larger than the replay buffer: refused, typed.
    let big = "x".repeat(2048);
    assert_eq!(
        handle.send_event("big", &big).await,
        Err(daemon::node_host::runtime::EventError::TooLarge)
    );

    const PER_TASK: usize = 60;
    let pad = "p".repeat(100);
    let senders: Vec<_> = (0..3)
        .map(|t| {
            let handle = handle.clone();
            let pad = pad.clone();
            tokio::spawn(async move {
                for n in 0..PER_TASK {
                    let body = serde_json::json!({ "t": t, "n": n, "pad": pad });
                    handle.send_event("tick", &body).await.unwrap();
                }
            })
        })
        .collect();
    let mut next = [0usize; 3];
    while next.iter().any(|n| *n < PER_TASK) {
        let data = daemon
            .expect(|ev| match ev {
                OwnedDaemonEvent::Event { name, payload, .. } if name == "tick" => {
                    Some(payload.data.clone())
                }
                _ => None,
            })
            .await;
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
        let t = v["t"].as_u64().unwrap() as usize;
        // Each sender's events arrive all, once, in order.
        assert_eq!(v["n"].as_u64().unwrap() as usize, next[t], "{v}");
        next[t] += 1;
    }
    for s in senders {
        s.await.unwrap();
    }
    handle.shutdown();
    ended(task).await.unwrap();
}

/// Each built-in capability's input is read and checked apart from what it does.
#[test]
fn capability_inputs_are_checked_without_acting() {
    use daemon::node_host::capabilities::{echo_input, health_input, open_url_input};
    use daemon::node_host::renewal::renewed_certificate;

    assert!(echo_input(br#"{"a":[1,2]}"#).is_ok());
    assert!(echo_input(b"{not json").is_err());
    assert_eq!(health_input(b"{}").unwrap(), Path::new("/"));
    assert_eq!(health_input(b"null").unwrap(), Path::new("/"));
    assert_eq!(
        health_input(br#"{"path":"/var"}"#).unwrap(),
        Path::new("/var")
    );
    assert!(health_input(br#"{"path":"var"}"#).is_err());
    assert!(health_input(br#"{"other":1}"#).is_err());
    assert_eq!(
        open_url_input(br#"{"url":"https://example.com/a"}"#)
            .unwrap()
            .as_str(),
        "https://example.com/a"
    );
    assert!(open_url_input(br#"{"url":"file:///etc/passwd"}"#).is_err());
    assert!(open_url_input(br#"{"link":"https://example.com"}"#).is_err());
    assert_eq!(
        renewed_certificate(br#"{"cert":"3003020100"}"#).unwrap(),
        [0x30, 0x03, 0x02, 0x01, 0x00]
    );
    assert!(renewed_certificate(br#"{"cert":"zz"}"#).is_err());
}

// ----- several daemons, through `ternd node run` -----

/// Runs `ternd call NODE echo` against `d` and returns what it printed; the call waits
/// for the node to be connected to `d`.
fn echo_through(d: &common::Daemon, id: &str, input: &str) -> String {
    let out = d.cli(&["call", id, "echo", "--input", input, "--timeout", "60s"]);
    assert!(
        out.status.success(),
        "call through the daemon on port {}: {}",
        d.port,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The addresses `node.toml` keeps.
fn kept_daemons(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["paired"]["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ternd_node_run_given_a_dead_address_and_a_live_one_connects() {
    let tmp = common::scratch();
    let d = common::Daemon::start(&tmp.path().join("daemon"));
    let dead = format!("127.0.0.1:{}", common::free_port());
    let live = format!("127.0.0.1:{}", d.port);
    let uri = d.pair_uri(&[]);
    let dir = tmp.path().join("node");
    let list = format!("{dead},{live}");
    let n = common::node(&dir, Some(&uri), &["--daemon", &list]);
    let id = common::node_id(&dir);
    common::online(&d, &id);
    assert!(echo_through(&d, &id, r#"{"x":1}"#).contains(r#"{"x":1}"#));
    assert_eq!(kept_daemons(&dir), [dead.clone(), live.clone()]);

    // Started again with no address, it dials the ones it kept; over TCP + TLS too.
    n.kill9();
    let _n = common::node(&dir, None, &["--tcp-only"]);
    assert!(echo_through(&d, &id, r#"{"x":2}"#).contains(r#"{"x":2}"#));
    assert_eq!(kept_daemons(&dir), [dead, live]);
}

/// Copies the regular files of `from` (a stopped daemon's store) into a new `to`.
fn copy_state(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn ternd_node_run_moves_to_another_daemon_when_its_own_goes() {
    let tmp = common::scratch();
    let dir_a = tmp.path().join("a");
    let mut a = common::Daemon::start(&dir_a);
    let port_b = common::free_port();
    let uri = a.pair_uri(&[]);
    let dir = tmp.path().join("node");
    let addr_a = format!("127.0.0.1:{}", a.port);
    let addr_b = format!("127.0.0.1:{port_b}");
    // Repeated --daemon; paired through `a` (the URI's address).
    let _n = common::node(
        &dir,
        Some(&uri),
        &["--daemon", &addr_a, "--daemon", &addr_b],
    );
    let id = common::node_id(&dir);
    common::online(&a, &id);
    assert!(echo_through(&a, &id, r#""a""#).contains(r#""a""#));

    // `a` dies; `b` starts over a copy of its store: the same CA, server certificate and
    // nodes, as daemons sharing one store have.
    a.kill9();
    let dir_b = tmp.path().join("b");
    copy_state(&dir_a, &dir_b);
    let mut b = common::Daemon {
        dir: dir_b,
        port: port_b,
        proc: None,
        extra: Vec::new(),
        env: Vec::new(),
    };
    b.restart();
    // The node finds `a` gone and `b` answering, without pairing again.
    assert!(echo_through(&b, &id, r#""b""#).contains(r#""b""#));
    assert_eq!(b.node_state(&id), "online");
    assert_eq!(kept_daemons(&dir), [addr_a, addr_b]);
}
