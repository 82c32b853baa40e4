//! Plain syscalls the agent needs beside BPF: the kernel release (uname),
//! the monotonic clock the BPF side stamps events with, interface indexes
//! and entering a network namespace (the bench binary).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::error::{Error, Result};

/// The running kernel's release (`uname -r`), empty when uname fails.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is writable.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Kernel monotonic time in ns (the clock of `bpf_ktime_get_ns`, which
/// stamps every event).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Index of a network interface of this node (the caller's namespace).
pub(super) fn ifindex(name: &str) -> Result<i32> {
    let c =
        CString::new(name).map_err(|_| Error::Invalid("interface name has a NUL byte".into()))?;
    // SAFETY: c is a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::Precondition(format!(
            "no interface named {name:?} on this node"
        )));
    }
    Ok(idx as i32)
}

/// Moves the calling thread into the network namespace open at `ns` (a
/// `/run/netns/<name>` file); other threads stay where they are.
pub fn enter_netns(ns: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: setns on an fd the caller keeps open; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::io("setns", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens `path` read-only without following a symlink in its last
/// component and without blocking (a FIFO or a device answers at once
/// instead of holding the caller): the object-file read checks what it
/// opened (type, size, where it really is) through the returned handle.
pub fn open_no_follow(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}
