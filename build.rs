//! Names the git commit the binary is built from, for `wxauth --version` and the
//! `wxauth_build_info` metric: `WXAUTH_COMMIT` is the commit's first 12 hex digits, or `unknown`
//! when this is not a git checkout (a tarball, a vendored copy) or git cannot say. It never fails
//! the build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit().unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WXAUTH_COMMIT={commit}");
}

/// The checkout's commit, from git, and the files git keeps it in watched, so that a commit or a
/// checkout builds again. Only for a checkout of this crate itself (its own `.git`, a directory
/// or, in a worktree, a file): a copy inside another repository must not take that one's commit.
fn commit() -> Option<String> {
    let root = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if !Path::new(&root).join(".git").exists() {
        return None;
    }
    let git = |arguments: &[&str]| -> Option<String> {
        let output = Command::new("git").current_dir(&root).args(arguments).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        output.status.success().then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    if commit.len() != 12 || !commit.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    // HEAD names the branch; the branch's ref (loose, or packed) names the commit. A ref that is
    // only packed gets a loose file at the next commit: its directory is watched instead.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [Some("HEAD"), Some("packed-refs"), branch.as_deref()];
    for name in watched.into_iter().flatten() {
        let Some(file) = git(&["rev-parse", "--path-format=absolute", "--git-path", name]) else {
            continue;
        };
        let file = Path::new(&file);
        let is_branch = Some(name) == branch.as_deref();
        let watch = if file.exists() || !is_branch { Some(file) } else { file.parent() };
        if let Some(watch) = watch.filter(|path| path.exists()) {
            println!("cargo:rerun-if-changed={}", watch.display());
        }
    }
    Some(commit)
}
