//! The capabilities the firmware serves, as functions from a call's input to its answer:
//! the app ([`crate::app`]) routes calls here and sends what they return.

use node_contract::descriptors::{BOARD_LED, ECHO, INSTALL_CERTIFICATE, SYSTEM_HEALTH};
use node_contract::{Descriptor, Health, LedState, SetLed, names};
use protocol_core::wire::{CapabilityDescriptor, RejectCode};

use crate::board::Board;

/// What the firmware registers, in the order the daemon lists them.
pub const REGISTERED: [CapabilityDescriptor<'static>; 4] = [
    wire(&ECHO),
    wire(&SYSTEM_HEALTH),
    wire(&BOARD_LED),
    wire(&INSTALL_CERTIFICATE),
];

const fn wire(d: &Descriptor) -> CapabilityDescriptor<'static> {
    CapabilityDescriptor {
        name: d.name,
        version: d.version,
        input: d.input,
        output: d.output,
        needs_approval: d.needs_approval,
    }
}

/// Room for a JSON answer the firmware writes (`system.health`, `board.led`, ...).
pub const ANSWER_LEN: usize = 512;

/// A call the firmware does not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: RejectCode,
    pub reason: &'static str,
}

impl Refusal {
    const fn bad_input(reason: &'static str) -> Self {
        Self {
            code: RejectCode::BadInput,
            reason,
        }
    }
}

/// Which capability a call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Echo,
    Health,
    Led,
    InstallCertificate,
}

impl Capability {
    /// The capability named `name` with content type `content_type`.
    pub fn named(name: &str, content_type: &str) -> Result<Self, Refusal> {
        let capability = match name {
            names::ECHO => Self::Echo,
            names::SYSTEM_HEALTH => Self::Health,
            names::BOARD_LED => Self::Led,
            names::INSTALL_CERTIFICATE => Self::InstallCertificate,
            _ => {
                return Err(Refusal {
                    code: RejectCode::UnknownCapability,
                    reason: "this node has no such capability",
                });
            }
        };
        if content_type != names::JSON {
            return Err(Refusal::bad_input("the input must be application/json"));
        }
        Ok(capability)
    }
}

/// `echo`: the input, unchanged. Its content type says JSON; the daemon checked the
/// value at the operator's edge, and the node has no use for reading it.
pub fn echo(input: &[u8]) -> &[u8] {
    input
}

/// `system.health`: uptime and the board's memory figures.
pub fn health<'o, B: Board>(
    board: &B,
    uptime_ms: u64,
    out: &'o mut [u8],
) -> Result<&'o [u8], Refusal> {
    let mut health = Health::new(uptime_ms as f64 / 1000.0);
    health.static_ram = board.static_ram();
    health.heap = board.heap();
    health.stack = board.stack();
    json(&health, out)
}

/// `board.led`: `{"on": bool}` in, the LED's state out.
pub fn led<'o, B: Board>(
    board: &mut B,
    input: &[u8],
    out: &'o mut [u8],
) -> Result<&'o [u8], Refusal> {
    let (set, _) = serde_json_core::from_slice::<SetLed>(input)
        .map_err(|_| Refusal::bad_input("expected {\"on\": true|false}"))?;
    board.set_led(set.on);
    json(&LedState { on: board.led() }, out)
}

/// Writes `value` as JSON into `out`.
pub fn json<'o, T: serde::Serialize>(value: &T, out: &'o mut [u8]) -> Result<&'o [u8], Refusal> {
    match serde_json_core::to_slice(value, out) {
        Ok(n) => Ok(&out[..n]),
        Err(_) => Err(Refusal {
            code: RejectCode::Busy,
            reason: "the answer does not fit the node's buffer",
        }),
    }
}
