//! `tern-node-tap`: Tern's node firmware on embassy's std platform, networked through a
//! TAP device by embassy-net, as the firmware on a board is networked by its Ethernet
//! peripheral. The identity lives in a file standing in for a flash sector.
//!
//! ```text
//! ip tuntap add dev tap0 mode tap && ip addr add 10.42.0.1/24 dev tap0 && ip link set tap0 up
//! tern-node-tap --tap tap0 --ip 10.42.0.2/24 --identity node.id --pair 'CODE@10.42.0.1:4433'
//! ```
//!
//! Exit status: 0 stopped by SIGTERM/SIGINT once the daemon acknowledged everything;
//! 2 not paired (no or bad invitation, pairing refused); 3 revoked or certificate
//! refused (pair again); 4 another refusal (the daemon's certificate is not the pinned
//! one, no common protocol version); 1 anything else.

mod board;
mod console;
mod store;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use embassy_executor::{Executor, Spawner};
use embassy_net::{Config, Ipv4Address, Ipv4Cidr, Runner, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use node_firmware::{ARENA_LEN, Exit, Settings, rng_from_seed};
use static_cell::StaticCell;
use transport_embedded::{Refused, TcpDialer};

use crate::board::{STOP, SimBoard};
use crate::console::StdConsole;
use crate::store::FileStore;

/// TCP socket buffers, as a board would give them.
const SOCKET_BUF: usize = 4096;

/// How long a stop waits for the daemon to acknowledge what the node sent.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Parser)]
#[command(version, about = "Tern node firmware over a TAP device")]
struct Args {
    /// The TAP device (it must exist and be up).
    #[arg(long, default_value = "tap0")]
    tap: String,
    /// The node's address and prefix on the TAP network.
    #[arg(long, default_value = "10.42.0.2/24")]
    ip: String,
    /// The default gateway, if the daemon is beyond the TAP network.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// The identity record (the stand-in for a flash sector); created at pairing.
    #[arg(long)]
    identity: PathBuf,
    /// Pairing invitation used at first boot: a tern://pair?... URI or CODE@HOST:PORT.
    /// Without it, the console asks for one.
    #[arg(long, env = "TERN_PAIR")]
    pair: Option<String>,
    /// A sensor.temperature reading every so many milliseconds (0: none).
    #[arg(long, default_value_t = 1000)]
    sensor_every_ms: u64,
    /// Renew the certificate this many seconds before it ends.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    renew_window_s: u64,
}

static EXIT: AtomicI32 = AtomicI32::new(-1);

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

/// Wakes the executor now and then, so a stop that waits too long is noticed.
#[embassy_executor::task]
async fn tick() {
    loop {
        embassy_time::Timer::after_millis(200).await;
    }
}

#[embassy_executor::task]
async fn main_task(spawner: Spawner, args: Args) {
    let code = match node(spawner, args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern-node-tap: {e}");
            1
        }
    };
    EXIT.store(code, Ordering::SeqCst);
}

async fn node(spawner: Spawner, args: Args) -> Result<i32, String> {
    let (ip, prefix) = parse_cidr(&args.ip)?;
    let mut seed = [0u8; 40];
    getrandom::fill(&mut seed).map_err(|e| format!("no entropy: {e}"))?;
    let mut device =
        TunTapDevice::new(&args.tap).map_err(|e| format!("opening {}: {e}", args.tap))?;
    // A locally administered MAC from the seed.
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&seed[32..38]);
    mac[0] = (mac[0] & 0xFE) | 0x02;
    device.set_hardware_address(mac);
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(ip, prefix),
        gateway: args.gateway,
        dns_servers: heapless::Vec::new(),
    });
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let net_seed = u64::from_le_bytes(seed[32..40].try_into().map_err(|_| "seed")?);
    let (stack, runner) = embassy_net::new(
        device,
        config,
        RESOURCES.init(StackResources::new()),
        net_seed,
    );
    spawner.spawn(net_task(runner).map_err(|e| format!("{e:?}"))?);
    stack.wait_config_up().await;

    static TCP_RX: StaticCell<[u8; SOCKET_BUF]> = StaticCell::new();
    static TCP_TX: StaticCell<[u8; SOCKET_BUF]> = StaticCell::new();
    static ARENA: StaticCell<[u8; ARENA_LEN]> = StaticCell::new();
    let mut dialer = TcpDialer::new(
        stack,
        TCP_RX.init([0; SOCKET_BUF]),
        TCP_TX.init([0; SOCKET_BUF]),
    );
    let arena = ARENA.init([0; ARENA_LEN]);

    let mut rng_seed = [0u8; 32];
    rng_seed.copy_from_slice(&seed[..32]);
    let mut rng = rng_from_seed(rng_seed);
    let mut board =
        SimBoard::new(ARENA_LEN + 2 * SOCKET_BUF + transport_embedded::identity::RECORD_LEN);
    let mut console = StdConsole;
    let mut store = FileStore::new(args.identity.clone());
    let settings = Settings {
        invitation: args.pair.as_deref(),
        sensor_every_ms: args.sensor_every_ms,
        renew_window_s: args.renew_window_s,
        ..Settings::default()
    };
    let exit = node_firmware::run(
        &mut board,
        &mut console,
        &mut store,
        &mut dialer,
        &mut rng,
        arena,
        &settings,
    )
    .await;
    let code = match &exit {
        Exit::Stopped => 0,
        Exit::Provision(_) | Exit::Pair(_) => 2,
        Exit::Refused(Refused::Revoked | Refused::Certificate) => 3,
        Exit::Refused(_) => 4,
        _ => 1,
    };
    if code != 0 {
        eprintln!("tern-node-tap: {exit}");
    } else {
        println!("{exit}");
    }
    Ok(code)
}

fn parse_cidr(text: &str) -> Result<(Ipv4Address, u8), String> {
    let bad = || format!("--ip {text}: expected an IPv4 address and prefix, e.g. 10.42.0.2/24");
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    Ok((ip, prefix))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("tern-node-tap: cannot handle signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    static EXECUTOR: StaticCell<Executor> = StaticCell::new();
    let executor = EXECUTOR.init(Executor::new());
    let mut stop_since: Option<Instant> = None;
    executor.run_until(
        |spawner| {
            spawner.spawn(main_task(spawner, args).expect("one main task"));
            spawner.spawn(tick().expect("one tick task"));
        },
        || {
            if stop.load(Ordering::Relaxed) {
                STOP.store(true, Ordering::Relaxed);
                let since = *stop_since.get_or_insert_with(Instant::now);
                if since.elapsed() > DRAIN_LIMIT {
                    eprintln!(
                        "tern-node-tap: stopping without the daemon's acknowledgement of everything sent"
                    );
                    EXIT.store(1, Ordering::SeqCst);
                }
            }
            EXIT.load(Ordering::SeqCst) >= 0
        },
    );
    std::process::exit(EXIT.load(Ordering::SeqCst));
}
