//! The `anoscope` command-line tool: parses the arguments and runs the subcommand (all in
//! `cli/`; the work itself is in the `anoscope` library).
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(cli::run());
}
