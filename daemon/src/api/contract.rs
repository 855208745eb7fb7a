//! The contract as the daemon reads it from `proto/`: the `Operator` service's methods,
//! the role each needs (the `required_role` option), and the proto3 JSON mapping of
//! every message, all taken from the compiled descriptors. Nothing here restates the
//! `.proto` file: a method added there without a [`Method`] here fails the tests.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions, ServiceDescriptor, Value,
};

use super::ApiError;
use super::v1::Role;

/// The service every method belongs to.
pub const SERVICE: &str = "tern.operator.v1.Operator";

/// The descriptors of the contract, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the contract's descriptors are compiled into the binary")
    });
    &POOL
}

pub fn service() -> ServiceDescriptor {
    pool()
        .get_service_by_name(SERVICE)
        .expect("the contract defines the Operator service")
}

/// The methods of the `Operator` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Status,
    WhoAmI,
    CreatePairCode,
    ListPairings,
    ApprovePairing,
    RejectPairing,
    ListNodes,
    ShowNode,
    Revoke,
    Call,
    ShowCall,
    ListCalls,
    WatchCall,
    Events,
    AddOperator,
    ListOperators,
    RevokeOperator,
}

impl Method {
    pub const ALL: [Method; 17] = [
        Method::Status,
        Method::WhoAmI,
        Method::CreatePairCode,
        Method::ListPairings,
        Method::ApprovePairing,
        Method::RejectPairing,
        Method::ListNodes,
        Method::ShowNode,
        Method::Revoke,
        Method::Call,
        Method::ShowCall,
        Method::ListCalls,
        Method::WatchCall,
        Method::Events,
        Method::AddOperator,
        Method::ListOperators,
        Method::RevokeOperator,
    ];

    /// Its name in the service, which is also its path: `/api/v1/<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Status => "Status",
            Method::WhoAmI => "WhoAmI",
            Method::CreatePairCode => "CreatePairCode",
            Method::ListPairings => "ListPairings",
            Method::ApprovePairing => "ApprovePairing",
            Method::RejectPairing => "RejectPairing",
            Method::ListNodes => "ListNodes",
            Method::ShowNode => "ShowNode",
            Method::Revoke => "Revoke",
            Method::Call => "Call",
            Method::ShowCall => "ShowCall",
            Method::ListCalls => "ListCalls",
            Method::WatchCall => "WatchCall",
            Method::Events => "Events",
            Method::AddOperator => "AddOperator",
            Method::ListOperators => "ListOperators",
            Method::RevokeOperator => "RevokeOperator",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn descriptor(self) -> MethodDescriptor {
        method_descriptor(self.name()).expect("every Method is in the contract (tested)")
    }

    /// Whether it answers with a stream of messages.
    pub fn streams(self) -> bool {
        self.descriptor().is_server_streaming()
    }

    /// The least role it needs, from its `required_role` option. A method without one
    /// needs an administrator.
    pub fn required_role(self) -> Role {
        required_role(&self.descriptor()).unwrap_or(Role::Admin)
    }

    pub fn path(self) -> String {
        format!("{}{}", super::API_PREFIX, self.name())
    }
}

fn method_descriptor(name: &str) -> Option<MethodDescriptor> {
    service().methods().find(|m| m.name() == name)
}

fn required_role(method: &MethodDescriptor) -> Option<Role> {
    let ext = pool().get_extension_by_name("tern.operator.v1.required_role")?;
    let options = method.options();
    if !options.has_extension(&ext) {
        return None;
    }
    match options.get_extension(&ext).as_ref() {
        Value::EnumNumber(n) => Role::try_from(*n).ok().filter(|r| *r != Role::Unspecified),
        _ => None,
    }
}

/// The descriptor of a message of the contract, by its Rust type's proto name.
pub fn message(full_name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(full_name)
        .expect("every message the daemon encodes is in the contract")
}

/// Reads `body` (proto3 JSON) as the message `desc` names, into its Rust type, as the
/// daemon reads a request: strictly. An empty body is the empty message; an unknown
/// field or enum name, or a number no 64-bit field holds, is `MALFORMED` (naming it),
/// never dropped or rounded: a misspelled filter must not widen a listing.
pub fn from_json<T: Message + Default>(
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<T, ApiError> {
    decode_json(desc, body, true)
}

/// Reads an answer, as a client does: fields a newer daemon added are ignored.
pub fn from_json_lenient<T: Message + Default>(
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<T, ApiError> {
    decode_json(desc, body, false)
}

fn decode_json<T: Message + Default>(
    desc: &MessageDescriptor,
    body: &[u8],
    strict: bool,
) -> Result<T, ApiError> {
    let malformed = |e: &dyn std::fmt::Display| {
        ApiError::malformed(format!(
            "the body is not a {} in JSON: {}",
            desc.name(),
            truncate(&e.to_string())
        ))
    };
    let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| malformed(&e))?
    };
    if strict && let Some(n) = beyond_64_bits(&value) {
        return Err(malformed(&format_args!(
            "the number {n} is beyond 64 bits (64-bit fields take a string of digits)"
        )));
    }
    let options = DeserializeOptions::new().deny_unknown_fields(strict);
    let dynamic = DynamicMessage::deserialize_with_options(desc.clone(), value, &options)
        .map_err(|e| malformed(&e))?;
    dynamic
        .transcode_to::<T>()
        .map_err(|e| ApiError::malformed(format!("the body is not a {}: {e}", desc.name())))
}

/// A number JSON parsing could only keep as a float, though no field of the contract is
/// a float: one past the 64-bit range (`18446744073709551616`) would otherwise be
/// rounded into it.
fn beyond_64_bits(value: &serde_json::Value) -> Option<&serde_json::Number> {
    match value {
        serde_json::Value::Number(n) if n.as_u64().is_none() && n.as_i64().is_none() => {
            n.as_f64().filter(|f| f.abs() >= 9.2e18).map(|_| n)
        }
        serde_json::Value::Array(items) => items.iter().find_map(beyond_64_bits),
        serde_json::Value::Object(fields) => fields.values().find_map(beyond_64_bits),
        _ => None,
    }
}

/// Writes `msg` in the proto3 JSON mapping, every field present (defaults included), so a
/// client in any language reads one shape.
pub fn to_json<T: Message>(desc: &MessageDescriptor, msg: &T) -> Vec<u8> {
    let dynamic = DynamicMessage::decode(desc.clone(), msg.encode_to_vec().as_slice())
        .expect("a message encoded by prost decodes with its own descriptor");
    let mut out = Vec::with_capacity(msg.encoded_len() * 2 + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(&mut ser, &options)
        .expect("a dynamic message serializes to JSON");
    out
}

/// At most 200 characters of a parser's message, which may quote the input.
fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1;

    #[test]
    fn every_method_of_the_service_is_known_and_every_known_one_is_in_the_service() {
        let names: Vec<String> = service().methods().map(|m| m.name().to_owned()).collect();
        for name in &names {
            assert!(Method::from_name(name).is_some(), "{name} has no Method");
        }
        for m in Method::ALL {
            assert!(
                names.iter().any(|n| n == m.name()),
                "{m:?} is not in the service"
            );
        }
    }

    #[test]
    fn roles_come_from_the_contract() {
        assert_eq!(Method::ListNodes.required_role(), Role::Viewer);
        assert_eq!(Method::Call.required_role(), Role::Admin);
        assert_eq!(Method::Revoke.required_role(), Role::Admin);
        assert_eq!(Method::AddOperator.required_role(), Role::Admin);
        for m in Method::ALL {
            assert!(
                required_role(&m.descriptor()).is_some(),
                "{m:?} names no role"
            );
        }
        assert!(Method::Events.streams());
        assert!(!Method::Call.streams());
    }

    #[test]
    fn json_follows_the_proto3_mapping() {
        let desc = message("tern.operator.v1.CallRequest");
        let req: v1::CallRequest = from_json(
            &desc,
            br#"{"node":"n1","capability":"echo","input":"aGk=","contentType":"text/plain","timeoutMs":5}"#,
        )
        .unwrap();
        // The daemon refuses what it does not know; a client ignores it.
        let with_later = br#"{"node":"n1","later":1}"#;
        assert_eq!(
            from_json::<v1::CallRequest>(&desc, with_later)
                .unwrap_err()
                .code,
            v1::ErrorCode::Malformed
        );
        assert_eq!(
            from_json_lenient::<v1::CallRequest>(&desc, with_later)
                .unwrap()
                .node,
            "n1"
        );
        let show = message("tern.operator.v1.ShowCallRequest");
        for past in [
            &b"{\"id\":18446744073709551616}"[..],
            b"{\"id\":18446744073709552000}",
        ] {
            let e = from_json::<v1::ShowCallRequest>(&show, past).unwrap_err();
            assert_eq!(e.code, v1::ErrorCode::Malformed, "{e}");
        }
        let max: v1::ShowCallRequest = from_json(&show, br#"{"id":18446744073709551615}"#).unwrap();
        assert_eq!(max.id, u64::MAX);
        assert_eq!(req.input, b"hi");
        assert_eq!(req.timeout_ms, 5);
        let empty: v1::CallRequest = from_json(&desc, b"  ").unwrap();
        assert_eq!(empty, v1::CallRequest::default());
        let err = from_json::<v1::CallRequest>(&desc, br#"{"timeoutMs":"x"}"#).unwrap_err();
        assert_eq!(err.code, v1::ErrorCode::Malformed);

        let desc = message("tern.operator.v1.CallResult");
        let out = to_json(
            &desc,
            &v1::CallResult {
                call_id: u64::MAX,
                state: v1::CallState::Succeeded as i32,
                ..Default::default()
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["callId"], "18446744073709551615");
        assert_eq!(v["state"], "CALL_STATE_SUCCEEDED");
        assert_eq!(v["output"], "");
        assert_eq!(v["timedOutAtMs"], "0");
    }
}
