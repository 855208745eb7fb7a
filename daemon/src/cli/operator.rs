//! The operator's commands: each talks to the running daemon (its socket, or its TLS
//! listener with `--remote` and an operator identity) and prints a table for people or
//! JSON for scripts (`--json`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::exit::{Exit, from_client};
use crate::api::client::ClientConfig;
use crate::api::identity::{NewKey, render};
use crate::api::v1::{self, CallRequest, EventsRequest, PairCodeRequest};
use crate::api::{ApiClient, ClientError, Endpoint};

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Table,
    Json,
}

async fn connect(endpoint: &Endpoint) -> Result<ApiClient, Exit> {
    ApiClient::open(endpoint.clone(), ClientConfig::default())
        .await
        .map_err(|e| from_client(&e))
}

fn ms_to_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian; Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn node_state(s: i32) -> &'static str {
    match v1::NodeState::try_from(s) {
        Ok(v1::NodeState::Online) => "online",
        Ok(v1::NodeState::Offline) => "offline",
        Ok(v1::NodeState::Revoked) => "revoked",
        _ => "unknown",
    }
}

fn pair_state(s: i32) -> &'static str {
    match v1::PairState::try_from(s) {
        Ok(v1::PairState::Pending) => "pending",
        Ok(v1::PairState::Approved) => "approved",
        Ok(v1::PairState::Rejected) => "rejected",
        Ok(v1::PairState::Completed) => "completed",
        Ok(v1::PairState::Expired) => "expired",
        _ => "unknown",
    }
}

fn call_state(s: i32) -> &'static str {
    match v1::CallState::try_from(s) {
        Ok(v1::CallState::Succeeded) => "succeeded",
        Ok(v1::CallState::Failed) => "failed",
        Ok(v1::CallState::TimedOut) => "timed_out",
        Ok(v1::CallState::Rejected) => "rejected",
        Ok(v1::CallState::Cancelled) => "cancelled",
        Ok(v1::CallState::Lost) => "lost",
        Ok(v1::CallState::Undeliverable) => "undeliverable",
        Ok(v1::CallState::Pending) => "pending",
        _ => "unknown",
    }
}

fn node_json(n: &v1::Node) -> Value {
    json!({
        "id": n.id,
        "state": node_state(n.state),
        "last_seen_ms": n.last_seen_ms,
        "address": n.address,
        "certificate_fingerprint": n.certificate_fingerprint,
        "certificate_not_after_ms": n.certificate_not_after_ms,
        "capabilities": n.capabilities.iter().map(|c| json!({
            "name": c.name,
            "version": c.version,
            "input": c.input_content_type,
            "output": c.output_content_type,
            "needs_approval": c.needs_approval,
        })).collect::<Vec<_>>(),
    })
}

fn body_value(content_type: &str, body: &[u8]) -> Value {
    if content_type.contains("json")
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        return v;
    }
    match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::String(format!("<{} bytes>", body.len())),
    }
}

pub async fn status(endpoint: &Endpoint, style: Style) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let s = c.status().await.map_err(|e| from_client(&e))?;
    let ca = s.ca.clone().unwrap_or_default();
    let pairing = s.pairing.unwrap_or_default();
    let counts = s.nodes.unwrap_or_default();
    match style {
        Style::Json => println!(
            "{}",
            json!({
                "listen_addresses": s.listen_addresses,
                "mtls_enforced": s.mtls_enforced,
                "ca": {"fingerprint_sha256": ca.fingerprint_sha256, "not_after_ms": ca.not_after_ms},
                "pairing": {"default_ttl_seconds": pairing.default_ttl_seconds, "approval_required": pairing.approval_required},
                "nodes": {"paired": counts.paired, "online": counts.online, "revoked": counts.revoked},
                "started_at_ms": s.started_at_ms,
            })
        ),
        Style::Table => {
            println!("listening:          {}", s.listen_addresses.join(", "));
            println!(
                "mTLS enforced:      {}",
                if s.mtls_enforced {
                    "yes (node plane needs a certificate from this CA)"
                } else {
                    "NO"
                }
            );
            println!("CA fingerprint:     {}", ca.fingerprint_sha256);
            println!("CA expires:         {}", ms_to_text(ca.not_after_ms));
            println!(
                "pairing:            codes live {} s by default; approval {}",
                pairing.default_ttl_seconds,
                if pairing.approval_required {
                    "required"
                } else {
                    "not required"
                }
            );
            println!(
                "nodes:              {} paired, {} online, {} revoked",
                counts.paired, counts.online, counts.revoked
            );
            println!("up since:           {}", ms_to_text(s.started_at_ms));
        }
    }
    Ok(())
}

pub async fn pair_code(
    endpoint: &Endpoint,
    style: Style,
    ttl: Option<Duration>,
    approval: bool,
    qr: bool,
    device_id: Option<String>,
) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let req = PairCodeRequest {
        ttl_seconds: ttl.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX)),
        require_approval: approval.then_some(true),
        device_id: device_id.unwrap_or_default(),
    };
    let code = c.pair_code(req).await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!(
            "{}",
            json!({
                "code": code.code, "uri": code.uri, "code_id": code.code_id,
                "expires_at_ms": code.expires_at_ms, "device_id": code.device_id,
                "approval_required": code.approval_required,
            })
        ),
        Style::Table => {
            println!("code:      {}", code.code);
            println!("uri:       {}", code.uri);
            println!("device id: {}", code.device_id);
            println!("expires:   {}", ms_to_text(code.expires_at_ms));
            if code.approval_required {
                println!("approval:  required (ternd pair approve {})", code.code_id);
            }
            if qr {
                match super::qr::render(&code.uri) {
                    Ok(art) => println!("\n{art}"),
                    Err(e) => eprintln!("cannot draw the QR code: {e}"),
                }
            }
            println!("\nOn the node: ternd node run --uri '{}'", code.uri);
        }
    }
    Ok(())
}

pub async fn pair_list(endpoint: &Endpoint, style: Style) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let list = c.pair_list().await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => {
            let records: Vec<Value> = list
                .records
                .iter()
                .map(|r| {
                    json!({
                        "code_id": r.code_id, "state": pair_state(r.state),
                        "created_at_ms": r.created_at_ms, "expires_at_ms": r.expires_at_ms,
                        "device_id": r.device_id, "approval_required": r.approval_required,
                        "awaiting_decision": r.awaiting_decision, "used": r.used,
                    })
                })
                .collect();
            println!("{}", Value::Array(records));
        }
        Style::Table => {
            let rows: Vec<Vec<String>> = list
                .records
                .iter()
                .map(|r| {
                    vec![
                        format!("{:04}", r.code_id),
                        pair_state(r.state).into(),
                        r.device_id.clone(),
                        if r.awaiting_decision {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        ms_to_text(r.expires_at_ms),
                    ]
                })
                .collect();
            print_table(&["CODE ID", "STATE", "DEVICE", "WAITING", "EXPIRES"], &rows);
        }
    }
    Ok(())
}

pub async fn pair_decide(
    endpoint: &Endpoint,
    style: Style,
    code_id: u32,
    approve: bool,
) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let r = if approve {
        c.pair_approve(code_id).await
    } else {
        c.pair_reject(code_id).await
    }
    .map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!(
            "{}",
            json!({"code_id": r.code_id, "state": pair_state(r.state)})
        ),
        Style::Table => println!("code {:04}: {}", r.code_id, pair_state(r.state)),
    }
    Ok(())
}

pub async fn nodes(endpoint: &Endpoint, style: Style) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let list = c.list_nodes().await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!(
            "{}",
            Value::Array(list.nodes.iter().map(node_json).collect())
        ),
        Style::Table => {
            let rows: Vec<Vec<String>> = list
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        node_state(n.state).into(),
                        ms_to_text(n.last_seen_ms),
                        n.address.clone(),
                        n.capabilities
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]
                })
                .collect();
            print_table(
                &["NODE", "STATE", "LAST SEEN", "ADDRESS", "CAPABILITIES"],
                &rows,
            );
        }
    }
    Ok(())
}

pub async fn node_show(endpoint: &Endpoint, style: Style, id: &str) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let n = c.show_node(id).await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!("{}", node_json(&n)),
        Style::Table => {
            println!("node:         {}", n.id);
            println!("state:        {}", node_state(n.state));
            println!("last seen:    {}", ms_to_text(n.last_seen_ms));
            println!("address:      {}", n.address);
            println!("certificate:  {}", n.certificate_fingerprint);
            println!("cert expires: {}", ms_to_text(n.certificate_not_after_ms));
            println!("capabilities:");
            for cap in &n.capabilities {
                println!(
                    "  {} v{} ({} -> {}){}",
                    cap.name,
                    cap.version,
                    cap.input_content_type,
                    cap.output_content_type,
                    if cap.needs_approval {
                        ", needs local approval"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

pub async fn call(
    endpoint: &Endpoint,
    style: Style,
    node: &str,
    capability: &str,
    input: Option<&str>,
    timeout: Duration,
) -> Result<(), Exit> {
    let input = input.unwrap_or("{}");
    if serde_json::from_str::<Value>(input).is_err() {
        return Err(Exit::usage(format!("--input is not JSON: {input}")));
    }
    let c = connect(endpoint).await?;
    let req = CallRequest {
        node: node.to_owned(),
        capability: capability.to_owned(),
        input: input.as_bytes().to_vec(),
        content_type: "application/json".into(),
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
    };
    let r = c.call(req).await.map_err(|e| from_client(&e))?;
    let state = call_state(r.state);
    match style {
        Style::Json => println!(
            "{}",
            json!({
                "call_id": r.call_id, "state": state,
                "output": body_value(&r.content_type, &r.output),
                "content_type": r.content_type, "message": r.message,
            })
        ),
        Style::Table => {
            if state == "succeeded" {
                println!("{}", body_value(&r.content_type, &r.output));
            } else {
                eprintln!("call {} {state}: {}", r.call_id, r.message);
            }
        }
    }
    Exit::for_call(r.state)
}

/// `ternd calls show ID`.
pub async fn call_show(endpoint: &Endpoint, style: Style, id: u64) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let r = c.show_call(id).await.map_err(|e| from_client(&e))?;
    let state = call_state(r.state);
    let late = r.timed_out_at_ms != 0;
    match style {
        Style::Json => println!(
            "{}",
            json!({
                "call_id": r.call_id, "node": r.node, "capability": r.capability,
                "state": state, "late": late,
                "output": body_value(&r.content_type, &r.output),
                "content_type": r.content_type, "message": r.message,
                "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
                "deadline_ms": r.deadline_ms,
                "timed_out_at_ms": late.then_some(r.timed_out_at_ms),
            })
        ),
        Style::Table => {
            println!("call:       {}", r.call_id);
            println!("node:       {}", r.node);
            println!("capability: {}", r.capability);
            if late {
                println!(
                    "state:      {state} late: timed out at {}, the node answered at {}",
                    ms_to_text(r.timed_out_at_ms),
                    ms_to_text(r.updated_at_ms)
                );
            } else {
                println!("state:      {state} at {}", ms_to_text(r.updated_at_ms));
            }
            println!("created:    {}", ms_to_text(r.created_at_ms));
            println!("deadline:   {}", ms_to_text(r.deadline_ms));
            if !r.message.is_empty() {
                println!("message:    {}", r.message);
            }
            if !r.output.is_empty() {
                println!("output:     {}", body_value(&r.content_type, &r.output));
            }
        }
    }
    Ok(())
}

/// `ternd calls`: past calls, newest first.
pub async fn calls_list(
    endpoint: &Endpoint,
    style: Style,
    node: Option<String>,
    state: Option<String>,
    since: Option<Duration>,
    limit: u32,
) -> Result<(), Exit> {
    let state = match state {
        None => None,
        Some(s) => {
            let name = format!("CALL_STATE_{}", s.to_ascii_uppercase().replace('-', "_"));
            let state = v1::CallState::from_str_name(&name).ok_or_else(|| {
                Exit::usage(format!(
                    "unknown state {s:?} (succeeded, failed, timed_out, rejected, cancelled, \
                     lost, undeliverable, pending)"
                ))
            })?;
            Some(state as i32)
        }
    };
    let since_ms = since.map_or(0, |d| {
        crate::runtime::persist::now_ms()
            .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
    let c = connect(endpoint).await?;
    let list = c
        .list_calls(v1::ListCallsRequest {
            node,
            state,
            since_ms,
            limit,
            ..Default::default()
        })
        .await
        .map_err(|e| from_client(&e))?;
    match style {
        Style::Json => {
            let calls: Vec<Value> = list
                .calls
                .iter()
                .map(|r| {
                    json!({
                        "call_id": r.call_id, "node": r.node, "capability": r.capability,
                        "state": call_state(r.state), "message": r.message,
                        "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({ "calls": calls, "next_before_id": list.next_before_id })
            );
        }
        Style::Table => {
            let rows: Vec<Vec<String>> = list
                .calls
                .iter()
                .map(|r| {
                    vec![
                        r.call_id.to_string(),
                        r.node.clone(),
                        r.capability.clone(),
                        call_state(r.state).to_owned(),
                        ms_to_text(r.created_at_ms),
                        format!("{} ms", r.updated_at_ms.saturating_sub(r.created_at_ms)),
                    ]
                })
                .collect();
            print_table(
                &["CALL", "NODE", "CAPABILITY", "STATE", "CREATED", "TOOK"],
                &rows,
            );
        }
    }
    Ok(())
}

/// `ternd operator add NAME --role R --out FILE`: a key made here, a certificate from
/// the daemon's operator CA, written together as an identity file (mode 0600).
pub async fn operator_add(
    endpoint: &Endpoint,
    style: Style,
    name: &str,
    role: &str,
    out: Option<&Path>,
) -> Result<(), Exit> {
    let role_enum = match role {
        "viewer" => v1::Role::Viewer,
        "admin" => v1::Role::Admin,
        other => return Err(Exit::usage(format!("--role {other:?}: viewer or admin"))),
    };
    let default_out = format!("{name}.tern-operator.pem");
    let out = out.unwrap_or_else(|| Path::new(&default_out));
    if out.exists() {
        return Err(Exit::usage(format!(
            "{} exists; choose another --out",
            out.display()
        )));
    }
    let key = NewKey::generate(name).map_err(|e| Exit::failure(e.to_string()))?;
    let c = connect(endpoint).await?;
    let issued = c
        .add_operator(v1::AddOperatorRequest {
            name: name.to_owned(),
            role: role_enum as i32,
            csr_der: key.csr_der.clone(),
        })
        .await
        .map_err(|e| from_client(&e))?;
    let text = render(
        name,
        role,
        &issued.certificate_pem,
        &key.key.serialize_pem(),
        &issued.server_ca_pem,
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| Exit::failure(format!("cannot write {}: {e}", out.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Exit::failure(format!("cannot write {}: {e}", out.display())))?;
    let fingerprint = issued
        .operator
        .as_ref()
        .map(|o| o.certificate_fingerprint.clone())
        .unwrap_or_default();
    match style {
        Style::Json => println!(
            "{}",
            json!({"name": name, "role": role, "file": out.display().to_string(),
                   "certificate_fingerprint": fingerprint})
        ),
        Style::Table => {
            println!("operator:    {name} ({role})");
            println!(
                "identity:    {} (keep it secret: it holds the key)",
                out.display()
            );
            println!("fingerprint: {fingerprint}");
            println!(
                "use it:      ternd --remote HOST:PORT --identity {} nodes; or log in to the console with it",
                out.display()
            );
        }
    }
    Ok(())
}

pub async fn operator_list(endpoint: &Endpoint, style: Style) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let list = c.list_operators().await.map_err(|e| from_client(&e))?;
    let role = |r: i32| match v1::Role::try_from(r) {
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Viewer) => "viewer",
        _ => "?",
    };
    match style {
        Style::Json => {
            let ops: Vec<Value> = list
                .operators
                .iter()
                .map(|o| {
                    json!({"name": o.name, "role": role(o.role),
                           "certificate_fingerprint": o.certificate_fingerprint,
                           "created_at_ms": o.created_at_ms, "not_after_ms": o.not_after_ms,
                           "revoked_at_ms": (o.revoked_at_ms != 0).then_some(o.revoked_at_ms)})
                })
                .collect();
            println!("{}", json!({ "operators": ops }));
        }
        Style::Table => {
            let rows: Vec<Vec<String>> = list
                .operators
                .iter()
                .map(|o| {
                    vec![
                        o.name.clone(),
                        role(o.role).to_owned(),
                        if o.revoked_at_ms != 0 {
                            format!("revoked {}", ms_to_text(o.revoked_at_ms))
                        } else {
                            "valid".to_owned()
                        },
                        ms_to_text(o.not_after_ms),
                        o.certificate_fingerprint.chars().take(16).collect(),
                    ]
                })
                .collect();
            print_table(&["NAME", "ROLE", "STATE", "EXPIRES", "FINGERPRINT"], &rows);
        }
    }
    Ok(())
}

pub async fn operator_revoke(endpoint: &Endpoint, style: Style, name: &str) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let r = c.revoke_operator(name).await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!(
            "{}",
            json!({"name": r.name, "revoked_at_ms": r.revoked_at_ms})
        ),
        Style::Table => println!(
            "operator {} revoked at {}",
            r.name,
            ms_to_text(r.revoked_at_ms)
        ),
    }
    Ok(())
}

pub async fn events(
    endpoint: &Endpoint,
    style: Style,
    node: Option<String>,
    from: u64,
    follow: bool,
) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let mut stream = c
        .events(EventsRequest {
            node,
            from_seq: from,
            follow,
        })
        .await
        .map_err(|e| from_client(&e))?;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e @ ClientError::Disconnected { .. }) => {
                return Err(Exit::failure(format!(
                    "{e}; resume with --from {}",
                    stream.next_seq()
                )));
            }
            Err(e) => return Err(from_client(&e)),
        };
        match style {
            Style::Json => println!(
                "{}",
                json!({
                    "seq": ev.seq, "node": ev.node, "name": ev.name,
                    "body": body_value(&ev.content_type, &ev.body),
                    "content_type": ev.content_type, "at_ms": ev.at_ms,
                })
            ),
            Style::Table => println!(
                "{:>8}  {}  {:<16}  {:<20}  {}",
                ev.seq,
                ms_to_text(ev.at_ms),
                ev.node,
                ev.name,
                body_value(&ev.content_type, &ev.body)
            ),
        }
    }
    Ok(())
}

pub async fn revoke(
    endpoint: &Endpoint,
    style: Style,
    node: &str,
    reason: &str,
) -> Result<(), Exit> {
    let c = connect(endpoint).await?;
    let r = c.revoke(node, reason).await.map_err(|e| from_client(&e))?;
    match style {
        Style::Json => println!(
            "{}",
            json!({"node": r.node, "revoked_at_ms": r.revoked_at_ms, "connections_closed": r.connections_closed})
        ),
        Style::Table => println!(
            "revoked {} at {}; {} connection(s) closed",
            r.node,
            ms_to_text(r.revoked_at_ms),
            r.connections_closed
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(ms_to_text(86_400_000 + 3_661_000), "1970-01-02 01:01:01Z");
    }
}
