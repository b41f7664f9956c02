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
