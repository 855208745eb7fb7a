//! Where the pump's buffers come from: the driver's lender. A server lends from pools,
//! so a quiet connection holds none; a microcontroller lends the same static buffers
//! every time ([`Slots`]).

/// What a lent buffer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lend {
    /// A session's storage (replay buffer and inbox): `Config::storage_len()` bytes,
    /// held while the session holds data.
    Storage,
    /// Assembly of a frame split across reads, or a refused frame kept aside: the
    /// frame's declared payload length (checked against the machine's `max_frame`
    /// before it is asked for), held while that frame is partly received or refused.
    Frame,
    /// Frames waiting to be written: a batch of up to 64 KiB, or one frame's length if
    /// longer (at most the machine's `transmit_len()`), held while frames wait.
    Transmit,
}

/// Lends buffers to the pump and takes them back.
pub trait Lender {
    type Buf: AsRef<[u8]> + AsMut<[u8]>;

    /// A buffer of at least `len` bytes for `what`, or `None` if there is none now (the
    /// pump then waits: what needed it is not consumed).
    fn take(&mut self, what: Lend, len: usize) -> Option<Self::Buf>;

    /// A buffer comes back.
    fn put(&mut self, what: Lend, buf: Self::Buf);
}

/// A lender of one fixed buffer per purpose, handed out and taken back again: static
/// buffers on a microcontroller. A buffer shorter than asked for is not handed out.
#[derive(Debug)]
pub struct Slots<B> {
    storage: Option<B>,
    frame: Option<B>,
    transmit: Option<B>,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Slots<B> {
    /// `storage` may be `None` when the session holds its storage for good.
    pub fn new(storage: Option<B>, frame: B, transmit: B) -> Self {
        Slots {
            storage,
            frame: Some(frame),
            transmit: Some(transmit),
        }
    }

    fn slot(&mut self, what: Lend) -> &mut Option<B> {
        match what {
            Lend::Storage => &mut self.storage,
            Lend::Frame => &mut self.frame,
            Lend::Transmit => &mut self.transmit,
        }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Lender for Slots<B> {
    type Buf = B;

    fn take(&mut self, what: Lend, len: usize) -> Option<B> {
        let slot = self.slot(what);
        if slot.as_ref().is_some_and(|b| b.as_ref().len() >= len) {
            slot.take()
        } else {
            None
        }
    }

    fn put(&mut self, what: Lend, buf: B) {
        *self.slot(what) = Some(buf);
    }
}

/// A lender that allocates each buffer and drops those that come back: for hosts,
/// tests and examples (a server pools them instead).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Alloc;

#[cfg(feature = "alloc")]
impl Lender for Alloc {
    type Buf = alloc::vec::Vec<u8>;

    fn take(&mut self, _: Lend, len: usize) -> Option<Self::Buf> {
        Some(alloc::vec![0; len])
    }

    fn put(&mut self, _: Lend, _: Self::Buf) {}
}
