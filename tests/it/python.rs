//! A Python with pinned third-party tools the tests check wxauth against: `prometheus_client`
//! (Prometheus's own exposition parser) and `PyJWT` (what other services verify tokens with).
//!
//! The virtual environment is made once, at `<CARGO_TARGET_TMPDIR>/pyenv`, and reused by every
//! later test and run; a marker file names the pinned versions it holds, so changing a pin makes a
//! new one. A lock file keeps concurrent test processes from installing over each other. Failing
//! to install is a test failure with pip's output, never a skip.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The packages installed, pinned.
const REQUIREMENTS: [&str; 2] = ["prometheus_client==0.26.0", "PyJWT==2.15.1"];

/// The virtual environment's `python`, with `REQUIREMENTS` installed.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install).clone()
}

/// Runs `script` with the virtual environment's python, `input` on its stdin, and returns its
/// stdout; a non-zero exit fails the test with its stderr.
pub fn run_python(script: &str, input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}\ninput:\n{input}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn install() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let venv = root.join("pyenv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("wxauth-requirements.txt");
    let wanted = REQUIREMENTS.join("\n");
    // Held until this function returns: another process finds the finished environment.
    let lock = File::create(root.join("pyenv.lock")).unwrap();
    lock.lock().unwrap();
    let installed = std::fs::read_to_string(&marker).is_ok_and(|text| text == wanted);
    if installed && python.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv), "python3 -m venv");
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--no-input", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
        "pip install",
    );
    std::fs::write(&marker, &wanted).unwrap();
    python
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{what}: cannot start: {error} (is python3 installed?)"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
