//! Memory a burst of work freed, given back to the system. A pass over
//! thousands of users allocates megabytes on a blocking thread; glibc keeps
//! what is freed in that thread's arena, so without this the agent's RSS
//! would stay at its peak for the rest of the VM's life.

/// Two malloc arenas instead of eight per core: the agent's threads are
/// mostly idle, and every extra arena keeps its own freed memory. Called
/// first thing in the daemon, before any thread starts.
pub fn few_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's tunables; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free memory at the top of every malloc arena to the kernel.
pub fn give_back_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
