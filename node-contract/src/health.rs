//! What `system.health` answers and the `health` event carries.
//!
//! One type for every kind of node: each fills the figures it has and leaves the others
//! out (absent, never `null`). A Linux host reports its host name, load, memory and
//! disk; a microcontroller its static RAM or heap and its stack. Both report uptime.
//! Readers take what is there and ignore figures they do not know, so more can be
//! added.

use serde::{Deserialize, Serialize};

/// A node's health.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Health<'a> {
    /// The machine's host name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<&'a str>,
    /// Seconds since boot.
    pub uptime_s: f64,
    /// Run-queue load averages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadAverage>,
    /// Memory as the operating system accounts for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// One filesystem's size and free space.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk<'a>>,
    /// RAM the firmware reserves at build time (`.data`, `.bss`, static pools): used is
    /// what it reserved, free what is left of the part's RAM besides the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_ram: Option<Usage>,
    /// The firmware's heap, when it has an allocator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<Usage>,
    /// The main stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Stack>,
}

impl<'a> Health<'a> {
    /// Health with only the uptime; a node fills in the figures it has.
    pub const fn new(uptime_s: f64) -> Self {
        Self {
            hostname: None,
            uptime_s,
            load: None,
            memory: None,
            disk: None,
            static_ram: None,
            heap: None,
            stack: None,
        }
    }
}

/// Run-queue load averages over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Memory as an operating system accounts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    /// What could be given to new work without swapping (Linux's `MemAvailable`).
    pub available_bytes: u64,
}

/// The filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk<'a> {
    #[serde(borrow)]
    pub path: &'a str,
    pub total_bytes: u64,
    /// Available to unprivileged users.
    pub available_bytes: u64,
}

/// A region of a microcontroller's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used_bytes: u32,
    pub free_bytes: u32,
}

/// A microcontroller's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub size_bytes: u32,
    /// The most of it used since boot; close to `size_bytes` means an overflow is near.
    pub high_water_bytes: u32,
}
