//! The node identity in internal flash: the last 128 KiB sector of bank 2 (0x081E_0000),
//! kept out of the program by memory.x.

use embassy_stm32::flash::{self, Async, Flash};
use embassy_stm32::gpio::{Flex, Pull, Speed};
use transport_embedded::IdentityStore;
use transport_embedded::identity::RECORD_LEN;

/// The sector's offset from the start of flash (0x0800_0000).
const OFFSET: u32 = 0x1E_0000;
const SECTOR_LEN: u32 = 128 * 1024;

const _: () = assert!(OFFSET + SECTOR_LEN == flash::FLASH_SIZE as u32);
const _: () = assert!(RECORD_LEN.is_multiple_of(flash::WRITE_SIZE));
const _: () = assert!(RECORD_LEN as u32 <= SECTOR_LEN);

/// Why the identity could not be read or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum StoreError {
    Flash(flash::Error),
    /// What was read back after programming differs from the record.
    Verify,
}

/// The identity sector.
pub struct FlashStore {
    flash: Flash<'static, Async>,
    /// PA12 held low (see [`FlashStore::new`]).
    _pa12: Flex<'static>,
}

impl core::fmt::Debug for FlashStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlashStore")
            .field("offset", &OFFSET)
            .finish_non_exhaustive()
    }
}

impl FlashStore {
    /// `pa12` is driven low with its pull-down: on silicon before revision 3, reads of
    /// bank 2 are corrupted while PA12 toggles (errata ES0206 2.2.11), and the HAL refuses
    /// such reads unless the pin is held that way. The board does not use PA12 (USB D+).
    pub fn new(flash: Flash<'static, Async>, mut pa12: Flex<'static>) -> Self {
        pa12.set_low();
        pa12.set_as_input_output_pull(Speed::Low, Pull::Down);
        Self { flash, _pa12: pa12 }
    }

    /// Erases the sector: the node forgets its identity and pairs again at next boot.
    ///
    /// Erasing 128 KiB takes one to two seconds. It is interrupt-driven and the program
    /// runs from bank 1 meanwhile, so the executor keeps going; a fetch from bank 2 would
    /// stall the CPU until the erase ends.
    pub async fn forget(&mut self) -> Result<(), StoreError> {
        self.flash
            .erase(OFFSET, OFFSET + SECTOR_LEN)
            .await
            .map_err(StoreError::Flash)
    }
}

impl IdentityStore for FlashStore {
    type Error = StoreError;

    /// An erased sector reads as all `0xFF`, which the record code takes as blank.
    async fn read(&mut self, record: &mut [u8; RECORD_LEN]) -> Result<usize, StoreError> {
        self.flash
            .blocking_read(OFFSET, record)
            .map_err(StoreError::Flash)?;
        Ok(RECORD_LEN)
    }

    async fn write(&mut self, record: &[u8; RECORD_LEN]) -> Result<(), StoreError> {
        self.forget().await?;
        self.flash
            .write(OFFSET, record)
            .await
            .map_err(StoreError::Flash)?;
        // Compared in chunks: a second record-sized buffer would sit on the stack.
        let mut chunk = [0u8; 64];
        for (at, expected) in (OFFSET..)
            .step_by(chunk.len())
            .zip(record.chunks(chunk.len()))
        {
            let read = &mut chunk[..expected.len()];
            self.flash
                .blocking_read(at, read)
                .map_err(StoreError::Flash)?;
            if read != expected {
                return Err(StoreError::Verify);
            }
        }
        Ok(())
    }
}
