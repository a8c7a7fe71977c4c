//! What the CLI prints besides its results: a successful run prints no `error:` line (the GPU
//! probe is quiet; `-v` says in one line what it found).
mod common;

use common::{fixtures, repo, run_without};

/// Lines of `stderr` that start with `prefix`.
fn lines_starting<'a>(stderr: &'a str, prefix: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn gpu_probe_is_quiet_without_xdg_runtime_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf_tiny");
    let img = repo().join("tests/images/bottle_broken_large_000_64.png");
    let out = tmp.path().join("out");
    let args = [
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "auto",
        "--out",
        out.to_str().unwrap(),
        img.to_str().unwrap(),
    ];
    // Without XDG_RUNTIME_DIR (and no Wayland socket named), libwayland cannot find a compositor
    // and says so on stderr when anything asks it to connect.
    let unset = ["XDG_RUNTIME_DIR", "WAYLAND_DISPLAY"];
    let (ok, stdout, stderr) = run_without(&args, &unset);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("bottle_broken_large_000_64\t"), "{stdout}");
    assert_eq!(lines_starting(&stderr, "error:"), Vec::<&str>::new(), "{stderr}");
    assert_eq!(lines_starting(&stderr, "encoder: ").len(), 1, "{stderr}");
    assert!(lines_starting(&stderr, "gpu probe: ").is_empty(), "{stderr}");

    let verbose: Vec<&str> = ["-v"].iter().chain(&args).copied().collect();
    let (ok, _, stderr) = run_without(&verbose, &unset);
    assert!(ok, "{stderr}");
    assert_eq!(lines_starting(&stderr, "error:"), Vec::<&str>::new(), "{stderr}");
    assert_eq!(lines_starting(&stderr, "gpu probe: ").len(), 1, "{stderr}");
    assert_eq!(lines_starting(&stderr, "encoder: ").len(), 1, "{stderr}");
}
