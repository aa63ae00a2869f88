//! Flush-to-zero for subnormal floats on the CPU threads that run the kernels.
//!
//! Attention weights of masked keys are about 1e-38 (see [`crate::attention::MASKED`] and the
//! masked softmax), and in the backward their products with small gradients are subnormal
//! (below 1.18e-38). Intel cores take a microcode assist on every floating-point operation that
//! produces or reads a subnormal: on the demo's 2-core Xeon (Sapphire Rapids) the value
//! gradient of causal attention (`probsᵀ · dout`, `[16, 80, 160] x [16, 160, 32]`) took 9.4 ms
//! against 0.15 ms with normal numbers, and a whole training step about twice as long as it
//! needs to. AMD cores handle subnormals at nearly full speed, which is why the same run was
//! fast on one machine and slow on another.
//!
//! With flush-to-zero (results that would be subnormal become ±0) and denormals-are-zero
//! (subnormal inputs read as ±0), values below 1.18e-38 are zero, far under f32 resolution
//! next to the values they are added to; bf16 has the same exponent range. PyTorch offers the
//! same switch (`torch.set_flush_denormal(True)`). The setting is per thread: call
//! [`flush_denormals_on_this_thread`] on every thread that runs tensor kernels (the binaries do
//! it for the main thread, the rayon pool and the trainer's rank threads).

/// Sets flush-to-zero and denormals-are-zero for the calling thread's floating-point unit
/// (x86 / x86-64: MXCSR FTZ and DAZ; aarch64: FPCR.FZ). Returns false where the target has
/// no such switch (nothing is changed there).
pub fn flush_denormals_on_this_thread() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        /// MXCSR bit 15 (flush to zero) and bit 6 (denormals are zero).
        const FTZ_DAZ: u32 = 0x8040;
        let mut csr: u32 = 0;
        // SAFETY: SSE (stmxcsr / ldmxcsr) is part of every x86-64 target and of the x86
        // targets std is built for; the two bits only change how subnormal numbers are treated.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr as *mut u32, options(nostack, preserves_flags));
            csr |= FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr as *const u32, options(nostack, preserves_flags, readonly));
        }
        true
    }
    #[cfg(target_arch = "aarch64")]
    {
        /// FPCR bit 24 (FZ: flush subnormal inputs and outputs to zero).
        const FZ: u64 = 1 << 24;
        let mut fpcr: u64;
        // SAFETY: reading and writing FPCR is allowed at EL0; only the FZ bit is changed.
        unsafe {
            std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
            fpcr |= FZ;
            std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
        }
        true
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnormal_products_become_zero() {
        // On a fresh thread, so the test thread's own setting stays as it was.
        let (before, after) = std::thread::spawn(|| {
            let tiny = std::hint::black_box(1.6e-38_f32);
            let half = std::hint::black_box(0.5_f32);
            // black_box orders the product before the switch (the compiler may otherwise move
            // plain float arithmetic across it).
            let before = std::hint::black_box(tiny * half);
            let supported = flush_denormals_on_this_thread();
            let after = std::hint::black_box(tiny) * std::hint::black_box(half);
            // The smallest normal number times 2 stays what it is: only subnormals are flushed.
            let normal = std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(2.0_f32);
            (before, supported.then_some((after, normal)))
        })
        .join()
        .unwrap();
        assert!(
            before > 0.0 && before < f32::MIN_POSITIVE,
            "{before} is subnormal"
        );
        if let Some((after, normal)) = after {
            assert_eq!(after, 0.0);
            assert_eq!(normal, 2.0 * f32::MIN_POSITIVE);
        }
    }
}
