//! Closing a connection with a reason the peer can read.

use std::time::Duration;

use protocol_core::frame::MIN_MAX_FRAME;
use protocol_core::pairing::{
    Abort, PAIRING_MAX_FRAME, PairingError, PairingMessage, encode_pairing,
};
use protocol_core::wire::{ErrorCode, ErrorFrame, Message, encode_message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a closing side keeps reading (and discarding) after its last frame, so that
/// the peer's unread bytes do not turn the close into a reset that could destroy the
/// frame before the peer reads it.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// One frame holding `Error { code, reason }`, within the smallest frame limit any peer
/// may announce (the reason is cut to fit).
pub(crate) fn error_frame(code: ErrorCode, reason: &str) -> Vec<u8> {
    let mut reason = reason;
    let mut out = vec![0u8; MIN_MAX_FRAME as usize + 4];
    loop {
        let msg = Message::Error(ErrorFrame { code, reason });
        match encode_message(&msg, MIN_MAX_FRAME, &mut out) {
            Ok(n) => {
                out.truncate(n);
                return out;
            }
            Err(_) if !reason.is_empty() => {
                let mut cut = reason.len() / 2;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason = &reason[..cut];
            }
            Err(_) => return Vec::new(),
        }
    }
}

/// Writes `last` (whole frames), closes the write side (a TLS close_notify, then the TCP
/// FIN) and lingers: reads and discards what the peer still sends until it closes, for
/// at most a second.
pub(crate) async fn close_after<IO>(io: &mut IO, last: &[u8])
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let sent = async {
        io.write_all(last).await?;
        io.flush().await?;
        io.shutdown().await
    };
    if sent.await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Sends `Error { code, reason }` as the connection's last frame and closes it.
pub async fn refuse<IO>(mut io: IO, code: ErrorCode, reason: &str)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    close_after(&mut io, &error_frame(code, reason)).await;
}

/// Refuses a pairing connection the pairing protocol's way: an `Abort` carrying the
/// typed error (e.g. `RateLimited { retry_after_ms }`), then the close.
pub async fn refuse_pairing<IO>(mut io: IO, error: PairingError)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    close_after(&mut io, &abort_frame(error)).await;
}

/// A pairing `Abort` frame carrying `error`.
pub(crate) fn abort_frame(error: PairingError) -> Vec<u8> {
    let mut frame = vec![0u8; PAIRING_MAX_FRAME as usize + 4];
    let n = encode_pairing(
        &PairingMessage::Abort(Abort { error }),
        PAIRING_MAX_FRAME,
        &mut frame,
    )
    .unwrap_or(0);
    frame.truncate(n);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol_core::wire::decode_message;

    #[test]
    fn a_long_reason_is_cut_to_fit_every_peer() {
        let long = "é".repeat(400);
        let frame = error_frame(ErrorCode::Overloaded, &long);
        assert!(frame.len() <= MIN_MAX_FRAME as usize + 4);
        match decode_message(&frame[4..]) {
            Ok(Message::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Overloaded);
                assert!(!e.reason.is_empty() && long.starts_with(e.reason));
            }
            other => panic!("{other:?}"),
        }
    }
}
