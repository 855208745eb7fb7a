//! Ethernet (the LAN8742A PHY over RMII) and the IPv4 stack: DHCP, or a static address
//! chosen at build time with `TERN_IP=a.b.c.d/nn` (and `TERN_GATEWAY=a.b.c.d` if the
//! daemon is on another subnet).

use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA};
use static_cell::ConstStaticCell;

pub type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

/// DHCP and the one TCP connection to the daemon, and a spare.
const SOCKETS: usize = 3;

pub static PACKETS: ConstStaticCell<PacketQueue<4, 4>> = ConstStaticCell::new(PacketQueue::new());
pub static RESOURCES: ConstStaticCell<StackResources<SOCKETS>> =
    ConstStaticCell::new(StackResources::new());

/// The build's static address, checked when the firmware is compiled.
const STATIC_IP: Option<([u8; 4], u8)> = match option_env!("TERN_IP") {
    Some(text) => Some(parse_cidr(text.as_bytes())),
    None => None,
};
const GATEWAY: Option<[u8; 4]> = match option_env!("TERN_GATEWAY") {
    Some(text) => {
        let (address, end) = parse_address(text.as_bytes(), 0);
        assert!(end == text.len(), "TERN_GATEWAY must be a.b.c.d");
        Some(address)
    }
    None => None,
};
const _: () = assert!(
    GATEWAY.is_none() || STATIC_IP.is_some(),
    "TERN_GATEWAY needs TERN_IP (DHCP brings its own gateway)"
);

pub fn config() -> embassy_net::Config {
    match STATIC_IP {
        Some((address, prefix)) => embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(Ipv4Address::from(address), prefix),
            gateway: GATEWAY.map(Ipv4Address::from),
            dns_servers: heapless::Vec::new(),
        }),
        None => embassy_net::Config::dhcpv4(Default::default()),
    }
}

/// A locally administered unicast MAC from the chip's 96-bit unique id, so that boards
/// on one LAN differ.
pub fn mac_address() -> [u8; 6] {
    let uid = embassy_stm32::uid::uid();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, byte) in uid.iter().enumerate() {
        mac[1 + i % 5] ^= byte.rotate_left((i / 5) as u32 * 3);
    }
    mac
}

/// `a.b.c.d/nn`; a malformed value stops the build.
const fn parse_cidr(text: &[u8]) -> ([u8; 4], u8) {
    let (address, at) = parse_address(text, 0);
    assert!(
        at < text.len() && text[at] == b'/',
        "TERN_IP must be a.b.c.d/nn"
    );
    let (prefix, end) = parse_number(text, at + 1);
    assert!(
        end == text.len() && prefix <= 32,
        "TERN_IP's prefix must be 0 to 32"
    );
    (address, prefix as u8)
}

const fn parse_address(text: &[u8], mut at: usize) -> ([u8; 4], usize) {
    let mut address = [0u8; 4];
    let mut i = 0;
    while i < 4 {
        if i > 0 {
            assert!(at < text.len() && text[at] == b'.', "expected a.b.c.d");
            at += 1;
        }
        let (n, end) = parse_number(text, at);
        assert!(n <= 255, "an address byte is 0 to 255");
        address[i] = n as u8;
        at = end;
        i += 1;
    }
    (address, at)
}

const fn parse_number(text: &[u8], mut at: usize) -> (u32, usize) {
    let start = at;
    let mut n = 0u32;
    while at < text.len() && text[at].is_ascii_digit() && at - start < 3 {
        n = n * 10 + (text[at] - b'0') as u32;
        at += 1;
    }
    assert!(at > start, "expected a number");
    (n, at)
}

// The parser, checked when the firmware compiles.
const _: () = {
    let (address, prefix) = parse_cidr(b"192.168.1.50/24");
    assert!(address[0] == 192 && address[1] == 168 && address[2] == 1 && address[3] == 50);
    assert!(prefix == 24);
    let (address, end) = parse_address(b"10.0.0.1", 0);
    assert!(address[0] == 10 && address[3] == 1 && end == 8);
};
