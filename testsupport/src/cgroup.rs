//! cgroup2 directories of a test's own: found under the host's cgroup2
//! mount, created with their parents, processes moved in by pid, removed
//! deepest first when dropped. It attaches nothing and never touches a
//! cgroup it did not create.

use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted (the first cgroup2 line of /proc/mounts).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_else(|e| panic!("read /proc/mounts: {e}"));
    cgroup2_in(&mounts).unwrap_or_else(|| panic!("no cgroup2 mount in /proc/mounts"))
}

/// The cgroup2 mount point named in a /proc/mounts text.
fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// A cgroup at `<cgroup2 mount>/<relative>`, created with its parents; on
/// drop it and every parent it created are removed, deepest first (a
/// cgroup that still has processes stays: drop them first).
pub struct Cgroup {
    top: PathBuf,
    pub path: PathBuf,
}

impl Cgroup {
    /// `relative`'s first component is the test's own top directory.
    pub fn new(relative: &Path) -> Self {
        let root = cgroup2_mount();
        let first = relative
            .components()
            .next()
            .unwrap_or_else(|| panic!("an empty cgroup path"));
        let top = root.join(first);
        let path = root.join(relative);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Self { top, path }
    }

    /// Moves process `pid` into this cgroup.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} to {}: {e}", self.path.display()));
    }
}

/// `leaf` and its parents up to and including `top`, deepest first.
fn removal_order(top: &Path, leaf: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![leaf.to_path_buf()];
    while let Some(parent) = dirs.last().and_then(|d| d.parent()) {
        if !parent.starts_with(top) {
            break;
        }
        dirs.push(parent.to_path_buf());
    }
    dirs
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in removal_order(&self.top, &self.path) {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_line_names_the_mount() {
        let m = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(m), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn removal_goes_deepest_first_and_stops_at_the_top() {
        let got = removal_order(Path::new("/cg/t"), Path::new("/cg/t/a/b"));
        assert_eq!(
            got,
            [
                PathBuf::from("/cg/t/a/b"),
                PathBuf::from("/cg/t/a"),
                PathBuf::from("/cg/t")
            ]
        );
        assert_eq!(
            removal_order(Path::new("/cg/t"), Path::new("/cg/t")),
            [PathBuf::from("/cg/t")]
        );
    }
}
