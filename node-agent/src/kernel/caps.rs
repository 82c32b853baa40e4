//! The process's capabilities: reading the effective set and dropping to
//! the set the agent keeps after setup (capset). Which capabilities a hook
//! needs and which are kept are pure tables in [`crate::hooks`].

use crate::error::{Error, Result};

/// Effective capability set of this process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Reduces the calling thread's effective and permitted capabilities to
/// `keep` (those it holds) and clears the inheritable set. Threads created
/// afterwards inherit the reduced set, so call it before starting any.
/// Returns the new effective set.
pub fn drop_capabilities(keep: &[u32]) -> Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let held = effective();
    let mask = keep.iter().fold(0u64, |m, &c| m | (1u64 << c)) & held;
    let data = [
        Data {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        Data {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a valid header and two data records we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::io(
            "dropping capabilities",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(effective())
}
