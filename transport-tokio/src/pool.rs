//! Session storage lent from a pool and taken back when a session no longer holds data,
//! and the pump's lender over it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use protocol_core::pump::{Lend, Lender};

/// A pool of equally sized session storage buffers, shared by every connection a
/// driver serves. A session holds a buffer only while it holds messages (`SESSION.md`,
/// "Memory"): the pump lends one before a frame or the application's turn and takes it
/// back before it waits, so an idle connection holds none.
#[derive(Clone)]
pub struct StoragePool {
    inner: Arc<Inner>,
}

struct Inner {
    len: usize,
    max_idle: usize,
    free: Mutex<Vec<Box<[u8]>>>,
}

impl StoragePool {
    /// A pool of buffers of `len` bytes (at least the sessions'
    /// [`Config::storage_len`](protocol_core::session::Config::storage_len)) that keeps at
    /// most `max_idle` returned buffers for reuse and frees the rest.
    pub fn new(len: usize, max_idle: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                len,
                max_idle,
                free: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A pool of buffers of `len` bytes that keeps at most `idle_bytes` of returned
    /// buffers for reuse (at least one buffer): what a burst leaves behind is bounded in
    /// bytes whatever the sessions' storage size.
    pub fn with_idle_bytes(len: usize, idle_bytes: usize) -> Self {
        Self::new(len, (idle_bytes / len.max(1)).max(1))
    }

    /// Bytes of each buffer.
    pub fn buffer_len(&self) -> usize {
        self.inner.len
    }

    /// A buffer: a returned one if there is one, else a new one.
    pub fn take(&self) -> Box<[u8]> {
        let reused = self.free().pop();
        reused.unwrap_or_else(|| vec![0; self.inner.len].into_boxed_slice())
    }

    /// Gives a buffer back (freed if the pool already keeps `max_idle`, or if it is not
    /// of this pool's size).
    pub fn put(&self, buf: Box<[u8]>) {
        if buf.len() != self.inner.len {
            return;
        }
        let mut free = self.free();
        if free.len() < self.inner.max_idle {
            free.push(buf);
        }
    }

    /// Buffers kept for reuse.
    pub fn idle(&self) -> usize {
        self.free().len()
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        // A panic while holding the lock cannot leave the list inconsistent.
        self.inner
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for StoragePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoragePool")
            .field("buffer_len", &self.inner.len)
            .field("max_idle", &self.inner.max_idle)
            .field("idle", &self.idle())
            .finish()
    }
}

/// Frame-sized buffers (assembly of a split frame, a batch of frames to write), shared
/// by every connection of the process and held only while in use. Lengths are rounded up
/// to size classes (eight per power of two, so at most an eighth is wasted) and the
/// buffers kept for reuse are bounded in bytes: frames of every length a peer may declare
/// neither grow one list per length nor keep a burst's worth of memory.
pub(crate) struct Buffers {
    budget: usize,
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    by_class: HashMap<usize, Vec<Box<[u8]>>>,
    bytes: usize,
}

/// Bytes of frame buffers the process keeps for reuse: a few connections' worth of the
/// largest frames, enough for the buffers of a busy connection to go back and forth.
const IDLE_FRAME_BYTES: usize = 8 << 20;
/// The smallest size class: below a page, rounding costs nothing that matters.
const MIN_CLASS: usize = 4096;

/// The size class `len` is rounded up to.
fn size_class(len: usize) -> usize {
    if len <= MIN_CLASS {
        return MIN_CLASS;
    }
    let octave = 1usize << (usize::BITS - 1 - len.leading_zeros());
    let step = octave / 8;
    len.div_ceil(step).saturating_mul(step)
}

impl Buffers {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Self {
            budget,
            free: Mutex::new(Free::default()),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        // A panic while holding the lock cannot leave the lists inconsistent.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of at least `len` bytes (its size class).
    pub(crate) fn take(&self, len: usize) -> Box<[u8]> {
        let class = size_class(len);
        let reused = {
            let mut free = self.free();
            let buf = free.by_class.get_mut(&class).and_then(Vec::pop);
            if buf.is_some() {
                free.bytes -= class;
            }
            buf
        };
        reused.unwrap_or_else(|| vec![0; class].into_boxed_slice())
    }

    /// Keeps `buf` for reuse if it is of a size class and the budget has room; frees it
    /// otherwise.
    pub(crate) fn put(&self, buf: Box<[u8]>) {
        let len = buf.len();
        if size_class(len) != len {
            return;
        }
        let mut free = self.free();
        if free.bytes + len > self.budget {
            return;
        }
        free.bytes += len;
        free.by_class.entry(len).or_default().push(buf);
    }

    /// Bytes kept for reuse.
    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.free().bytes
    }
}

/// The process's frame buffers.
pub(crate) fn frame_buffers() -> &'static Buffers {
    static BUFFERS: OnceLock<Buffers> = OnceLock::new();
    BUFFERS.get_or_init(|| Buffers::with_budget(IDLE_FRAME_BYTES))
}

/// The pump's buffers on a server: session storage from a [`StoragePool`], frame
/// assembly and transmit buffers from the process's frame buffers. The pump holds each
/// only while it is used, so a quiet connection holds none.
#[derive(Debug, Clone)]
pub struct PoolLender {
    storage: Option<StoragePool>,
}

impl PoolLender {
    /// Lends session storage from `storage`.
    pub fn new(storage: StoragePool) -> Self {
        Self {
            storage: Some(storage),
        }
    }

    /// Frame buffers only, for machines without storage (pairing runs).
    pub fn frames_only() -> Self {
        Self { storage: None }
    }
}

impl Lender for PoolLender {
    type Buf = Box<[u8]>;

    fn take(&mut self, what: Lend, len: usize) -> Option<Box<[u8]>> {
        match what {
            // A pool of smaller buffers cannot serve this session: nothing rather than a
            // buffer the session would refuse.
            Lend::Storage => self
                .storage
                .as_ref()
                .filter(|pool| pool.buffer_len() >= len)
                .map(StoragePool::take),
            Lend::Frame | Lend::Transmit => Some(frame_buffers().take(len)),
        }
    }

    fn put(&mut self, what: Lend, buf: Box<[u8]>) {
        match (what, &self.storage) {
            (Lend::Storage, Some(pool)) => pool.put(buf),
            (Lend::Storage, None) => {}
            (Lend::Frame | Lend::Transmit, _) => frame_buffers().put(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_max_idle_buffers_of_its_size() {
        let pool = StoragePool::new(64, 1);
        let (a, b) = (pool.take(), pool.take());
        assert_eq!(a.len(), 64);
        pool.put(a);
        pool.put(b);
        pool.put(vec![0; 8].into_boxed_slice());
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn the_lender_refuses_storage_smaller_than_asked() {
        let mut lender = PoolLender::new(StoragePool::new(64, 1));
        assert!(lender.take(Lend::Storage, 65).is_none());
        let buf = lender.take(Lend::Storage, 64).map(|b| b.len());
        assert_eq!(buf, Some(64));
        assert!(PoolLender::frames_only().take(Lend::Storage, 1).is_none());
        assert!(
            lender
                .take(Lend::Frame, 100)
                .is_some_and(|b| b.len() >= 100)
        );
    }

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        assert_eq!(size_class(0), MIN_CLASS);
        assert_eq!(size_class(MIN_CLASS), MIN_CLASS);
        assert_eq!(size_class(MIN_CLASS + 1), MIN_CLASS + 512);
        assert_eq!(size_class(64 << 10), 64 << 10);
        assert_eq!(size_class((512 << 10) + 4), 576 << 10);
        for len in (1..2_000_000).step_by(997) {
            let class = size_class(len);
            assert!(
                class >= len && size_class(class) == class,
                "{len} -> {class}"
            );
            assert!(class <= MIN_CLASS.max(len + len / 8), "{len} -> {class}");
        }
        assert_eq!(size_class(usize::MAX), usize::MAX, "saturates");
    }

    #[test]
    fn frame_buffers_kept_are_bounded_in_bytes() {
        let buffers = Buffers::with_budget(3 * MIN_CLASS);
        let taken: Vec<_> = (0..5).map(|_| buffers.take(10)).collect();
        assert!(taken.iter().all(|b| b.len() == MIN_CLASS));
        taken.into_iter().for_each(|b| buffers.put(b));
        assert_eq!(buffers.idle_bytes(), 3 * MIN_CLASS);
        // Reused from its class; a length of no class is not kept.
        let again = buffers.take(MIN_CLASS - 1);
        assert_eq!(buffers.idle_bytes(), 2 * MIN_CLASS);
        buffers.put(vec![0; 5000].into_boxed_slice());
        assert_eq!(buffers.idle_bytes(), 2 * MIN_CLASS);
        buffers.put(again);
        let big = buffers.take(3 * MIN_CLASS);
        buffers.put(big);
        assert_eq!(buffers.idle_bytes(), 3 * MIN_CLASS, "over budget: freed");
    }

    #[test]
    fn storage_kept_is_bounded_in_bytes() {
        let pool = StoragePool::with_idle_bytes(100, 250);
        let bufs: Vec<_> = (0..4).map(|_| pool.take()).collect();
        bufs.into_iter().for_each(|b| pool.put(b));
        assert_eq!(pool.idle(), 2);
        assert_eq!(StoragePool::with_idle_bytes(100, 10).idle(), 0);
    }
}
