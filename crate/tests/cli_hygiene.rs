//! What the CLI prints besides its results, and one spelling of inputs: a successful run prints
//! no `error:` line (the GPU probe is quiet; `-v` says in one line what it found), and images
//! are positional for every subcommand (`embed --image IMG` still works, with a warning).
mod common;

use common::{fixtures, repo, run, run_without};

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

#[test]
fn embed_takes_the_image_positionally_and_image_is_a_deprecated_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("hf_tiny");
    let img = repo().join("tests/images/bottle_broken_large_000_64.png");
    let (m, i) = (model.to_str().unwrap(), img.to_str().unwrap());
    let out = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let embed = |out: &str, input: &[&str]| {
        let mut args = vec!["embed", "--model", m, "--backend", "cpu", "--surgery-layers", "2"];
        args.extend(input);
        args.extend(["--out", out]);
        run(&args)
    };

    let positional = out("positional.safetensors");
    let (ok, _, stderr) = embed(&positional, &[i]);
    assert!(ok, "{stderr}");
    assert!(lines_starting(&stderr, "warning:").is_empty(), "{stderr}");
    let flag = out("flag.safetensors");
    let (ok, _, stderr) = embed(&flag, &["--image", i]);
    assert!(ok, "{stderr}");
    assert_eq!(
        lines_starting(&stderr, "warning:"),
        ["warning: --image is deprecated; pass the image path positionally: anoscope embed … IMG"],
        "{stderr}"
    );
    assert_eq!(std::fs::read(&positional).unwrap(), std::fs::read(&flag).unwrap());

    // Both spellings at once, or an image with --pixels, is a usage error naming both.
    let both = out("both.safetensors");
    for (input, names) in [
        (["--image", i, i], ["--image", "[IMG]"]),
        (["--pixels", i, i], ["--pixels", "[IMG]"]),
    ] {
        let (ok, _, stderr) = embed(&both, &input);
        assert!(!ok, "{input:?}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains("cannot be used with"), "{stderr}");
        assert!(names.iter().all(|n| stderr.contains(n)), "{stderr}");
    }
    assert!(!tmp.path().join("both.safetensors").exists());
}
