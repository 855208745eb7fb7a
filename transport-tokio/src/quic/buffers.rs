//! Frame-assembly buffers shared by every connection of an endpoint: a connection holds
//! one only while a frame is partly received, so a quiet connection holds none.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::pool::StoragePool;

/// Buffers kept for reuse per size.
const MAX_IDLE: usize = 64;

#[derive(Default)]
pub(crate) struct Buffers {
    pools: Mutex<HashMap<usize, StoragePool>>,
}

impl Buffers {
    fn pool(&self, len: usize) -> StoragePool {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pools
            .entry(len)
            .or_insert_with(|| StoragePool::new(len, MAX_IDLE))
            .clone()
    }

    pub(crate) fn take(&self, len: usize) -> Box<[u8]> {
        self.pool(len).take()
    }

    pub(crate) fn put(&self, buf: Box<[u8]>) {
        self.pool(buf.len()).put(buf);
    }
}
