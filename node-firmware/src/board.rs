//! What a board gives the application.

use node_contract::{Stack, Usage};

/// A board's peripherals and figures.
pub trait Board {
    /// The platform named in the hello (`linux-tap`, `nucleo-f429zi`).
    fn platform(&self) -> &'static str;

    /// Switches the board LED.
    fn set_led(&mut self, on: bool);

    /// Whether the LED is on.
    fn led(&self) -> bool;

    /// The sensor's reading, in degrees Celsius; `None` when it cannot be read now.
    fn temperature(&mut self) -> Option<f32>;

    /// RAM reserved at build time, and what is left of the part's RAM.
    fn static_ram(&self) -> Option<Usage> {
        None
    }

    /// The heap, on a board that has one.
    fn heap(&self) -> Option<Usage> {
        None
    }

    /// The main stack and its high-water mark.
    fn stack(&self) -> Option<Stack> {
        None
    }

    /// Seconds since the Unix epoch, on a board with a wall clock. Without one,
    /// certificate validity is judged by uptime (see [`crate::app`]).
    fn unix_time(&self) -> Option<u64> {
        None
    }

    /// Whether someone asked the node to stop (a signal, a button). Asked every
    /// [`Board::STOP_POLL_MS`] while the node runs, if that is set.
    fn stop_requested(&self) -> bool {
        false
    }

    /// How often to ask [`Board::stop_requested`]; `None` on a board that never stops.
    const STOP_POLL_MS: Option<u64> = None;
}

/// The board's console: a terminal on a serial port, or standard input and output.
#[allow(async_fn_in_trait)]
pub trait Console {
    /// Prints one line.
    fn say(&mut self, line: core::fmt::Arguments<'_>);

    /// Reads one line typed at the console into `buf`, without its line ending; `None`
    /// if this console cannot read.
    async fn read_line<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b str>;
}
