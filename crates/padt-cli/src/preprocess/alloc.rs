//! Allocator tuning for `padt-preprocess`.
//!
//! A source run parses the whole input on the main thread, then builds records on rayon's
//! threads and writes shards on writer threads. glibc gives each new thread its own malloc
//! arena, so the memory the parsed input frees while records are built (COCO polygons) stays
//! in the main thread's arena and the records grow other arenas: on a 100k-annotation COCO
//! file that was 177 MB peak RSS against 135 MB with one arena, at the same speed
//! (bench/preprocess.md). The threads allocate little at the same moment, so one arena costs
//! no measurable contention.

/// Limits glibc's malloc to one arena (`mallopt(M_ARENA_MAX, 1)`). Call it before other
/// threads start; a no-op on other C libraries and platforms.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        /// `M_ARENA_MAX` of glibc's `<malloc.h>`.
        const M_ARENA_MAX: c_int = -8;
        // SAFETY: `mallopt` is glibc's documented tuning call; it only changes how later
        // allocations pick an arena and is safe to call at any time.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
