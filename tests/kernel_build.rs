//! What build.rs produced: kernels that compile for every target arch
//! without spilling registers, and the entry points the planner launches.

use rnn_kernels::cuda::launch::plan::PROJECTION_KERNEL;
use rnn_kernels::cuda::launch::Pass;
use rnn_kernels::cuda::module;
use rnn_kernels::CellKind;

/// Every kernel a plan can launch (inference and training).
fn planned_kernels() -> Vec<&'static str> {
    let mut names: Vec<&str> = [Pass::Forward, Pass::Backward]
        .into_iter()
        .flat_map(|pass| CellKind::ALL.into_iter().map(move |cell| pass.kernel(cell)))
        .collect();
    names.extend([
        PROJECTION_KERNEL,
        "rnn_gemm_f32",
        "rnn_gather_states_f32",
        "rnn_permute_f32",
        "rnn_dropout_f32",
    ]);
    names
}

#[test]
fn builds_that_require_nvcc_have_kernels() {
    // CI builds with RNN_KERNELS_REQUIRE_NVCC=1 (build.rs fails without
    // nvcc); this catches a build script that silently skipped them anyway.
    if std::env::var("RNN_KERNELS_REQUIRE_NVCC").is_ok_and(|v| v == "1") {
        assert!(
            module::kernels_built(),
            "RNN_KERNELS_REQUIRE_NVCC=1 but no kernels are embedded"
        );
        assert!(
            module::cuobjdump().is_some(),
            "RNN_KERNELS_REQUIRE_NVCC=1 but there is no cuobjdump beside nvcc for the static checks"
        );
    }
}

#[test]
#[cfg_attr(
    not(rnn_kernels_built),
    ignore = "this build has no kernels: nvcc was not found (scripts/install-nvcc; RNN_KERNELS_REQUIRE_NVCC=1 makes that a build error)"
)]
fn no_shipped_kernel_spills_registers() {
    assert!(
        module::kernels_built(),
        "built with nvcc, yet no kernels are embedded"
    );
    let report = module::ptxas_report();
    for kernel in planned_kernels() {
        for arch in ["sm_80", "sm_86", "sm_89", "sm_90"] {
            let entry = format!("Compiling entry function '{kernel}' for '{arch}'");
            assert!(report.contains(&entry), "ptxas report has no {entry}:\n{report}");
        }
    }
    let spills = module::spills();
    assert!(
        spills.is_empty(),
        "kernels spill registers:\n{}",
        spills.join("\n")
    );
}

#[test]
fn every_planned_kernel_exists_in_the_fatbins_and_the_emulation() {
    let emulated: Vec<&str> = rnn_kernels_emu::kernel_names().collect();
    let built: Vec<&str> = module::fatbins()
        .iter()
        .flat_map(|(_, _, names)| names.iter().copied())
        .collect();
    for kernel in planned_kernels() {
        assert!(
            emulated.contains(&kernel),
            "{kernel} is not emulated: {emulated:?}"
        );
        if module::kernels_built() {
            assert!(
                built.contains(&kernel),
                "{kernel} is not in the fatbins: {built:?}"
            );
        }
    }
}

/// The GPU handles move to the threads that use them; the device is shared.
#[test]
fn gpu_types_are_send_and_the_device_is_shared() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync>() {}
    send::<rnn_kernels::cuda::CudaRnn>();
    send::<rnn_kernels::cuda::CudaTrainingState>();
    shared::<std::sync::Arc<rnn_kernels::cuda::CudaDevice>>();
}

/// Runs the stand-alone cuobjdump on a fatbin with `args`.
fn cuobjdump(fatbin: &[u8], name: &str, args: &[&str]) -> String {
    // Tests run side by side: each call its own file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tool = module::cuobjdump().expect("cfg(rnn_kernels_cuobjdump) says there is one");
    let path = std::env::temp_dir().join(format!("rnn-kernels-{}-{call}-{name}.fatbin", std::process::id()));
    std::fs::write(&path, fatbin).unwrap();
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "cuobjdump {args:?} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `(function, its lines)` of a `cuobjdump -sass` or `--dump-resource-usage`
/// listing, per cubin (arch) in the order cuobjdump prints them.
fn by_function(listing: &str, marker: &str) -> Vec<(String, Vec<String>)> {
    by_arch_and_function(listing, marker)
        .into_iter()
        .map(|(_, function, lines)| (function, lines))
        .collect()
}

/// `(arch, function, its lines)` of a cuobjdump listing whose functions
/// start with `marker` (the arch: the last `arch = ` line before them).
fn by_arch_and_function(listing: &str, marker: &str) -> Vec<(String, String, Vec<String>)> {
    let mut arch = String::new();
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in listing.lines() {
        if let Some(a) = line.trim().strip_prefix("arch = ") {
            arch = a.to_string();
        } else if let Some(rest) = line.trim().strip_prefix(marker) {
            out.push((
                arch.clone(),
                rest.trim().trim_end_matches(':').to_string(),
                Vec::new(),
            ));
        } else if let Some((_, _, lines)) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// What the real compiler made of every shipped kernel, for every arch:
/// no local memory (no LDL/STL, no stack frame), registers within what a
/// 512-thread block (the launch bounds the planner launches) can hold, and
/// in the recurrence kernels no non-coherent (`.CONSTANT`, `ld.global.nc`)
/// loads at all: the h-exchange buffer is written by other CTAs during the
/// launch, and a non-coherent load there could read a stale value. A
/// non-coherent load added on purpose must first be shown not to read it.
#[test]
#[cfg_attr(
    not(rnn_kernels_cuobjdump),
    ignore = "no cuobjdump beside nvcc (scripts/install-nvcc installs one)"
)]
fn compiled_kernels_use_no_local_memory_nor_stale_loads() {
    let most_registers = 65536 / rnn_kernels::cuda::launch::plan::MAX_THREADS;
    let (mut functions, mut disassembled) = (0, 0);
    for (file, fatbin, names) in module::fatbins() {
        let usage = cuobjdump(fatbin, file, &["--dump-resource-usage"]);
        for (function, lines) in by_function(&usage, "Function ") {
            let line = lines
                .iter()
                .find(|l| l.contains("REG:"))
                .unwrap_or_else(|| panic!("{function}: {lines:?}"));
            let field = |key: &str| -> usize {
                let v = line.split_whitespace().find_map(|f| f.strip_prefix(key)).unwrap();
                v.parse().unwrap()
            };
            assert!(
                names.contains(&function.as_str()),
                "{file}: unexpected function {function}"
            );
            assert_eq!(field("STACK:"), 0, "{file} {function}: a stack frame: {line}");
            assert_eq!(field("LOCAL:"), 0, "{file} {function}: local memory: {line}");
            assert!(
                field("REG:") <= most_registers,
                "{file} {function}: {line}, above {most_registers}"
            );
            functions += 1;
        }
        let sass = cuobjdump(fatbin, file, &["-sass"]);
        for (function, lines) in by_function(&sass, "Function : ") {
            assert!(
                names.contains(&function.as_str()),
                "{file}: unexpected function {function}"
            );
            disassembled += 1;
            for line in &lines {
                let op = line.split(';').next().unwrap_or("");
                assert!(
                    !op.contains(" LDL") && !op.contains(" STL"),
                    "{file} {function}: local memory access: {line}"
                );
                if file.starts_with("recurrence") {
                    assert!(
                        !op.contains(".CONSTANT"),
                        "{file} {function}: a non-coherent load: {line}"
                    );
                }
            }
        }
    }
    // Every kernel, for each of the four archs.
    let kernels: usize = module::fatbins().iter().map(|(_, _, names)| names.len()).sum();
    assert_eq!(functions, 4 * kernels, "resource usage of every kernel and arch");
    assert_eq!(disassembled, 4 * kernels, "SASS of every kernel and arch");
}

/// One `cuobjdump -sass` instruction: its address, opcode (the predicate
/// dropped) and operands; `None` for a line that is not an instruction.
fn instruction(line: &str) -> Option<(u64, &str, &str)> {
    let (address, text) = line.trim().strip_prefix("/*")?.split_once("*/")?;
    let address = u64::from_str_radix(address.trim(), 16).ok()?;
    let text = text.trim().trim_end_matches(|c| c != ';').trim_end_matches(';');
    let text = if text.starts_with('@') {
        text.split_once(' ')?.1.trim()
    } else {
        text
    };
    let (op, operands) = text.split_once(' ').unwrap_or((text, ""));
    (!op.is_empty() && op.starts_with(|c: char| c.is_ascii_uppercase())).then_some((
        address,
        op,
        operands.trim(),
    ))
}

/// The forward recurrence's machine code, as a reading of its SASS found it
/// should be (issue "the GPU path before its first GPU"), for every cell
/// and arch:
/// - shared memory is addressed as such (`LDS`/`STS`): no generic
///   `LD`/`ST`, whose space the hardware resolves at run time (the kernels
///   are specialised on where the weights and the exchange live);
/// - the weight fill is asynchronous (`LDGSTS`, cp.async), not one
///   dependent load and store per element;
/// - the per-step staging of other CTAs' `h` keeps several L2 loads in
///   flight (a run of at least 4 `LDG.E.STRONG.GPU` before their stores);
/// - no full `MEMBAR.SC` fence (the group barrier arrives with a release
///   and polls with acquire loads);
/// - on sm_90, the GPUs the reading was for, no subroutine call (the IEEE
///   division's slow path split the step's loads into dependent waves).
///   Older archs' code uses `CALL` for its own control flow, so it is not
///   checked there.
#[test]
#[cfg_attr(
    not(rnn_kernels_cuobjdump),
    ignore = "no cuobjdump beside nvcc (scripts/install-nvcc installs one)"
)]
fn forward_recurrence_machine_code_is_as_read() {
    let forward: Vec<&str> = CellKind::ALL
        .into_iter()
        .map(|c| Pass::Forward.kernel(c))
        .collect();
    let mut checked = 0;
    for (file, fatbin, _) in module::fatbins() {
        let sass = cuobjdump(fatbin, file, &["-sass"]);
        for (arch, function, lines) in by_arch_and_function(&sass, "Function : ") {
            if !forward.contains(&function.as_str()) {
                continue;
            }
            checked += 1;
            let code: Vec<(u64, &str, &str)> = lines.iter().filter_map(|l| instruction(l)).collect();
            let bad: Vec<String> = code
                .iter()
                .filter(|(_, op, _)| {
                    let base = op.split('.').next().unwrap();
                    base == "LD"
                        || base == "ST"
                        || op.starts_with("MEMBAR.SC")
                        || (arch == "sm_90" && base == "CALL")
                })
                .map(|(address, op, operands)| format!("{address:#x}: {op} {operands}"))
                .collect();
            assert!(
                bad.is_empty(),
                "{function} ({arch}): generic loads or stores, calls or full fences: {bad:#?}"
            );
            assert!(
                code.iter().any(|(_, op, _)| op.starts_with("LDGSTS")),
                "{function} ({arch}): the weight fill is not asynchronous (no LDGSTS)"
            );
            // Memory instructions in order; the longest run of L2 loads.
            let (mut run, mut longest) = (0, 0);
            for (_, op, _) in code.iter().filter(|(_, op, _)| {
                ["LDG", "LDS", "STG", "STS", "RED", "ATOM"]
                    .iter()
                    .any(|m| op.starts_with(m))
            }) {
                run = if *op == "LDG.E.STRONG.GPU" { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            assert!(
                longest >= 4,
                "{function} ({arch}): at most {longest} L2 loads of exchanged values in flight at once"
            );
        }
    }
    assert_eq!(
        checked,
        4 * forward.len(),
        "every forward recurrence kernel, each arch"
    );
}
