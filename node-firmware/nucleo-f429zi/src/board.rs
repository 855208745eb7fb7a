//! The board's side of the application: the user LED, the die temperature, memory figures.

use embassy_stm32::Peri;
use embassy_stm32::adc::{Adc, SampleTime, Temperature, VrefInt};
use embassy_stm32::gpio::{Level, Output, Speed};
use embassy_stm32::peripherals::{ADC1, PB0};
use node_contract::{Stack, Usage};
use node_firmware::Board;

use crate::mem::{self, Calibration};

/// The platform named in the hello.
pub const PLATFORM: &str = "nucleo-f429zi";

/// Conversions averaged per reading (the sensor's noise is a few LSB).
const SAMPLES: u32 = 4;
/// The sensor needs at least 10 µs of sampling (datasheet, TS_temp): 480 cycles of the
/// 22.5 MHz ADC clock (PCLK2 90 MHz / 4) is 21 µs.
const SAMPLE_TIME: SampleTime = SampleTime::CYCLES480;

/// The NUCLEO-F429ZI as the application sees it.
pub struct Nucleo {
    /// LD1, green: the `board.led` capability.
    led: Output<'static>,
    adc: Adc<'static, ADC1>,
    sensor: Temperature,
    vrefint: VrefInt,
    calibration: Calibration,
}

impl core::fmt::Debug for Nucleo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nucleo")
            .field("calibration", &self.calibration)
            .finish_non_exhaustive()
    }
}

impl Nucleo {
    pub fn new(ld1: Peri<'static, PB0>, adc: Peri<'static, ADC1>) -> Self {
        let adc = Adc::new(adc);
        // Both need a few µs to settle; the first reading comes much later.
        let sensor = adc.enable_temperature();
        let vrefint = adc.enable_vrefint();
        Self {
            led: Output::new(ld1, Level::Low, Speed::Low),
            adc,
            sensor,
            vrefint,
            calibration: mem::calibration(),
        }
    }

    fn average(&mut self, internal: Internal) -> u32 {
        let mut sum = 0;
        for _ in 0..SAMPLES {
            sum += u32::from(match internal {
                Internal::Sensor => self.adc.blocking_read(&mut self.sensor, SAMPLE_TIME),
                Internal::Vrefint => self.adc.blocking_read(&mut self.vrefint, SAMPLE_TIME),
            });
        }
        sum / SAMPLES
    }
}

#[derive(Clone, Copy)]
enum Internal {
    Sensor,
    Vrefint,
}

impl Board for Nucleo {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn set_led(&mut self, on: bool) {
        self.led
            .set_level(if on { Level::High } else { Level::Low });
    }

    fn led(&self) -> bool {
        self.led.is_set_high()
    }

    fn temperature(&mut self) -> Option<f32> {
        let vrefint = self.average(Internal::Vrefint);
        let sensor = self.average(Internal::Sensor);
        celsius(sensor, vrefint, &self.calibration)
    }

    fn static_ram(&self) -> Option<Usage> {
        let layout = mem::layout();
        Some(Usage {
            used_bytes: u32::try_from(layout.statics).ok()?,
            free_bytes: u32::try_from(layout.free).ok()?,
        })
    }

    fn stack(&self) -> Option<Stack> {
        Some(Stack {
            size_bytes: u32::try_from(mem::layout().stack).ok()?,
            high_water_bytes: u32::try_from(mem::stack_high_water()).ok()?,
        })
    }
}

/// Datasheet typical values, for a part whose calibration words look wrong: V25 = 0.76 V,
/// 2.5 mV/°C, VREFINT = 1.21 V.
const V25: f32 = 0.76;
const SLOPE_V_PER_C: f32 = 0.0025;
const VREFINT_V: f32 = 1.21;
const FULL_SCALE: f32 = 4095.0;

/// Degrees Celsius from averaged raw readings of the sensor and of VREFINT. VREFINT gives
/// the actual VDDA, so the result does not depend on the supply.
fn celsius(sensor: u32, vrefint: u32, cal: &Calibration) -> Option<f32> {
    if vrefint == 0 {
        return None;
    }
    let (sensor, vrefint) = (sensor as f32, vrefint as f32);
    let plausible = cal.ts_cal1 > 0
        && cal.ts_cal2 > cal.ts_cal1
        && cal.ts_cal2 < 4095
        && (1300..1700).contains(&cal.vrefint_cal);
    let t = if plausible {
        // The sensor's reading as it would be at VDDA = 3.3 V, where the calibration was made.
        let at_cal_vdda = sensor * f32::from(cal.vrefint_cal) / vrefint;
        let (cal1, cal2) = (f32::from(cal.ts_cal1), f32::from(cal.ts_cal2));
        30.0 + (at_cal_vdda - cal1) * (110.0 - 30.0) / (cal2 - cal1)
    } else {
        let vdda = VREFINT_V * FULL_SCALE / vrefint;
        let volts = sensor * vdda / FULL_SCALE;
        25.0 + (volts - V25) / SLOPE_V_PER_C
    };
    (-40.0..=125.0).contains(&t).then_some(t)
}
