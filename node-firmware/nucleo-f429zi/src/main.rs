//! Tern's node firmware for the NUCLEO-F429ZI.
//!
//! Build settings (read when the firmware is compiled):
//! - `TERN_PAIR`: the pairing invitation (`tern://pair?...` or `CODE@HOST:PORT`). Without
//!   it, an unpaired board asks for one on the serial console (the ST-LINK's virtual COM
//!   port, 115200 8N1).
//! - `TERN_IP=a.b.c.d/nn` (and `TERN_GATEWAY=a.b.c.d`): a static address instead of DHCP.
//!
//! LEDs: LD1 (green) is the `board.led` capability, LD2 (blue) lights once the network has
//! an address, LD3 (red) blinks when the node has stopped for good and waits for a reset.
//! The identity lives in flash sector 23 (0x081E_0000), which programming the firmware
//! leaves alone. The board pairs again after a chip erase (`probe-rs erase --chip
//! STM32F429ZITx`) or when the daemon revokes it (the sector is then erased).
#![no_std]
#![no_main]

mod board;
mod console;
mod mem;
mod net;
mod store;

use defmt::{error, info, warn};
use embassy_executor::Spawner;
use embassy_stm32::flash::Flash;
use embassy_stm32::gpio::{Flex, Level, Output, Speed};
use embassy_stm32::rng::Rng;
use embassy_stm32::usart::{self, BufferedUart};
use embassy_stm32::{Config, bind_interrupts, eth, flash, peripherals, rng};
use embassy_time::Timer;
use node_firmware::{ARENA_LEN, Console, Exit, Settings};
use static_cell::ConstStaticCell;
use transport_embedded::{Refused, TcpDialer};
use {defmt_rtt as _, panic_probe as _};

use crate::board::Nucleo;
use crate::console::SerialConsole;
use crate::store::FlashStore;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    HASH_RNG => rng::InterruptHandler<peripherals::RNG>;
    USART3 => usart::BufferedInterruptHandler<peripherals::USART3>;
    FLASH => flash::InterruptHandler;
});

/// Pairing's buffers, then the session's.
static ARENA: ConstStaticCell<[u8; ARENA_LEN]> = ConstStaticCell::new([0; ARENA_LEN]);
/// The daemon connection's TCP buffers: TLS records are at most about 1 KiB.
static TCP_RX: ConstStaticCell<[u8; 2048]> = ConstStaticCell::new([0; 2048]);
static TCP_TX: ConstStaticCell<[u8; 2048]> = ConstStaticCell::new([0; 2048]);
/// The UART driver's own rings; the console's output is queued before them. The writer
/// hands over 64 bytes at a time, once they fit whole: twice that keeps the line busy.
static UART_TX: ConstStaticCell<[u8; 128]> = ConstStaticCell::new([0; 128]);
static UART_RX: ConstStaticCell<[u8; 256]> = ConstStaticCell::new([0; 256]);

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, net::Device>) -> ! {
    runner.run().await
}

fn clocks() -> Config {
    use embassy_stm32::rcc::{
        AHBPrescaler, APBPrescaler, Hse, HseMode, Pll, PllMul, PllPDiv, PllPreDiv, PllQDiv,
        PllSource, Sysclk,
    };
    let mut config = Config::default();
    // The ST-LINK feeds 8 MHz on the HSE input (bypass).
    config.rcc.hse = Some(Hse {
        freq: embassy_stm32::time::Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL180,
        // 8 MHz / 4 * 180 / 2 = 180 MHz.
        divp: Some(PllPDiv::DIV2),
        // PLL48CLK clocks the RNG: 360 / 8 = 45 MHz (at most 48; USB, which needs exactly
        // 48, is not used).
        divq: Some(PllQDiv::DIV8),
        divr: None,
    });
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.sys = Sysclk::PLL1_P;
    config
}

/// Entropy from the hardware RNG, retried past a transient seed or clock error.
async fn entropy<const N: usize>(rng: &mut Rng<'static, peripherals::RNG>) -> [u8; N] {
    let mut bytes = [0u8; N];
    for _ in 0..8 {
        match rng.async_fill_bytes(&mut bytes).await {
            Ok(()) => return bytes,
            Err(e) => warn!("RNG: {}, retrying", e),
        }
    }
    defmt::panic!("the hardware RNG gives no entropy")
}

#[embassy_executor::main]
async fn main(spawner: Spawner) -> ! {
    let p = embassy_stm32::init(clocks());
    info!("tern node on {}", board::PLATFORM);

    let mut uart_config = usart::Config::default();
    uart_config.baudrate = 115_200;
    let uart = BufferedUart::new(
        p.USART3,
        p.PD9,
        p.PD8,
        UART_TX.take(),
        UART_RX.take(),
        Irqs,
        uart_config,
    );
    let uart = defmt::unwrap!(uart);
    let (uart_tx, uart_rx) = uart.split();
    spawner.spawn(defmt::unwrap!(console::writer(uart_tx)));
    let mut console = SerialConsole::new(uart_rx);

    let mut rng = Rng::new(p.RNG, Irqs);
    let seed: [u8; 32] = entropy(&mut rng).await;
    let net_seed: [u8; 8] = entropy(&mut rng).await;
    drop(rng);
    let mut rng = node_firmware::rng_from_seed(seed);

    let mut board = Nucleo::new(p.PB0, p.ADC1);
    let mut ld2 = Output::new(p.PB7, Level::Low, Speed::Low);
    let mut ld3 = Output::new(p.PB14, Level::Low, Speed::Low);
    let mut store = FlashStore::new(Flash::new(p.FLASH, Irqs), Flex::new(p.PA12));

    let mac = net::mac_address();
    let device = eth::Ethernet::new(
        net::PACKETS.take(),
        p.ETH,
        Irqs,
        // REF_CLK, CRS_DV, RXD0, RXD1, TXD0, TXD1, TX_EN (the board's RMII wiring).
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac,
        p.ETH_SMA,
        // MDIO, MDC.
        p.PA2,
        p.PC1,
    );
    let (stack, runner) = embassy_net::new(
        device,
        net::config(),
        net::RESOURCES.take(),
        u64::from_le_bytes(net_seed),
    );
    spawner.spawn(defmt::unwrap!(net_task(runner)));
    console.say(format_args!(
        "MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}; waiting for an address",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    ));
    stack.wait_config_up().await;
    if let Some(config) = stack.config_v4() {
        console.say(format_args!("address {}", config.address));
    }
    ld2.set_high();

    let mut dialer = TcpDialer::new(stack, TCP_RX.take(), TCP_TX.take());
    let settings = Settings {
        invitation: option_env!("TERN_PAIR"),
        sensor_every_ms: 10_000,
        ..Settings::default()
    };
    let exit = node_firmware::run(
        &mut board,
        &mut console,
        &mut store,
        &mut dialer,
        &mut rng,
        ARENA.take(),
        &settings,
    )
    .await;

    let failed = match exit {
        Exit::Refused(Refused::Revoked | Refused::Certificate) => {
            console.say(format_args!(
                "{exit}; forgetting the identity to pair again"
            ));
            match store.forget().await {
                Ok(()) => {
                    // Let the console show the line before the reset.
                    Timer::after_millis(200).await;
                    cortex_m::peripheral::SCB::sys_reset()
                }
                Err(e) => {
                    error!("erasing the identity failed: {}", e);
                    console.say(format_args!("erasing the identity failed: {e:?}"));
                    true
                }
            }
        }
        Exit::Stopped => {
            console.say(format_args!("{exit}; reset to start again"));
            false
        }
        _ => {
            error!("the node stopped: {}", defmt::Display2Format(&exit));
            console.say(format_args!("stopped: {exit}; reset to try again"));
            true
        }
    };
    loop {
        if failed {
            ld3.toggle();
        }
        Timer::after_millis(500).await;
    }
}
