//! The stand-in is a CUDA driver only for the commands `scripts/emulated-gpu`
//! runs. cargo puts `target/*/deps` (and the target directory) on
//! `LD_LIBRARY_PATH` for every test, bench and example it runs, so a stand-in
//! named `libcuda.so` there would silently replace the real driver: tests
//! would pass on the emulation on a GPU machine, benches would record
//! emulated "GPU" times. This test runs with exactly that search path.

use std::path::Path;

/// A string every build of the stand-in holds (its refusals start with it).
const MARKER: &[u8] = b"rnn-kernels CUDA stand-in";

#[test]
fn no_stand_in_is_on_the_library_path_cargo_gives_its_commands() {
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    // The directory scripts/emulated-gpu puts first, on purpose.
    let chosen = std::env::var("RNN_EMU_DRIVER_DIR").ok();
    let mut found = Vec::new();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        if chosen.as_deref() == Some(dir) {
            continue;
        }
        for name in ["libcuda.so", "libcuda.so.1"] {
            let file = Path::new(dir).join(name);
            let Ok(bytes) = std::fs::read(&file) else { continue };
            if bytes.windows(MARKER.len()).any(|w| w == MARKER) {
                found.push(file.display().to_string());
            }
        }
    }
    assert!(
        found.is_empty(),
        "the CUDA driver stand-in is on cargo's library path as {found:?}: every `cargo test` and \
         `cargo bench` would load it instead of the real driver. Delete those files (a build from \
         before the stand-in was renamed librnnk_cuda_stand_in.so) and use scripts/emulated-gpu."
    );
}
