//! End to end: real `ternd` processes on loopback — the daemon, the operator's CLI and
//! Linux node hosts — driven the way a user drives them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Daemon, TERND, assert_events_once, node, node_id, online, opened_counts, recording_node,
    scratch, wait_until,
};
use serde_json::Value;

#[test]
fn pair_call_health_and_follow_events() {
    let tmp = scratch();
    let d = Daemon::start(&tmp.path().join("daemon"));
    let uri = d.pair_uri(&[]);
    let _n = node(&tmp.path().join("node"), Some(&uri), &[]);
    let id = node_id(&tmp.path().join("node"));
    online(&d, &id);

    let echo = d.cli(&["call", &id, "echo", "--input", r#"{"x":1}"#]);
    assert!(
        echo.status.success(),
        "{}",
        String::from_utf8_lossy(&echo.stderr)
    );
    let printed: Value = serde_json::from_slice(&echo.stdout).unwrap();
    assert_eq!(printed, serde_json::json!({"x": 1}));

    let health = d.json(&["call", &id, "system.health"]);
    assert_eq!(health["state"], "succeeded");
    let out = &health["output"];
    assert!(out["uptime_s"].as_f64().unwrap() > 0.0);
    assert!(out["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(out["disk"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(out["load"]["one"].as_f64().is_some());

    let nodes = d.json(&["nodes"]);
    // QUIC first.
    assert!(
        nodes[0]["address"].as_str().unwrap().starts_with("quic://"),
        "{nodes}"
    );
    let caps: Vec<&str> = nodes[0]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        [
            "echo",
            "system.health",
            "desktop.open_url",
            "tern.certificate"
        ]
    );

    // Events reach a follower as they come.
    let mut follow = Command::new(TERND)
        .args(["--json", "events", "--follow", "--node", &id])
        .env("TERN_STATE_DIR", &d.dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = lines.next().unwrap().unwrap();
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        got.iter()
            .all(|e| e["node"] == id.as_str() && e["name"] == "health")
    );
    // `--from SEQ` starts at that seq, as a reader resuming after the last one it read
    // asks (an exclusive bound there skipped one event per resume).
    let second = got[1]["seq"].as_u64().unwrap();
    let out = d.cli(&[
        "--json",
        "events",
        "--node",
        &id,
        "--from",
        &second.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let first_line = String::from_utf8(out.stdout).unwrap();
    let first: Value = serde_json::from_str(first_line.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"].as_u64(), Some(second), "{first_line}");

    // An unknown capability is the node's refusal, with its own exit code.
    let bad = d.cli(&["call", &id, "no.such.thing"]);
    assert_eq!(bad.status.code(), Some(6));
}

#[test]
fn kill_9_of_the_daemon_loses_nothing_and_runs_nothing_twice() {
    let tmp = scratch();
    let mut d = Daemon::start(&tmp.path().join("daemon"));
    let opened = tmp.path().join("opened");
    let uri = d.pair_uri(&[]);
    let _n = recording_node(&tmp.path().join("node"), &d, Some(&uri), &opened);
    let id = node_id(&tmp.path().join("node"));
    online(&d, &id);

    // A stream of calls, with the daemon killed in the middle of it.
    let dir = d.dir.clone();
    let node = id.clone();
    let callers = std::thread::spawn(move || {
        let mut children = Vec::new();
        for i in 0..20 {
            let url = format!("https://example.com/{i}");
            let child = Command::new(TERND)
                .args([
                    "call",
                    &node,
                    "desktop.open_url",
                    "--timeout",
                    "60s",
                    "--input",
                ])
                .arg(format!(r#"{{"url":"{url}"}}"#))
                .env("TERN_STATE_DIR", &dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push((url, child));
            std::thread::sleep(Duration::from_millis(50));
        }
        // The calls the operator was told succeeded.
        children
            .into_iter()
            .filter_map(|(url, mut c)| c.wait().unwrap().success().then_some(url))
            .collect::<Vec<_>>()
    });
    // What the daemon stored, and so acknowledged, before it dies.
    let acknowledged = wait_until("events before the kill", || {
        let events = d.events();
        (events.len() >= 2).then_some(events)
    });
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    let succeeded = callers.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    d.restart();
    online(&d, &id);
    // Events keep coming after the restart, none lost or doubled.
    let before = d.events().len();
    wait_until("new events after the restart", || {
        (d.events().len() >= before + 2).then_some(())
    });
    let events = d.events();
    assert_events_once(&events);
    for e in &acknowledged {
        assert!(
            events.contains(e),
            "an event stored before the kill is gone: {e}"
        );
    }
    // Every call ran at most once; calls after the restart run too.
    let after = d.json(&[
        "call",
        &id,
        "desktop.open_url",
        "--input",
        r#"{"url":"https://example.com/after"}"#,
    ]);
    assert_eq!(after["state"], "succeeded");
    let counts = opened_counts(&opened);
    eprintln!("calls run: {counts:?}; reported succeeded: {succeeded:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "a call ran twice: {counts:?}"
    );
    for url in &succeeded {
        assert_eq!(counts.get(url), Some(&1), "{url} succeeded but did not run");
    }
    assert_eq!(counts.get("https://example.com/after"), Some(&1));
}

#[test]
fn kill_9_of_the_node_host_loses_no_event() {
    let tmp = scratch();
    let d = Daemon::start(&tmp.path().join("daemon"));
    let opened = tmp.path().join("opened");
    let dir = tmp.path().join("node");
    let uri = d.pair_uri(&[]);
    let n = recording_node(&dir, &d, Some(&uri), &opened);
    let id = node_id(&dir);
    online(&d, &id);
    wait_until("a few events", || (d.events().len() >= 3).then_some(()));
    let ok = d.json(&[
        "call",
        &id,
        "desktop.open_url",
        "--input",
        r#"{"url":"https://example.com/a"}"#,
    ]);
    assert_eq!(ok["state"], "succeeded");
    n.kill9();
    let n = recording_node(&dir, &d, None, &opened);
    online(&d, &id);
    let before = d.events().len();
    wait_until("events after the node's restart", || {
        (d.events().len() >= before + 3).then_some(())
    });
    assert_events_once(&d.events());
    let ok = d.json(&[
        "call",
        &id,
        "desktop.open_url",
        "--input",
        r#"{"url":"https://example.com/b"}"#,
    ]);
    assert_eq!(ok["state"], "succeeded");
    let counts = opened_counts(&opened);
    assert_eq!(counts.get("https://example.com/a"), Some(&1));
    assert_eq!(counts.get("https://example.com/b"), Some(&1));
    drop(n);
}

#[test]
fn revoked_node_is_cut_off_and_its_id_cannot_be_reused() {
    let tmp = scratch();
    let d = Daemon::start(&tmp.path().join("daemon"));
    let dir = tmp.path().join("node");
    let uri = d.pair_uri(&[]);
    let mut n = node(&dir, Some(&uri), &[]);
    let id = node_id(&dir);
    online(&d, &id);

    let revoked = d.json(&["revoke", &id]);
    assert_eq!(revoked["connections_closed"], 1);
    // The node host is told at once and stops: revoked is its own exit code.
    assert_eq!(n.exit_code(), 6);
    assert_eq!(d.node_state(&id), "revoked");
    // It cannot come back.
    let mut again = node(&dir, None, &[]);
    assert_eq!(again.exit_code(), 6);
    // Nor can another node under its id, even with a certificate the CA issued for it.
    let uri = d.pair_uri(&["--device-id", &id]);
    let mut impostor = node(&tmp.path().join("impostor"), Some(&uri), &[]);
    assert_eq!(impostor.exit_code(), 6);
    // Calls to it are refused.
    let call = d.cli(&["call", &id, "echo"]);
    assert_ne!(call.status.code(), Some(0));
}

#[test]
fn bad_input_gets_typed_errors_and_the_daemon_keeps_serving() {
    let tmp = scratch();
    // No daemon: its own exit code, and a message that says so.
    let none = Command::new(TERND)
        .args(["status"])
        .env("TERN_STATE_DIR", tmp.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&none.stderr).contains("not running"));

    let d = Daemon::start(&tmp.path().join("daemon"));
    // Operator input.
    assert_eq!(d.cli(&["call", "nobody", "echo"]).status.code(), Some(4));
    assert_eq!(
        d.cli(&["call", "x", "echo", "--input", "{not json"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(d.cli(&["call", "bad id!", "echo"]).status.code(), Some(2));
    assert_eq!(d.cli(&["pair", "approve", "9999"]).status.code(), Some(4));
    assert_eq!(d.cli(&["node", "show", "nobody"]).status.code(), Some(4));
    // Garbage from the network, on the node plane's port.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 4096][..],
        &[0x16, 3, 1, 0xff, 0xff][..],
    ] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        let _ = s.write_all(junk);
    }
    // Still serving: a node pairs and answers.
    let uri = d.pair_uri(&[]);
    let _n = node(&tmp.path().join("node"), Some(&uri), &["--tcp-only"]);
    let id = node_id(&tmp.path().join("node"));
    online(&d, &id);
    // Where UDP is not allowed, TCP + TLS carries the node.
    let shown = d.json(&["node", "show", &id]);
    assert!(
        shown["address"].as_str().unwrap().starts_with("tcp://"),
        "{shown}"
    );
    let echo = d.json(&["call", &id, "echo", "--input", "[1,2,3]"]);
    assert_eq!(echo["output"], serde_json::json!([1, 2, 3]));
    assert!(d.cli(&["status"]).status.success());

    // The metrics count what happened: the garbage as TLS handshake failures, the
    // node's frames and its connection.
    let metrics = scrape(&d);
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("tern_handshake_failures_total{transport=\"tcp\",reason=\"tls\"}") >= 1.0,
        "{metrics}"
    );
    assert!(value("tern_frames_total{transport=\"tcp\",direction=\"in\"}") >= 1.0);
    assert!(value("tern_connections{transport=\"tcp\"}") >= 1.0);
    assert!(value("tern_calls_finished_total{state=\"succeeded\"}") >= 1.0);
}

/// `GET /metrics` from the daemon's metrics address (named in `ternd status`).
fn scrape(d: &Daemon) -> String {
    use std::io::{Read, Write};
    let status = d.json(&["status"]);
    let url = status["listen_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find_map(|a| a.strip_prefix("http://"))
        .unwrap()
        .to_owned();
    let addr = url.trim_end_matches("/metrics");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[test]
fn a_node_renews_its_certificate_over_its_session() {
    use sha2::Digest;
    let tmp = scratch();
    let d = Daemon::start(&tmp.path().join("daemon"));
    let dir = tmp.path().join("node");
    let uri = d.pair_uri(&[]);
    let n = node(&dir, Some(&uri), &[]);
    let id = node_id(&dir);
    online(&d, &id);
    let first = d.json(&["node", "show", &id])["certificate_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    n.kill9();

    // Inside the renewal window (certificates live 90 days): it asks at once.
    let n = node(&dir, None, &["--renew-within-days", "100"]);
    let renewed = wait_until("the renewed certificate", || {
        let fp = d.json(&["node", "show", &id])["certificate_fingerprint"]
            .as_str()?
            .to_owned();
        let on_disk = std::fs::read(dir.join("client.der")).ok()?;
        let disk_fp: String = sha2::Sha256::digest(&on_disk)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (fp != first && disk_fp == fp).then_some(fp)
    });
    assert_ne!(renewed, first);
    n.kill9();

    // The next run presents the renewed certificate, and the daemon takes it.
    let _n = node(&dir, None, &[]);
    online(&d, &id);
    let echo = d.json(&["call", &id, "echo", "--input", r#"{"renewed":true}"#]);
    assert_eq!(echo["output"], serde_json::json!({"renewed": true}));
}

/// One pairing run over TCP + TLS from the source address `from`.
fn pair_from(
    d: &Daemon,
    from: [u8; 4],
    uri: &str,
) -> Result<String, transport_tokio::pairing::PairError> {
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
    use spake2plus::rand_core::SeedableRng;
    use transport_tokio::pairing::{PairOptions, pair_over};
    use transport_tokio::tcp::Connector;
    use transport_tokio::tls::{Fingerprint, pairing_client_config};

    let uri = protocol_core::pairing::PairingUri::parse(uri).unwrap();
    let pin = Fingerprint(uri.fingerprint);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], d.port));
    let local = std::net::SocketAddr::from((from, 0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connector = Connector::new(pairing_client_config(Some(pin)).unwrap());
        let stream = connector.connect_from(local, addr).await.unwrap();
        let mut rng = chacha20::ChaCha20Rng::from_seed([9; 32]);
        pair_over(
            &PairOptions::default(),
            stream,
            &uri.code,
            &csr,
            Some(pin),
            &mut rng,
        )
        .await
        .map(|bundle| bundle.device_id)
    })
}

#[test]
fn pairing_limits_given_to_serve_take_effect() {
    use transport_tokio::pairing::PairError;
    let dir = scratch();
    // Per address from a flag, daemon-wide from the environment; both refill too slowly
    // to matter during the test.
    let d = Daemon::start_with_env(
        &dir.path().join("daemon"),
        &[
            "--pairing-address-burst",
            "2",
            "--pairing-address-refill",
            "1h",
        ],
        &[("TERN_PAIRING_BURST", "3"), ("TERN_PAIRING_REFILL", "1h")],
    );
    let uri = d.pair_uri(&[]);
    let a = [127, 0, 0, 1];
    let b = [127, 0, 0, 2];
    assert!(pair_from(&d, a, &uri).is_ok());
    // The defaults (5 per address, 10 daemon-wide) would let these through to the code.
    assert!(matches!(
        pair_from(&d, a, &uri),
        Err(PairError::AlreadyUsed)
    ));
    assert!(matches!(
        pair_from(&d, a, &uri),
        Err(PairError::RateLimited { .. })
    ));
    // Another address has its own budget, but the daemon-wide one (3 starts) runs out:
    // the address refusal above took nothing from it.
    assert!(matches!(
        pair_from(&d, b, &uri),
        Err(PairError::AlreadyUsed)
    ));
    assert!(matches!(
        pair_from(&d, b, &uri),
        Err(PairError::RateLimited { .. })
    ));
}

/// A node host whose pairing start meets the per-address limit waits the time the daemon
/// named and tries again, instead of exiting.
#[test]
fn a_node_host_told_to_wait_pairs_once_the_limit_allows() {
    let tmp = scratch();
    let d = Daemon::start_with(
        &tmp.path().join("daemon"),
        &[
            "--pairing-address-burst",
            "1",
            "--pairing-address-refill",
            "2s",
        ],
    );
    // Uses up 127.0.0.1's one start.
    let first = d.pair_uri(&[]);
    assert!(pair_from(&d, [127, 0, 0, 1], &first).is_ok());
    let dir = tmp.path().join("node");
    let uri = d.pair_uri(&[]);
    let _n = node(&dir, Some(&uri), &[]);
    let id = node_id(&dir);
    online(&d, &id);
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(
        log.contains("the daemon limits pairing starts"),
        "the node host never met the limit: {log}"
    );
}

/// A daemon holding more nodes than fit in one answer lists them all, once each and by
/// id, in pages: to the CLI, to the client's `list_nodes`, and page by page.
#[test]
fn nodes_are_listed_in_pages_past_the_answer_limit() {
    use daemon::api::v1;
    use daemon::api::{
        ApiClient, DEFAULT_NODE_PAGE, MAX_BODY, MAX_NODE_PAGE, NODE_PAGE_BYTES, SOCKET_NAME,
    };
    use daemon::store::{Capability, Node, SqliteStore, StoreOptions, Write};
    use http_body_util::BodyExt as _;
    use prost::Message as _;

    const SMALL: usize = 1600;
    let row = |id: String, caps: Vec<Capability>| Node {
        id,
        first_seen_ms: 1_700_000_000_000,
        last_seen_ms: 1_700_000_000_000,
        online: false,
        platform: Some("linux-x86_64".into()),
        address: Some("tcp://10.0.0.1:51000".into()),
        capabilities: caps,
    };
    let cap = |name: String, version| Capability {
        name,
        version,
        input: "application/json".into(),
        output: "application/cbor".into(),
        needs_approval: false,
    };
    // Three nodes near the largest capability list a session frame carries, so a page
    // is cut by its bytes before its count; then many ordinary ones.
    let mut rows: Vec<Node> = (0..3)
        .map(|i| {
            let caps = (0..32)
                .map(|k| cap(format!("big.{k:02}.{}", "x".repeat(12_000)), k))
                .collect();
            row(format!("big-{i}"), caps)
        })
        .collect();
    rows.extend((0..SMALL).map(|i| {
        let caps = (0..8)
            .map(|k| cap(format!("telemetry.channel-{k:02}.temperature-celsius"), k))
            .collect();
        row(format!("node-{i:05}"), caps)
    }));
    let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    ids.sort();

    let tmp = scratch();
    let dir = tmp.path().join("daemon");
    {
        let store = SqliteStore::open_in(&dir, StoreOptions::default()).unwrap();
        store
            .write_blocking(rows.into_iter().map(Write::PutNode).collect())
            .unwrap();
    }
    let d = Daemon::start(&dir);

    // The CLI, as a user runs it.
    let listed = d.json(&["nodes"]);
    let listed = listed.as_array().unwrap();
    let cli_ids: Vec<&str> = listed.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(cli_ids, ids, "every node once, by id");
    assert_eq!(listed[0]["capabilities"].as_array().unwrap().len(), 32);
    assert_eq!(listed[3]["capabilities"].as_array().unwrap().len(), 8);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = ApiClient::connect(&dir.join(SOCKET_NAME)).await.unwrap();
        let all = client.list_nodes().await.unwrap();
        let client_ids: Vec<&str> = all.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(client_ids, ids);
        assert_eq!(all.next_after, "");
        // One answer would not fit in the answer limit, even without the big nodes.
        let small = v1::NodeList {
            nodes: all.nodes[3..].to_vec(),
            next_after: String::new(),
        };
        assert!(small.encoded_len() > MAX_BODY, "{}", small.encoded_len());

        // Page by page with the default limit: the big nodes cut the first pages short.
        let mut pages = Vec::new();
        let mut after = String::new();
        loop {
            let page = client.list_nodes_page(after.as_str(), 0).await.unwrap();
            assert!(page.encoded_len() <= NODE_PAGE_BYTES + 100);
            assert!(page.nodes.len() <= DEFAULT_NODE_PAGE as usize);
            pages.push(page.nodes.len());
            if page.next_after.is_empty() {
                break;
            }
            assert_eq!(page.next_after, page.nodes.last().unwrap().id);
            after = page.next_after;
        }
        assert_eq!(pages, [2, 500, 500, 500, 101]);

        // A limit above the cap is capped.
        let page = client.list_nodes_page("big-2", u32::MAX).await.unwrap();
        assert_eq!(page.nodes.len(), MAX_NODE_PAGE as usize);
        assert_eq!(page.nodes[0].id, "node-00000");
        assert_eq!(page.next_after, format!("node-{:05}", MAX_NODE_PAGE - 1));
        // After the last node: an empty last page.
        for after in [ids.last().unwrap().as_str(), "zzz"] {
            let page = client.list_nodes_page(after, 7).await.unwrap();
            assert_eq!((page.nodes.len(), page.next_after.as_str()), (0, ""));
        }

        // A client from before paging sends no limit: it gets every node in one answer
        // when they fit, an error rather than a part of them when they do not.
        let exchange = async |body: &str| -> (u16, serde_json::Value) {
            let stream = tokio::net::UnixStream::connect(dir.join(SOCKET_NAME))
                .await
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::post("/api/v1/ListNodes")
                .header("host", "localhost")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_owned(),
                )))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&body).unwrap())
        };
        let (status, error) = exchange("{}").await;
        assert_eq!(status, 409, "{error}");
        assert_eq!(error["code"], "ERROR_CODE_FAILED_PRECONDITION", "{error}");
        let (status, list) = exchange(r#"{"after": "node-01500"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(list["nodes"][0]["id"], "node-01501");
        assert_eq!(list["nodes"].as_array().unwrap().len(), SMALL - 1501);
        assert_eq!(list["nextAfter"], "");
    });
}

/// The store's word for a node follows it: `online` while connected, `offline` once its
/// connection ended (it used to say `online` for every write, the disconnect's too).
#[test]
fn the_store_records_a_node_offline_once_it_disconnects() {
    let tmp = scratch();
    let d = Daemon::start(&tmp.path().join("daemon"));
    let dir = tmp.path().join("node");
    let uri = d.pair_uri(&[]);
    let n = node(&dir, Some(&uri), &[]);
    let id = node_id(&dir);
    online(&d, &id);
    let db = d.dir.join("tern.db");
    let stored = |id: &str| -> Option<String> {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        c.query_row("SELECT state FROM nodes WHERE id = ?1", [id], |r| r.get(0))
            .ok()
    };
    wait_until("the node stored online", || {
        (stored(&id).as_deref() == Some("online")).then_some(())
    });
    n.kill9();
    wait_until("the node offline to the operator", || {
        (d.node_state(&id) == "offline").then_some(())
    });
    wait_until("the node stored offline", || {
        (stored(&id).as_deref() == Some("offline")).then_some(())
    });
}

/// A call the node ran while the daemon was down, answered after its deadline: the
/// record says both (timed out at one time, succeeded at another), so an operator does
/// not retry an action that ran.
#[test]
fn an_answer_after_the_deadline_is_recorded_with_both_times() {
    let tmp = scratch();
    let mut d = Daemon::start(&tmp.path().join("daemon"));
    let dir = tmp.path().join("node");
    let started = tmp.path().join("started");
    let opened = tmp.path().join("opened");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "daemon = \"127.0.0.1:{}\"\nstate_dir = {:?}\nurl_policy = \"allow\"\nopener = [\"/bin/sh\", \"-c\", \"echo \\\"$1\\\" >> {}; sleep 2; echo \\\"$1\\\" >> {}\", \"opener\"]\n",
            d.port,
            dir.display().to_string(),
            started.display(),
            opened.display()
        ),
    )
    .unwrap();
    let uri = d.pair_uri(&[]);
    let _n = node(&dir, Some(&uri), &["--config", config.to_str().unwrap()]);
    let id = node_id(&dir);
    online(&d, &id);

    let mut caller = Command::new(TERND)
        .args([
            "call",
            &id,
            "desktop.open_url",
            "--timeout",
            "4s",
            "--input",
        ])
        .arg(r#"{"url":"https://example.com/slow"}"#)
        .env("TERN_STATE_DIR", &d.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The node runs it; the daemon dies before the answer and comes back after the
    // deadline.
    wait_until("the node to start the call", || {
        started.exists().then_some(())
    });
    d.kill9();
    let _ = caller.wait();
    wait_until("the node to finish the call", || {
        opened.exists().then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    d.restart();
    let db = d.dir.join("tern.db");
    let record = wait_until("the late answer recorded", || {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        c.query_row(
            "SELECT state, timed_out, updated, output FROM calls WHERE node = ?1",
            [&id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                ))
            },
        )
        .ok()
        .filter(|(_, timed_out, _, _)| timed_out.is_some())
    });
    let (state, timed_out, updated, output) = record;
    assert_eq!(state, "succeeded");
    assert!(
        timed_out.unwrap() <= updated,
        "timed out before the answer came"
    );
    assert!(output.is_some_and(|o| !o.is_empty()));
    assert_eq!(
        opened_counts(&opened).get("https://example.com/slow"),
        Some(&1)
    );

    // The operator reads it as such.
    let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let call_id: i64 = c
        .query_row("SELECT id FROM calls WHERE node = ?1", [&id], |r| r.get(0))
        .unwrap();
    // Stored order-preserving: the top bit flipped.
    let call_id = (call_id as u64 ^ (1 << 63)).to_string();
    let shown = d.json(&["calls", "show", &call_id]);
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(shown["late"], true, "{shown}");
    assert!(shown["timed_out_at_ms"].as_u64().unwrap() <= shown["updated_at_ms"].as_u64().unwrap());
    let table = d.cli(&["calls", "show", &call_id]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("succeeded late: timed out at"), "{text}");
    let missing = d.cli(&["calls", "show", "424242"]);
    assert_eq!(
        missing.status.code(),
        Some(4),
        "an unknown call is not found"
    );
}
