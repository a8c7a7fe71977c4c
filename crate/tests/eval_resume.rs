//! `anoscope eval` killed with SIGKILL at seeded pseudo-random points and restarted with
//! `--resume` until it completes leaves exactly the files of an uninterrupted run, byte for
//! byte: records, maps, scores.csv, metrics.{json,csv,md}, overlays. The only exceptions are
//! what describes the invocations rather than the results: `timings/` (per-image times; the
//! same files must exist) and, in `run.json`, the times and the new / resumed counts
//! ([`PER_INVOCATION`]).
//!
//! Dataset: two categories built from tests/data/tiny_mvtec/bottle with every test image (and
//! mask) also under a second stem, 14 images each; the tiny WinCLIP model. Per mode (fast:
//! resumed per image; batch: per category) an uninterrupted run into `a/`, then runs into `b/`
//! killed at points drawn from a seeded generator ([`Kill`]: while images are left, a few
//! records after the run starts or early; then a while after the last record, until
//! [`REPORT_KILLS`] runs were killed there), then one run to the end.
mod common;

use common::repo;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Keys of `run.json` that describe one invocation (when, how long, how many images it scored
/// or took over), top level and per category; they legitimately differ after a resume.
const PER_INVOCATION: [&str; 13] = [
    "started_unix",
    "finished_unix",
    "seconds",
    "new_images",
    "resumed_images",
    "n_new",
    "n_resumed",
    "text_seconds",
    "references_seconds",
    "scoring_seconds",
    "images_per_second",
    "metrics_seconds",
    "overlay_seconds",
];

/// Runs killed after their last record (metrics, overlays, run.json), per mode.
const REPORT_KILLS: usize = 2;

fn copy_dir(src: &Path, dst: &Path, also: impl Fn(&str) -> Option<String> + Copy) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst.join(&name), also);
        } else {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
            if let Some(second) = also(&name) {
                std::fs::copy(e.path(), dst.join(second)).unwrap();
            }
        }
    }
}

/// Categories `bottle` and `bottle_two`: tiny_mvtec's bottle with each test image and mask also
/// as `<stem>b` (train/good unchanged).
fn dataset(root: &Path) -> PathBuf {
    let src = repo().join("tests/data/tiny_mvtec/bottle");
    for cat in ["bottle", "bottle_two"] {
        let dst = root.join(cat);
        copy_dir(&src.join("train"), &dst.join("train"), |_| None);
        for sub in ["test", "ground_truth"] {
            copy_dir(&src.join(sub), &dst.join(sub), |name| {
                let (stem, rest) = name.split_at(3);
                Some(format!("{stem}b{rest}"))
            });
        }
    }
    root.to_path_buf()
}

fn command(dataset: &Path, out: &Path, mode: &str, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anoscope"));
    c.arg("eval")
        .arg("--model")
        .arg(repo().join("tests/fixtures/winclip_tiny"))
        .arg("--dataset")
        .arg(dataset)
        .arg("--out")
        .arg(out)
        .args(["--mode", mode]);
    if resume {
        c.arg("--resume");
    }
    c
}

fn run_to_end(dataset: &Path, out: &Path, mode: &str, resume: bool) -> String {
    let o = command(dataset, out, mode, resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "eval --mode {mode} failed: {stderr}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Finished records (not the temporary files of atomic writes).
fn count_records(out: &Path) -> usize {
    fn walk(d: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(d) else { return 0 };
        rd.map(|e| e.unwrap().path())
            .map(|p| {
                if p.is_dir() {
                    walk(&p)
                } else {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    usize::from(name.ends_with(".json") && !name.starts_with('.'))
                }
            })
            .sum()
    }
    walk(&out.join("records"))
}

/// Every file under `root` by its `/`-separated relative path.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `run.json` without the [`PER_INVOCATION`] keys.
fn run_json_without_times(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    let strip = |o: &mut serde_json::Map<String, Value>| {
        for k in PER_INVOCATION {
            o.remove(k);
        }
    };
    strip(v.as_object_mut().unwrap());
    for c in v["categories"].as_object_mut().unwrap().values_mut() {
        strip(c.as_object_mut().unwrap());
    }
    v
}

/// xorshift64*: the kill points, reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n
    }
}

/// When a run is killed.
#[derive(Debug)]
enum Kill {
    /// Once this many records more than at its start exist (while scoring; once all exist, as
    /// `AfterAll(0)`).
    AfterRecords(usize),
    /// This long after all records exist (the report: metrics, overlays, run.json).
    AfterAll(Duration),
    /// This long after it starts (early: loading the model, scanning, the first run.json).
    After(Duration),
}

impl Kill {
    /// While images are left to score: mostly a few records on, sometimes early; then a while
    /// after the last record.
    fn draw(rng: &mut Rng, scoring: bool) -> Self {
        let ms = |rng: &mut Rng, max: u64| Duration::from_micros(rng.below(max * 1000));
        match (scoring, rng.below(5)) {
            (true, 0) => Kill::After(ms(rng, 40)),
            (true, _) => Kill::AfterRecords(1 + rng.below(6) as usize),
            (false, _) => Kill::AfterAll(ms(rng, 20)),
        }
    }
}

/// Runs eval into `out` and SIGKILLs it at `kill` (unless it finishes first): whether it was
/// killed, and the records there when it stopped.
fn run_killed(dataset: &Path, out: &Path, mode: &str, kill: &Kill, total: usize) -> (bool, usize) {
    let log = out.with_extension("stderr.txt");
    let before = count_records(out);
    let mut child = command(dataset, out, mode, true)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut all_since = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(status.success(), "eval --mode {mode} failed before {kill:?}: {stderr}");
            return (false, count_records(out));
        }
        let records = count_records(out);
        if records == total && all_since.is_none() {
            all_since = Some(Instant::now());
        }
        let due = match kill {
            Kill::AfterRecords(k) => records >= (before + k).min(total),
            Kill::AfterAll(d) => all_since.is_some_and(|t| t.elapsed() >= *d),
            Kill::After(d) => start.elapsed() >= *d,
        };
        if due {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return (true, count_records(out));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn killed_and_resumed_equals_uninterrupted(mode: &str, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let data = dataset(&tmp.path().join("data"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let stdout = run_to_end(&data, &a, mode, false);
    let total = count_records(&a);
    assert_eq!(total, 28);
    assert!(stdout.contains("28 images: 28 new, 0 resumed"), "{stdout}");

    let mut rng = Rng(seed);
    let mut kills = Vec::new();
    let mut records = 0;
    // Until two runs were killed after their last record (in the report).
    while kills.iter().filter(|(_, killed, n)| *killed && *n == total).count() < REPORT_KILLS {
        assert!(kills.len() < 40, "{mode}: the report phase is never hit: {kills:?}");
        let kill = Kill::draw(&mut rng, records < total);
        let (killed, n) = run_killed(&data, &b, mode, &kill, total);
        records = n;
        kills.push((kill, killed, n));
    }
    let stdout = run_to_end(&data, &b, mode, true);
    let summary = format!("{mode}: kills (point, killed, records after) {kills:?}; last run: {stdout}");
    assert!(
        kills.iter().any(|k| k.1 && k.2 > 0 && k.2 < total),
        "no kill between the first and the last record: {summary}"
    );

    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "the same files (no leftovers): {summary}"
    );
    let mut compared = 0;
    for (name, bytes) in &fa {
        if name == "run.json" {
            let (ra, rb) = (run_json_without_times(bytes), run_json_without_times(&fb[name]));
            assert_eq!(ra, rb, "run.json beyond the per-invocation keys: {summary}");
            assert_eq!(rb["status"], "complete");
        } else if name.starts_with("timings/") {
            let t: Value = serde_json::from_slice(&fb[name]).unwrap();
            assert!(t["ms"].as_f64().unwrap() >= 0.0, "{name}");
        } else {
            assert!(*bytes == fb[name], "{name} differs after kills and resumes: {summary}");
            compared += 1;
        }
    }
    // records + maps, 6 overlays per category, scores.csv and the three metrics files.
    assert_eq!(compared, 2 * total + 2 * 6 + 4, "{summary}");
}

#[test]
fn fast_mode_killed_and_resumed_equals_uninterrupted() {
    killed_and_resumed_equals_uninterrupted("fast", 0x5eed_0001);
}

#[test]
fn batch_mode_killed_and_resumed_equals_uninterrupted() {
    killed_and_resumed_equals_uninterrupted("batch", 0x5eed_0002);
}
