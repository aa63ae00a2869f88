//! Process-wide CPU settings of the binaries that run models.

use padt_model::denormals::flush_denormals_on_this_thread;

/// Flush-to-zero for subnormal floats ([`padt_model::denormals`]) on the calling (main) thread
/// and on every thread of rayon's global pool, which runs the CPU backend's matrix products;
/// the trainer sets it on its rank threads itself. Call first thing in `main`, before
/// anything uses rayon. Returns a warning to print when the pool already existed (its
/// threads then keep subnormals: correct, only slower on some CPUs).
pub fn init_compute_threads() -> Option<String> {
    flush_denormals_on_this_thread();
    rayon::ThreadPoolBuilder::new()
        .start_handler(|_| {
            flush_denormals_on_this_thread();
        })
        .build_global()
        .err()
        .map(|e| format!("rayon's thread pool was already set up ({e}): subnormal floats are not flushed on its threads"))
}
