//! The console: standard output, and standard input for a pairing invitation typed at
//! first boot.

use std::io::{BufRead, Write};

use node_firmware::Console;

#[derive(Debug, Default)]
pub struct StdConsole;

impl Console for StdConsole {
    fn say(&mut self, line: std::fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    async fn read_line<'b>(&mut self, buf: &'b mut [u8]) -> Option<&'b str> {
        // Blocks the executor, at first boot only, before the node connects.
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']);
        let n = line.len().min(buf.len());
        buf[..n].copy_from_slice(&line.as_bytes()[..n]);
        std::str::from_utf8(&buf[..n]).ok()
    }
}
