//! Reads of memory Rust does not own: the linker's layout symbols, the painted stack, and
//! the factory calibration words in system memory. This is the only module that may use
//! `unsafe`.
#![allow(unsafe_code)]

use core::ptr;

use cortex_m_rt::STACK_PAINT_VALUE;

// SAFETY: these are symbols of the linker script (cortex-m-rt's link.x and our memory.x).
// Only their addresses are used; nothing is read through them here.
unsafe extern "C" {
    static _ram_start: u32;
    static _ram_end: u32;
    /// End of `.data` + `.bss` + `.uninit`.
    static __sheap: u32;
    static _stack_start: u32;
    static _stack_end: u32;
}

fn address(symbol: *const u32) -> usize {
    symbol as usize
}

/// The SRAM regions the linker laid out, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// `.data` + `.bss` + `.uninit`, reserved at build time.
    pub statics: usize,
    /// SRAM left after them.
    pub free: usize,
    /// The main stack's region (the CCM RAM, see memory.x).
    pub stack: usize,
}

pub fn layout() -> Layout {
    let ram_start = address(&raw const _ram_start);
    let ram_end = address(&raw const _ram_end);
    let statics_end = address(&raw const __sheap);
    Layout {
        statics: statics_end - ram_start,
        free: ram_end - statics_end,
        stack: address(&raw const _stack_start) - address(&raw const _stack_end),
    }
}

/// The most of the stack used since reset: the reset handler painted it whole, and what
/// still holds the paint from its bottom up was never reached.
pub fn stack_high_water() -> usize {
    let bottom = address(&raw const _stack_end);
    let top = address(&raw const _stack_start);
    let mut word = bottom;
    while word < top {
        // SAFETY: `word` is 4-aligned and inside the stack region, RAM that is always
        // mapped. A volatile read of memory below the stack pointer aliases nothing Rust
        // holds a reference to.
        let value = unsafe { ptr::read_volatile(word as *const u32) };
        if value != STACK_PAINT_VALUE {
            break;
        }
        word += 4;
    }
    top - word
}

/// The temperature sensor and reference voltage as measured in production (datasheet
/// DS9405, "Temperature sensor calibration values" and "Internal reference voltage
/// calibration values"): raw 12-bit ADC readings at VDDA = 3.3 V.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// The sensor at 30 °C.
    pub ts_cal1: u16,
    /// The sensor at 110 °C.
    pub ts_cal2: u16,
    /// VREFINT at 30 °C.
    pub vrefint_cal: u16,
}

const TS_CAL1: usize = 0x1FFF_7A2C;
const TS_CAL2: usize = 0x1FFF_7A2E;
const VREFINT_CAL: usize = 0x1FFF_7A2A;

pub fn calibration() -> Calibration {
    // SAFETY: system memory (0x1FFF_0000..) is always mapped and read-only; the addresses
    // are 2-aligned half-words from the datasheet.
    let read = |at: usize| unsafe { ptr::read_volatile(at as *const u16) };
    Calibration {
        ts_cal1: read(TS_CAL1),
        ts_cal2: read(TS_CAL2),
        vrefint_cal: read(VREFINT_CAL),
    }
}
