//! Validation of staging and target paths: they must lie under `--kubelet-root` or an
//! `--allowed-path-prefix`, with no `..`, and no symlink may lead them elsewhere.

use std::path::{Component, Path, PathBuf};

use crate::error::{CsiError, Result};
use crate::rpc::require;

/// The directories under which the node plugin may mount.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    roots: Vec<PathBuf>,
}

impl PathPolicy {
    /// Roots are canonicalised when they exist (so a symlinked root still matches).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        let roots = roots
            .into_iter()
            .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
            .collect();
        PathPolicy { roots }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Validate `path` (named `field` in errors) and return its resolved form.
    ///
    /// The deepest existing ancestor is canonicalised, the missing tail is appended, and
    /// the result must lie strictly under a root. A leaf that is a symlink is refused.
    pub fn check(&self, field: &str, path: &str) -> Result<PathBuf> {
        let invalid = |why: &str| CsiError::InvalidArgument(format!("{field} `{path}`: {why}"));
        require(path, field)?;
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(invalid("must be an absolute path"));
        }
        if p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(invalid("must not contain `..`"));
        }
        if let Ok(meta) = std::fs::symlink_metadata(p)
            && meta.file_type().is_symlink()
        {
            return Err(invalid("must not be a symlink"));
        }
        let resolved = resolve(p).map_err(|e| invalid(&format!("cannot resolve: {e}")))?;
        if !self
            .roots
            .iter()
            .any(|root| resolved.starts_with(root) && resolved != *root)
        {
            return Err(invalid(&format!(
                "resolves to {} which is outside the allowed roots {:?}",
                resolved.display(),
                self.roots
            )));
        }
        Ok(resolved)
    }
}

/// Canonicalise the deepest existing ancestor of `p` and append the rest.
fn resolve(p: &Path) -> std::io::Result<PathBuf> {
    let mut tail = Vec::new();
    let mut cur = p;
    loop {
        if std::fs::symlink_metadata(cur).is_ok() {
            let mut out = std::fs::canonicalize(cur)?;
            out.extend(tail.iter().rev());
            return Ok(out);
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_owned());
                cur = parent;
            }
            _ => return Ok(p.to_path_buf()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods/uid/volumes")).unwrap();
        let policy = PathPolicy::new([root]);
        (dir, policy)
    }

    fn code(r: Result<PathBuf>) -> tonic::Code {
        r.unwrap_err().code()
    }

    #[test]
    fn accepts_paths_under_root_even_if_missing() {
        let (dir, policy) = setup();
        let root = std::fs::canonicalize(dir.path().join("kubelet")).unwrap();
        let p = root.join("pods/uid/volumes/pv/mount");
        assert_eq!(policy.check("target_path", p.to_str().unwrap()).unwrap(), p);
        let deep = root.join("plugins/a/b/globalmount");
        assert_eq!(
            policy.check("staging", deep.to_str().unwrap()).unwrap(),
            deep
        );
    }

    #[test]
    fn refuses_empty_relative_and_dotdot() {
        let (dir, policy) = setup();
        assert_eq!(code(policy.check("t", "")), tonic::Code::InvalidArgument);
        assert_eq!(
            code(policy.check("t", "pods/x")),
            tonic::Code::InvalidArgument
        );
        let escape = format!("{}/kubelet/pods/../../etc", dir.path().display());
        assert_eq!(
            code(policy.check("t", &escape)),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn refuses_outside_and_the_root_itself() {
        let (dir, policy) = setup();
        assert_eq!(
            code(policy.check("t", "/etc/passwd")),
            tonic::Code::InvalidArgument
        );
        let root = dir.path().join("kubelet");
        assert_eq!(
            code(policy.check("t", root.to_str().unwrap())),
            tonic::Code::InvalidArgument
        );
        // A sibling sharing the root as a string prefix is outside.
        let sibling = dir.path().join("kubelet-evil/x");
        std::fs::create_dir_all(&sibling).unwrap();
        assert_eq!(
            code(policy.check("t", sibling.to_str().unwrap())),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn refuses_symlink_escapes() {
        let (dir, policy) = setup();
        let root = dir.path().join("kubelet");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // A symlinked parent directory pointing outside.
        symlink(&outside, root.join("pods/uid/volumes/link")).unwrap();
        let via_parent = root.join("pods/uid/volumes/link/mount");
        assert_eq!(
            code(policy.check("t", via_parent.to_str().unwrap())),
            tonic::Code::InvalidArgument
        );
        // A leaf symlink, even pointing inside, is refused.
        symlink(root.join("pods"), root.join("pods/uid/leaf")).unwrap();
        let leaf = root.join("pods/uid/leaf");
        assert_eq!(
            code(policy.check("t", leaf.to_str().unwrap())),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn symlinked_root_still_matches() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("pods")).unwrap();
        symlink(&real, dir.path().join("alias")).unwrap();
        let policy = PathPolicy::new([dir.path().join("alias")]);
        let p = format!("{}/alias/pods/t", dir.path().display());
        let resolved = policy.check("t", &p).unwrap();
        assert!(resolved.starts_with(std::fs::canonicalize(&real).unwrap()));
    }
}
