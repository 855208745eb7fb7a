//! A request as the daemon receives it: the method, and its message decoded from the
//! body. One enum, so the server's checks and the fuzz targets see every method.

use super::ApiError;
use super::contract::{Method, from_json, to_json};
use super::v1;

/// A decoded request, one variant per method.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Status(v1::StatusRequest),
    WhoAmI(v1::WhoAmIRequest),
    CreatePairCode(v1::PairCodeRequest),
    ListPairings(v1::PairListRequest),
    ApprovePairing(v1::PairApproveRequest),
    RejectPairing(v1::PairRejectRequest),
    ListNodes(v1::ListNodesRequest),
    ShowNode(v1::ShowNodeRequest),
    Revoke(v1::RevokeRequest),
    Call(v1::CallRequest),
    ShowCall(v1::ShowCallRequest),
    ListCalls(v1::ListCallsRequest),
    Events(v1::EventsRequest),
    AddOperator(v1::AddOperatorRequest),
    ListOperators(v1::ListOperatorsRequest),
    RevokeOperator(v1::RevokeOperatorRequest),
}

impl Request {
    /// Reads `body` (proto3 JSON) as `method`'s request message. Never panics.
    pub fn decode(method: Method, body: &[u8]) -> Result<Self, ApiError> {
        let d = method.descriptor().input();
        Ok(match method {
            Method::Status => Request::Status(from_json(&d, body)?),
            Method::WhoAmI => Request::WhoAmI(from_json(&d, body)?),
            Method::CreatePairCode => Request::CreatePairCode(from_json(&d, body)?),
            Method::ListPairings => Request::ListPairings(from_json(&d, body)?),
            Method::ApprovePairing => Request::ApprovePairing(from_json(&d, body)?),
            Method::RejectPairing => Request::RejectPairing(from_json(&d, body)?),
            Method::ListNodes => Request::ListNodes(from_json(&d, body)?),
            Method::ShowNode => Request::ShowNode(from_json(&d, body)?),
            Method::Revoke => Request::Revoke(from_json(&d, body)?),
            Method::Call => Request::Call(from_json(&d, body)?),
            Method::ShowCall => Request::ShowCall(from_json(&d, body)?),
            Method::ListCalls => Request::ListCalls(from_json(&d, body)?),
            Method::Events => Request::Events(from_json(&d, body)?),
            Method::AddOperator => Request::AddOperator(from_json(&d, body)?),
            Method::ListOperators => Request::ListOperators(from_json(&d, body)?),
            Method::RevokeOperator => Request::RevokeOperator(from_json(&d, body)?),
        })
    }

    /// The body a client sends for it.
    pub fn encode(&self) -> Vec<u8> {
        let d = self.method().descriptor().input();
        match self {
            Request::Status(m) => to_json(&d, m),
            Request::WhoAmI(m) => to_json(&d, m),
            Request::CreatePairCode(m) => to_json(&d, m),
            Request::ListPairings(m) => to_json(&d, m),
            Request::ApprovePairing(m) => to_json(&d, m),
            Request::RejectPairing(m) => to_json(&d, m),
            Request::ListNodes(m) => to_json(&d, m),
            Request::ShowNode(m) => to_json(&d, m),
            Request::Revoke(m) => to_json(&d, m),
            Request::Call(m) => to_json(&d, m),
            Request::ShowCall(m) => to_json(&d, m),
            Request::ListCalls(m) => to_json(&d, m),
            Request::Events(m) => to_json(&d, m),
            Request::AddOperator(m) => to_json(&d, m),
            Request::ListOperators(m) => to_json(&d, m),
            Request::RevokeOperator(m) => to_json(&d, m),
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Request::Status(_) => Method::Status,
            Request::WhoAmI(_) => Method::WhoAmI,
            Request::CreatePairCode(_) => Method::CreatePairCode,
            Request::ListPairings(_) => Method::ListPairings,
            Request::ApprovePairing(_) => Method::ApprovePairing,
            Request::RejectPairing(_) => Method::RejectPairing,
            Request::ListNodes(_) => Method::ListNodes,
            Request::ShowNode(_) => Method::ShowNode,
            Request::Revoke(_) => Method::Revoke,
            Request::Call(_) => Method::Call,
            Request::ShowCall(_) => Method::ShowCall,
            Request::ListCalls(_) => Method::ListCalls,
            Request::Events(_) => Method::Events,
            Request::AddOperator(_) => Method::AddOperator,
            Request::ListOperators(_) => Method::ListOperators,
            Request::RevokeOperator(_) => Method::RevokeOperator,
        }
    }
}
