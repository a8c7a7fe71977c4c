//! Natively on Linux: the adapter probe with libwayland's complaint about `XDG_RUNTIME_DIR`
//! taken off stderr.
//!
//! Why: wgpu-hal's Vulkan instance always enables the window-system surface extensions
//! (`VK_KHR_wayland_surface`, `_xcb_`, `_xlib_`); wgpu offers no compute-only instance, and
//! wgpu-hal's `Instance::init_with_callback` / `from_raw` forbid dropping extensions it wants.
//! Mesa's implicit device-select layer (`VK_LAYER_MESA_device_select`, loaded into every Vulkan
//! instance where Mesa is installed) sees `VK_KHR_wayland_surface` and, on each
//! `vkEnumeratePhysicalDevices` call, asks the Wayland compositor which GPU it runs on:
//! `wl_display_connect(NULL)`. Without `XDG_RUNTIME_DIR` (ssh, containers, CI) libwayland
//! prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` to fd 2 — twice,
//! since the adapter enumeration calls it twice. Nothing is wrong (with no compositor the layer
//! orders the adapters by its other rules), so the line must not reach the user; the C library
//! writes to fd 2 directly, so the only place to stop it is fd 2 itself.
//!
//! So, only while the instance is created and the adapters are enumerated, fd 2 points at an
//! anonymous in-memory file; afterwards fd 2 is restored and everything written meanwhile is
//! written to stderr again except those libwayland lines. Probes are serialised (fd 2 is per
//! process), and fd 2 is restored on unwinding too. Setting `NODEVICE_SELECT=1` instead would
//! mutate the process environment and switch the layer off for everyone (`DRI_PRIME`,
//! `MESA_VK_DEVICE_SELECT` included).
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

/// One probe at a time: each saves and restores the process's fd 2.
static PROBE: Mutex<()> = Mutex::new(());

/// Whether `line` is libwayland's note that it cannot find the compositor's socket (the wording
/// of libwayland ≥ 1.20, and of older releases).
fn is_wayland_noise(line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    line == "error: XDG_RUNTIME_DIR is invalid or not set in the environment."
        || line == "error: XDG_RUNTIME_DIR not set in the environment."
}

/// fd 2 redirected to an anonymous file until [`Capture::finish`] (or drop) restores it.
struct Capture {
    /// The original fd 2; `None` once restored.
    saved: Option<OwnedFd>,
    file: File,
    /// Lines dropped by the last restore.
    hidden: usize,
}

impl Capture {
    /// Redirects fd 2; `None` (nothing changed) when that is not possible.
    fn start() -> Option<Self> {
        let file = File::from(rustix::fs::memfd_create("anoscope-gpu-probe", rustix::fs::MemfdFlags::CLOEXEC).ok()?);
        let saved = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
        rustix::stdio::dup2_stderr(&file).ok()?;
        Some(Self {
            saved: Some(saved),
            file,
            hidden: 0,
        })
    }

    /// Restores fd 2 and writes what was captured to it, less libwayland's noise.
    fn restore(&mut self) {
        let Some(saved) = self.saved.take() else { return };
        if rustix::stdio::dup2_stderr(&saved).is_err() {
            return;
        }
        let mut captured = Vec::new();
        if self.file.seek(SeekFrom::Start(0)).is_err() || self.file.read_to_end(&mut captured).is_err() {
            return;
        }
        let mut kept = Vec::with_capacity(captured.len());
        for line in captured.split_inclusive(|&b| b == b'\n') {
            if is_wayland_noise(line) {
                self.hidden += 1;
            } else {
                kept.extend_from_slice(line);
            }
        }
        let _ = std::io::stderr().write_all(&kept);
    }

    /// Restores fd 2; returns how many lines were left out.
    fn finish(mut self) -> usize {
        self.restore();
        self.hidden
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Runs `probe` (instance creation and adapter enumeration) with libwayland's `XDG_RUNTIME_DIR`
/// lines kept off stderr (see the module docs). Returns its result and how many lines were
/// left out.
pub(crate) fn probe<T>(probe: impl FnOnce() -> T) -> (T, usize) {
    let _one = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    match Capture::start() {
        Some(capture) => {
            let out = probe();
            (out, capture.finish())
        }
        None => (probe(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::is_wayland_noise;

    #[test]
    fn only_libwaylands_line_is_noise() {
        assert!(is_wayland_noise(
            b"error: XDG_RUNTIME_DIR is invalid or not set in the environment.\n"
        ));
        assert!(is_wayland_noise(
            b"error: XDG_RUNTIME_DIR not set in the environment.\n"
        ));
        assert!(!is_wayland_noise(b"error: something else\n"));
        assert!(!is_wayland_noise(
            b"ERROR: [Loader Message] Code 0 : vkCreateInstance failed\n"
        ));
    }
}
