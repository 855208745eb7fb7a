//! One RNG for everything a node draws: the caller's `rand_core` 0.10 RNG (the
//! generation protocol-core and its PAKE use) serves embedded-tls 0.19, which asks for
//! the `rand_core` 0.6 traits.

use rand_core::CryptoRng;

/// A `rand_core` 0.10 cryptographic RNG seen through the `rand_core` 0.6 traits.
pub struct RngBridge<'r, R: ?Sized>(pub &'r mut R);

impl<R: ?Sized> core::fmt::Debug for RngBridge<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RngBridge")
    }
}

impl<R: CryptoRng + ?Sized> rand_core_06::RngCore for RngBridge<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        // A `CryptoRng` of 0.10 is infallible (`TryRng<Error = Infallible>`).
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> rand_core_06::CryptoRng for RngBridge<'_, R> {}
