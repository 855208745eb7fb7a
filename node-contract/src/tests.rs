//! Every payload through both JSON codecs a node may use: `serde_json` on a host,
//! `serde-json-core` (no allocator) on a microcontroller. Both must write the same bytes
//! and read back the same value, so either side can talk to the other.

use std::vec::Vec;

use crate::*;

/// Encodes `$value` with both codecs, checks they agree byte for byte, and reads the
/// bytes back as `$ty` with both. Evaluates to the JSON.
macro_rules! round_trip {
    ($value:expr, $ty:ty) => {{
        let value = $value;
        let json: Vec<u8> = serde_json::to_vec(&value).unwrap();
        let mut buf = [0u8; 1024];
        let n = serde_json_core::to_slice(&value, &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            std::str::from_utf8(&json).unwrap()
        );
        let back: $ty = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, value);
        let (back, used): ($ty, usize) = serde_json_core::from_slice(&buf[..n]).unwrap();
        assert_eq!((back, used), (value, n));
        json
    }};
}

/// What the Linux node host's `system.health` answered before this contract existed,
/// taken from a real machine.
const LINUX_HEALTH: &str = r#"{"hostname":"vm","uptime_s":14077.84,"load":{"one":1.72,"five":1.28,"fifteen":1.18},"memory":{"total_bytes":25276071936,"available_bytes":24349085696},"disk":{"path":"/","total_bytes":270553174016,"available_bytes":54754295808}}"#;

fn linux_health() -> Health<'static> {
    Health {
        hostname: Some("vm"),
        load: Some(LoadAverage {
            one: 1.72,
            five: 1.28,
            fifteen: 1.18,
        }),
        memory: Some(Memory {
            total_bytes: 25_276_071_936,
            available_bytes: 24_349_085_696,
        }),
        disk: Some(Disk {
            path: "/",
            total_bytes: 270_553_174_016,
            available_bytes: 54_754_295_808,
        }),
        ..Health::new(14_077.84)
    }
}

fn firmware_health() -> Health<'static> {
    Health {
        static_ram: Some(Usage {
            used_bytes: 61_440,
            free_bytes: 135_168,
        }),
        stack: Some(Stack {
            size_bytes: 16_384,
            high_water_bytes: 5_120,
        }),
        ..Health::new(3_601.5)
    }
}

#[test]
fn the_linux_hosts_health_json_parses_and_is_written_the_same() {
    let parsed: Health<'_> = serde_json::from_str(LINUX_HEALTH).unwrap();
    assert_eq!(parsed, linux_health());
    let (parsed, _): (Health<'_>, usize) = serde_json_core::from_str(LINUX_HEALTH).unwrap();
    assert_eq!(parsed, linux_health());
    // Figures a host does not have are left out, not written as null.
    assert_eq!(
        round_trip!(linux_health(), Health<'_>),
        LINUX_HEALTH.as_bytes()
    );
}

#[test]
fn a_microcontrollers_health_round_trips_with_only_its_figures() {
    let json = round_trip!(firmware_health(), Health<'_>);
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"uptime_s":3601.5,"static_ram":{"used_bytes":61440,"free_bytes":135168},"stack":{"size_bytes":16384,"high_water_bytes":5120}}"#
    );
    let heap = Health {
        heap: Some(Usage {
            used_bytes: 1,
            free_bytes: 2,
        }),
        ..Health::new(0.0)
    };
    round_trip!(heap, Health<'_>);
}

#[test]
fn health_readers_ignore_figures_they_do_not_know() {
    let json = r#"{"uptime_s":1.0,"battery":{"volts":3.7,"ok":true},"stack":{"size_bytes":2,"high_water_bytes":1},"notes":"x"}"#;
    let expected = Health {
        stack: Some(Stack {
            size_bytes: 2,
            high_water_bytes: 1,
        }),
        ..Health::new(1.0)
    };
    assert_eq!(serde_json::from_str::<Health<'_>>(json).unwrap(), expected);
    assert_eq!(
        serde_json_core::from_str::<Health<'_>>(json).unwrap().0,
        expected
    );
    assert!(serde_json::from_str::<Health<'_>>(r#"{"hostname":"x"}"#).is_err());
}

#[test]
fn renewal_payloads_keep_their_wire_format() {
    let der = [0x30, 0x82, 0x01, 0x0a, 0xff];
    let mut text = [0u8; 10];
    let request = RenewRequest::new(&der, &mut text).unwrap();
    assert_eq!(
        round_trip!(request, RenewRequest<'_>),
        br#"{"csr":"3082010aff"}"#
    );
    let mut out = [0u8; 5];
    assert_eq!(request.csr_der(&mut out).unwrap(), &der);

    let mut text = [0u8; 10];
    let renewed = Renewed::new(&der, &mut text).unwrap();
    assert_eq!(
        round_trip!(renewed, Renewed<'_>),
        br#"{"cert":"3082010aff"}"#
    );
    assert_eq!(renewed.cert_der(&mut out).unwrap(), &der);

    assert_eq!(
        round_trip!(Installed { installed: true }, Installed),
        br#"{"installed":true}"#
    );

    // Unknown fields are refused, as they always were, by both codecs.
    let extra = br#"{"csr":"00","device":"someone-else"}"#;
    assert!(serde_json::from_slice::<RenewRequest<'_>>(extra).is_err());
    assert!(serde_json_core::from_slice::<RenewRequest<'_>>(extra).is_err());
    assert!(serde_json::from_slice::<Renewed<'_>>(br#"{"cert":"00","x":1}"#).is_err());

    // Text that is not hex reads as a request, and is refused when decoded.
    let bad: RenewRequest<'_> = serde_json::from_slice(br#"{"csr":"0g"}"#).unwrap();
    assert_eq!(
        bad.csr_der(&mut out),
        Err(HexError::InvalidDigit { index: 1 })
    );
    let mut small = [0u8; 4];
    assert_eq!(
        RenewRequest::new(&der, &mut small),
        Err(HexError::BufferTooSmall { needed: 10 })
    );
}

#[test]
fn board_payloads_round_trip() {
    assert_eq!(round_trip!(SetLed { on: true }, SetLed), br#"{"on":true}"#);
    assert_eq!(
        round_trip!(LedState { on: false }, LedState),
        br#"{"on":false}"#
    );
    assert!(serde_json::from_slice::<SetLed>(br#"{"on":true,"blink":1}"#).is_err());
    assert!(serde_json_core::from_slice::<SetLed>(br#"{"on":1}"#).is_err());

    let reading = Temperature {
        celsius: 21.5,
        seq: 7,
    };
    assert_eq!(
        round_trip!(reading, Temperature),
        br#"{"celsius":21.5,"seq":7}"#
    );
    for celsius in [-40.25, 0.1, 85.0, 23.4567] {
        round_trip!(
            Temperature {
                celsius,
                seq: u32::MAX
            },
            Temperature
        );
    }
}

#[test]
fn names_and_descriptors_agree() {
    assert_eq!(descriptors::ECHO.name, names::ECHO);
    assert_eq!(descriptors::SYSTEM_HEALTH.name, "system.health");
    assert_eq!(descriptors::DESKTOP_OPEN_URL.name, "desktop.open_url");
    const { assert!(descriptors::DESKTOP_OPEN_URL.needs_approval) };
    assert_eq!(descriptors::INSTALL_CERTIFICATE.name, "tern.certificate");
    assert_eq!(descriptors::BOARD_LED.name, "board.led");
    assert_eq!(names::RENEW_EVENT, "tern.renew");
    assert_eq!(names::TEMPERATURE_EVENT, "sensor.temperature");
    assert_eq!(JSON, "application/json");
}
