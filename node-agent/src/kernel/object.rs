//! Any BPF object by its pin (pin and get), a program's id and run
//! figures, and turning on the kernel's run-time statistics.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Pins an fd at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: fd is open, c is a valid C string.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if rc < 0 {
        return Err(Error::kernel(
            format!("pinning {}", path.display()),
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        ));
    }
    Ok(())
}

/// Opens a pinned object (program, map or link).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(Error::kernel(
            format!("opening pin {}", path.display()),
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        ));
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kernel figures of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgFigures {
    /// Program id.
    pub id: u32,
    /// Runs since BPF stats were enabled.
    pub run_cnt: u64,
    /// Total run time in ns.
    pub run_time_ns: u64,
    /// Runs skipped by recursion protection.
    pub recursion_misses: u64,
    /// The kernel's tag: a hash of the program's instructions with map
    /// references blanked, the same for every load of the same code.
    pub tag: [u8; 8],
}

/// Reads id and run statistics of a program.
pub fn prog_figures(fd: BorrowedFd<'_>) -> Result<ProgFigures> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len are valid for writes of their sizes.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        return Err(Error::kernel(
            "reading program info",
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        ));
    }
    Ok(ProgFigures {
        id: info.id,
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
        tag: info.tag,
    })
}

/// Turns on run-time statistics for as long as the returned fd is open.
pub fn enable_stats() -> Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(Error::kernel(
            "enabling BPF stats",
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        ));
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Ids of the maps a program uses, as the kernel holds them.
pub fn prog_map_ids(fd: BorrowedFd<'_>) -> Result<Vec<u32>> {
    let get = |info: &mut libbpf_sys::bpf_prog_info| {
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info and len are valid for writes of their sizes; the
        // map_ids buffer (when set) holds nr_map_ids u32s.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), info, &mut len) };
        if rc < 0 {
            return Err(Error::kernel(
                "reading program map ids",
                libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
            ));
        }
        Ok(())
    };
    let mut info = libbpf_sys::bpf_prog_info::default();
    get(&mut info)?;
    let n = info.nr_map_ids;
    let mut ids = vec![0u32; n as usize];
    if n == 0 {
        return Ok(ids);
    }
    let mut info = libbpf_sys::bpf_prog_info {
        nr_map_ids: n,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    get(&mut info)?;
    ids.truncate(info.nr_map_ids.min(n) as usize);
    Ok(ids)
}

/// Id of the map pinned at `pin`.
pub fn pinned_map_id(pin: &Path) -> Result<u32> {
    use libbpf_rs::MapCore;
    let m = libbpf_rs::MapHandle::from_pinned_path(pin)
        .map_err(|e| Error::kernel(format!("opening {}", pin.display()), e))?;
    m.info()
        .map(|i| i.info.id)
        .map_err(|e| Error::kernel(format!("reading map info of {}", pin.display()), e))
}
