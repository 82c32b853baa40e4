//! The BPF filesystem: mounting it on /sys/fs/bpf when the pin root lies
//! below and it is missing, and telling whether a path lies on one.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// bpffs magic number.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure the pin root is on a bpffs: mounts bpffs on /sys/fs/bpf when
/// the root lies below it and it is not mounted yet, then creates the root.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let sysfs_bpf = Path::new("/sys/fs/bpf");
    if root.starts_with(sysfs_bpf) && !is_bpffs(sysfs_bpf) {
        // SAFETY: all strings are valid C strings; data may be NULL.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "mounting bpffs on /sys/fs/bpf",
                std::io::Error::last_os_error(),
            ));
        }
    }
    std::fs::create_dir_all(root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    if !is_bpffs(root) {
        return Err(Error::Precondition(format!(
            "pin root {} is not on a bpf filesystem",
            root.display()
        )));
    }
    Ok(())
}

/// Whether `p` lies on a bpffs.
pub fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st is writable.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
