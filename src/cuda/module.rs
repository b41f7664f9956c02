//! The kernels build.rs compiled: one fatbin per `kernels/*.cu` file (cubins
//! for sm_80/86/89/90 and PTX for newer chips), embedded in the crate.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Whether this build has the CUDA kernels (nvcc was found at build time).
pub fn kernels_built() -> bool {
    !generated::FATBINS.is_empty()
}

/// The embedded fatbins: kernel file name (`"recurrence"`, ...), fatbin,
/// and the entry points the file declares.
pub fn fatbins() -> &'static [(&'static str, &'static [u8], &'static [&'static str])] {
    generated::FATBINS
}

/// The nvcc that compiled the kernels, if any.
pub fn nvcc() -> Option<&'static str> {
    generated::NVCC
}

/// The cuobjdump beside that nvcc, if there is one (for the static checks
/// of the compiled kernels).
pub fn cuobjdump() -> Option<&'static str> {
    generated::CUOBJDUMP
}

/// ptxas's `-v` report for every kernel and arch: registers, stack, spills.
pub fn ptxas_report() -> &'static str {
    generated::PTXAS_REPORT
}

/// Lines of the ptxas report that show spilled registers.
pub fn spills() -> Vec<String> {
    let mut current = String::new();
    let mut found = Vec::new();
    for line in ptxas_report().lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.replace('\'', "");
        }
        let spilled = ["bytes spill stores", "bytes spill loads"].iter().any(|what| {
            line.split(',')
                .filter(|part| part.contains(what))
                .any(|part| part.trim().split(' ').next() != Some("0"))
        });
        if spilled {
            found.push(format!("{current}: {}", line.trim()));
        }
    }
    found
}
