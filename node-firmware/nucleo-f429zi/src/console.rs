//! The console on USART3 (PD8 TX, PD9 RX): the ST-LINK's virtual COM port, 115200 8N1.
//!
//! Lines go through a byte pipe to [`writer`], a task that feeds the UART, so printing
//! never waits for the wire; when the pipe is full a line is dropped (and counted) rather
//! than holding up the node.

use core::fmt::Write as _;

use embassy_stm32::usart::{BufferedUartRx, BufferedUartTx};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::pipe::Pipe;
use embedded_io_async::{Read as _, Write as _};
use node_firmware::Console;

/// Bytes waiting for the UART: about 90 ms of output at 115200 baud.
const PIPE_LEN: usize = 1024;
/// The longest line printed; longer ones are cut and end with `~`.
const LINE_LEN: usize = 192;

static OUTPUT: Pipe<CriticalSectionRawMutex, PIPE_LEN> = Pipe::new();

const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7F;

/// Feeds what the console printed to the UART.
#[embassy_executor::task]
pub async fn writer(mut tx: BufferedUartTx<'static>) -> ! {
    let mut chunk = [0u8; 64];
    loop {
        let n = OUTPUT.read(&mut chunk).await;
        if let Err(e) = tx.write_all(&chunk[..n]).await {
            defmt::warn!("console: UART write failed: {}", e);
        }
    }
}

/// The serial console the application prints to and reads the pairing invitation from.
pub struct SerialConsole {
    rx: BufferedUartRx<'static>,
    /// The last line ended with CR: a LF right after it belongs to the same line end.
    after_cr: bool,
    dropped: u32,
}

impl core::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SerialConsole")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl SerialConsole {
    pub fn new(rx: BufferedUartRx<'static>) -> Self {
        Self {
            rx,
            after_cr: false,
            dropped: 0,
        }
    }

    /// Queues `bytes` whole, or not at all.
    fn put(bytes: &[u8]) -> bool {
        if OUTPUT.free_capacity() < bytes.len() {
            return false;
        }
        // A write stops where the ring wraps, hence the loop. Only this console writes
        // and the executor is single-threaded, so the room checked above stays.
        let mut rest = bytes;
        while !rest.is_empty() {
            match OUTPUT.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(_) => return false,
            }
        }
        true
    }
}

impl Console for SerialConsole {
    fn say(&mut self, line: core::fmt::Arguments<'_>) {
        let mut text = Line::default();
        if self.dropped > 0 {
            let _ = write!(text, "({} line(s) dropped) ", self.dropped);
        }
        let _ = text.write_fmt(line);
        defmt::info!("{=str}", text.as_str());
        if Self::put(text.terminated()) {
            self.dropped = 0;
        } else {
            self.dropped += 1;
        }
    }

    async fn read_line<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b str> {
        let mut len = 0;
        let mut byte = [0u8; 1];
        loop {
            match self.rx.read(&mut byte).await {
                Ok(0) => return None,
                Ok(_) => {}
                // Overrun, noise or framing: the byte is lost; the operator sees the echo.
                Err(e) => {
                    defmt::warn!("console: UART read failed: {}", e);
                    continue;
                }
            }
            let after_cr = core::mem::replace(&mut self.after_cr, byte[0] == b'\r');
            match byte[0] {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    Self::put(b"\r\n");
                    // Only printable ASCII is kept, so this is UTF-8.
                    return core::str::from_utf8(&buf[..len]).ok();
                }
                BACKSPACE | DELETE if len > 0 => {
                    len -= 1;
                    Self::put(b"\x08 \x08");
                }
                c @ 0x20..=0x7E if len < buf.len() => {
                    buf[len] = c;
                    len += 1;
                    Self::put(&[c]);
                }
                _ => {}
            }
        }
    }
}

/// One printed line: cut at [`LINE_LEN`] bytes, then CR LF.
struct Line {
    bytes: [u8; LINE_LEN + 3],
    len: usize,
    cut: bool,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: [0; LINE_LEN + 3],
            len: 0,
            cut: false,
        }
    }
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    fn terminated(&mut self) -> &[u8] {
        let mut end = self.len;
        if self.cut {
            self.bytes[end] = b'~';
            end += 1;
        }
        self.bytes[end..end + 2].copy_from_slice(b"\r\n");
        &self.bytes[..end + 2]
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = LINE_LEN - self.len;
        let mut take = s.len().min(room);
        // Cut on a character boundary, so the line stays UTF-8.
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.cut = true;
            return Err(core::fmt::Error);
        }
        Ok(())
    }
}
