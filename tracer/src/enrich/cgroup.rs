//! cgroup ids (kernfs node ids, which are the cgroup directories' inode numbers) to paths.

use std::{
    fs,
    ops::ControlFlow,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::{kernel::mountinfo, text::escape};

/// Directories visited at most when searching a hierarchy, so that a huge cgroup tree cannot
/// stall the tracer.
const MAX_DIRS: usize = 100_000;

/// Mount point of the hierarchy that holds `controller` (cgroup v1), or of the unified
/// hierarchy (cgroup v2) when `controller` is `None` or lives there.
pub fn hierarchy_root(controller: Option<&str>) -> Option<PathBuf> {
    let mut unified = None;
    for mount in mountinfo::read() {
        let point = || PathBuf::from(std::ffi::OsStr::from_bytes(&mount.mount_point));
        match (mount.fstype.as_str(), controller) {
            ("cgroup", Some(c)) if mount.super_options.split(',').any(|o| o == c) => {
                return Some(point());
            }
            ("cgroup2", _) if unified.is_none() => unified = Some(point()),
            _ => {}
        }
    }
    unified
}

/// Visits the cgroups below `root` breadth-first (at most [`MAX_DIRS`]) with their ids and
/// paths (relative to `root`, starting with `/`), until `visit` says to stop.
pub fn walk(root: &Path, mut visit: impl FnMut(u64, &str) -> ControlFlow<()>) {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > MAX_DIRS {
            log::debug!("more than {MAX_DIRS} cgroups below {}", root.display());
            return;
        }
        if let (Ok(meta), Ok(relative)) = (fs::metadata(&dir), dir.strip_prefix(root)) {
            if visit(meta.ino(), &format!("/{}", relative.display())).is_break() {
                return;
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
}

/// The path (relative to the hierarchy root, starting with `/`) of the cgroup whose id is
/// `id`, searching breadth-first below `root`; escaped for printing, since whoever may make
/// cgroups (a delegated subtree, a container) names them.
pub fn path_of(root: &Path, id: u64) -> Option<String> {
    if id == 0 {
        return None;
    }
    let mut found = None;
    walk(root, |ino, path| {
        if ino != id {
            return ControlFlow::Continue(());
        }
        found = Some(escape(path.as_bytes()));
        ControlFlow::Break(())
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_cgroup_by_inode() {
        let Some(root) = hierarchy_root(None) else {
            panic!("no cgroup2 hierarchy on this machine");
        };
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line");
        let dir = root.join(relative.trim_start_matches('/'));
        let id = fs::metadata(&dir).unwrap().ino();
        assert_eq!(path_of(&root, id).as_deref(), Some(relative));
        assert_eq!(path_of(&root, 0), None);
    }
}
