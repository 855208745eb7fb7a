//! The OpenAPI 3.0 document of the operator API, built from the contract's descriptors
//! (so it cannot drift from the `.proto`): one `POST` path per method, one schema per
//! message in its proto3 JSON form. Served at `GET /api/v1/openapi.json`.

use std::sync::LazyLock;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::CONTRACT_VERSION;
use super::contract::{Method, service};

/// The document, as JSON text.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| build().to_string());
    &DOC
}

fn build() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for m in service().methods() {
        let method = Method::from_name(m.name()).expect("every method is known (tested)");
        collect(&m.input(), &mut schemas);
        collect(&m.output(), &mut schemas);
        let output = if m.is_server_streaming() {
            json!({"application/x-ndjson": {"schema": schema_ref(&m.output())}})
        } else {
            json!({"application/json": {"schema": schema_ref(&m.output())}})
        };
        let role = match method.required_role() {
            super::v1::Role::Viewer => "viewer",
            _ => "admin",
        };
        paths.insert(
            method.path(),
            json!({"post": {
                "operationId": m.name(),
                "summary": first_line(&comments(m.parent_file().file_descriptor_proto(), m.path())),
                "description": format!("Needs the {role} role.{}", if m.is_server_streaming() {
                    " Streams one JSON message per line."
                } else { "" }),
                "x-tern-role": role,
                "requestBody": {
                    "required": false,
                    "content": {"application/json": {"schema": schema_ref(&m.input())}},
                },
                "responses": {
                    "200": {"description": "The answer.", "content": output},
                    "default": {
                        "description": "The request failed.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }}),
        );
    }
    let error = super::contract::message("tern.operator.v1.Error");
    collect(&error, &mut schemas);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tern operator API",
            "version": format!("{CONTRACT_VERSION}"),
            "description": "Every method is POST /api/v1/<Method> with its request message as \
                JSON (the proto3 JSON mapping). On TCP the caller presents an operator \
                identity: a TLS client certificate of the daemon's operator CA, or the web \
                console's session cookie with its X-Tern-CSRF header.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "consoleSession": {"type": "apiKey", "in": "cookie", "name": "tern_session"},
            },
        },
    })
}

fn schema_ref(msg: &MessageDescriptor) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", msg.name())})
}

/// Adds `msg` and every message it refers to.
fn collect(msg: &MessageDescriptor, schemas: &mut Map<String, Value>) {
    if schemas.contains_key(msg.name()) {
        return;
    }
    // Placed first so a message that refers to itself stops here.
    schemas.insert(msg.name().to_owned(), Value::Null);
    let mut properties = Map::new();
    for field in msg.fields() {
        let schema = field_schema(&field, schemas);
        properties.insert(field.json_name().to_owned(), schema);
    }
    schemas.insert(
        msg.name().to_owned(),
        json!({"type": "object", "properties": properties}),
    );
}

fn field_schema(field: &FieldDescriptor, schemas: &mut Map<String, Value>) -> Value {
    let one = match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // 64-bit integers are strings in proto3 JSON (a number is accepted too).
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "pattern": "^[0-9]{1,20}$"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(m) => {
            collect(&m, schemas);
            schema_ref(&m)
        }
    };
    if field.cardinality() == Cardinality::Repeated {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

/// The leading comment the `.proto` gives the element at `path`.
fn comments(file: &prost_reflect::prost_types::FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.as_ref())
        .cloned()
        .unwrap_or_default()
}

fn first_line(text: &str) -> String {
    text.trim()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_a_path_and_every_reference_resolves() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        for m in Method::ALL {
            assert!(doc["paths"][m.path()]["post"].is_object(), "{m:?}");
        }
        let text = document();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
        assert_eq!(
            doc["components"]["schemas"]["CallResult"]["properties"]["callId"]["type"],
            "string"
        );
    }
}
