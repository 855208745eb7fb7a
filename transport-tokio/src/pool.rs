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
/// by every connection of the process and held only while in use.
#[derive(Default)]
pub(crate) struct Buffers {
    pools: Mutex<HashMap<usize, StoragePool>>,
}

/// Buffers of one size kept for reuse.
const MAX_IDLE_FRAME_BUFFERS: usize = 64;

impl Buffers {
    fn pool(&self, len: usize) -> StoragePool {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(len)
            .or_insert_with(|| StoragePool::new(len, MAX_IDLE_FRAME_BUFFERS))
            .clone()
    }

    pub(crate) fn take(&self, len: usize) -> Box<[u8]> {
        self.pool(len).take()
    }

    pub(crate) fn put(&self, buf: Box<[u8]>) {
        self.pool(buf.len()).put(buf);
    }
}

/// The process's frame buffers.
pub(crate) fn frame_buffers() -> &'static Buffers {
    static BUFFERS: OnceLock<Buffers> = OnceLock::new();
    BUFFERS.get_or_init(Buffers::default)
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
                .is_some_and(|b| b.len() == 100)
        );
    }
}
