//! The identity in a file standing in for a flash sector: read whole, replaced whole
//! (written beside it, synced, renamed over it), so a crash leaves the old record or the
//! new one.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use transport_embedded::IdentityStore;
use transport_embedded::identity::RECORD_LEN;

#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl IdentityStore for FileStore {
    type Error = io::Error;

    async fn read(&mut self, record: &mut [u8; RECORD_LEN]) -> Result<usize, io::Error> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let n = bytes.len().min(RECORD_LEN);
                record[..n].copy_from_slice(&bytes[..n]);
                // A file longer than a record is not one: hand over a length that says so.
                Ok(if bytes.len() > RECORD_LEN { 1 } else { n })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn write(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), io::Error> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(record)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
