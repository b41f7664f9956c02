//! Every launch the planner makes, for many shapes on four devices (H200,
//! H100, A100, L4), checked against what the driver would refuse (shared
//! memory above the opt-in limit less the kernel's static size, threads
//! above 1,024 or the kernels' launch bounds, registers × threads above 64 K,
//! cooperative grids larger than what fits at once, grid.y/z above 65,535)
//! and for full coverage (every hidden unit and every projected output
//! belongs to a CTA that the grid launches).

use rnn_kernels::cuda::launch::plan::{forward_steps, KernelParams, Step, MAX_THREADS};
use rnn_kernels::cuda::launch::{plan_pass, DeviceLimits, Pass, RecurrencePlan, Strategy, WeightLayout};
use rnn_kernels::cuda::module;
use rnn_kernels::{CellKind, RnnConfig};

/// A device as the driver describes it.
struct Device {
    name: &'static str,
    sm_count: usize,
    /// The opt-in maximum of shared memory per block, and the kernels'
    /// static shared memory on this arch.
    opt_in: usize,
    static_smem: usize,
    smem_per_sm: usize,
    registers_per_sm: usize,
    threads_per_sm: usize,
    blocks_per_sm: usize,
}

const DEVICES: [Device; 4] = [
    Device {
        name: "H200",
        sm_count: 132,
        opt_in: 232_448,
        static_smem: 1024,
        smem_per_sm: 233_472,
        registers_per_sm: 65_536,
        threads_per_sm: 2048,
        blocks_per_sm: 32,
    },
    Device {
        name: "H100",
        sm_count: 132,
        opt_in: 232_448,
        static_smem: 1024,
        smem_per_sm: 233_472,
        registers_per_sm: 65_536,
        threads_per_sm: 2048,
        blocks_per_sm: 32,
    },
    Device {
        name: "A100",
        sm_count: 108,
        opt_in: 166_912,
        static_smem: 0,
        smem_per_sm: 167_936,
        registers_per_sm: 65_536,
        threads_per_sm: 2048,
        blocks_per_sm: 32,
    },
    Device {
        name: "L4",
        sm_count: 58,
        opt_in: 101_376,
        static_smem: 0,
        smem_per_sm: 102_400,
        registers_per_sm: 65_536,
        threads_per_sm: 1536,
        blocks_per_sm: 24,
    },
];

/// Registers per thread of `kernel`: ptxas's report for sm_90 when this
/// build compiled the kernels, else a conservative 128.
fn registers(kernel: &str) -> usize {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap();
    let cache = cache.get_or_insert_with(HashMap::new);
    *cache
        .entry(kernel.to_string())
        .or_insert_with(|| registers_from_report(kernel))
}

fn registers_from_report(kernel: &str) -> usize {
    let report = module::ptxas_report();
    let entry = format!("Compiling entry function '{kernel}' for 'sm_90'");
    report
        .find(&entry)
        .and_then(|at| {
            report[at..]
                .lines()
                .find(|l| l.contains("Used") && l.contains("registers"))
        })
        .and_then(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words.iter().position(|w| w.starts_with("registers"))?;
            words[i - 1].parse().ok()
        })
        .unwrap_or(128)
}

impl Device {
    fn limits(&self) -> DeviceLimits {
        DeviceLimits {
            sm_count: self.sm_count,
            max_smem_per_block: self.opt_in - self.static_smem,
            max_threads_per_block: 1024,
        }
    }

    /// cuOccupancyMaxActiveBlocksPerMultiprocessor, as the hardware limits it.
    fn occupancy(&self, kernel: &str, threads: usize, smem: usize) -> usize {
        let regs = registers(kernel) * threads.next_multiple_of(32);
        // Every block reserves 1 KiB of shared memory for the system.
        let by_smem = self.smem_per_sm / (smem + self.static_smem + 1024);
        (self.threads_per_sm / threads)
            .min(self.registers_per_sm / regs.max(1))
            .min(by_smem)
            .min(self.blocks_per_sm)
    }
}

fn configs() -> Vec<RnnConfig> {
    let mut configs = Vec::new();
    for &hidden in &[1, 17, 64, 100, 128, 257, 512, 625, 793, 1024] {
        for cell in CellKind::ALL {
            configs.push(RnnConfig::new(cell, 32, hidden));
        }
        if hidden > 2 {
            configs.push(RnnConfig {
                proj_size: hidden / 2,
                ..RnnConfig::lstm(64, hidden)
            });
            configs.push(RnnConfig {
                proj_size: hidden / 2 - 1,
                bidirectional: true,
                ..RnnConfig::lstm(16, hidden)
            });
        }
        configs.push(RnnConfig {
            gru_linear_before_reset: false,
            bidirectional: true,
            ..RnnConfig::gru(8, hidden)
        });
    }
    configs
}

/// What the driver refuses of one launch, or the coverage it misses.
fn audit_launch(device: &Device, plan: &RecurrencePlan, config: &RnnConfig, step: &Step) -> Vec<String> {
    let Step::Launch(launch) = step else { return vec![] };
    let mut problems = Vec::new();
    let threads = launch.block as usize;
    if threads == 0 || threads > 1024 {
        problems.push(format!("{} threads per block", threads));
    }
    let recurrence = matches!(
        launch.params,
        KernelParams::Recurrence(_) | KernelParams::RecurrenceBackward(_)
    );
    if recurrence && threads > MAX_THREADS {
        problems.push(format!(
            "{threads} threads above the kernels' launch bounds ({MAX_THREADS})"
        ));
    }
    if registers(launch.kernel) * threads > device.registers_per_sm {
        problems.push(format!(
            "{} registers × {threads} threads",
            registers(launch.kernel)
        ));
    }
    if launch.smem_bytes as usize > device.opt_in - device.static_smem {
        problems.push(format!(
            "{} bytes of dynamic shared memory (limit {} - {} static)",
            launch.smem_bytes, device.opt_in, device.static_smem
        ));
    }
    if launch.grid[1] > 65_535 || launch.grid[2] > 65_535 || launch.grid.contains(&0) {
        problems.push(format!("grid {:?}", launch.grid));
    }
    if launch.cooperative {
        let ctas: usize = launch.grid.iter().map(|&g| g as usize).product();
        let resident = device.sm_count * device.occupancy(launch.kernel, threads, launch.smem_bytes as usize);
        if ctas > resident {
            problems.push(format!(
                "a cooperative grid of {ctas} CTAs, {resident} fit at once"
            ));
        }
    }
    if recurrence {
        let units = plan.ctas_per_group * plan.units_per_cta;
        if units < config.hidden_size {
            problems.push(format!("{units} units covered of {}", config.hidden_size));
        }
        let outputs = plan.ctas_per_group * plan.outputs_per_cta;
        if config.proj_size > 0 && outputs < config.proj_size {
            problems.push(format!(
                "{outputs} projected outputs covered of {}",
                config.proj_size
            ));
        }
    }
    problems
}

#[test]
fn every_planned_launch_fits_the_device_and_covers_every_output() {
    let mut problems = Vec::new();
    let mut launches = 0;
    for device in &DEVICES {
        let limits = device.limits();
        let occupancy =
            |kernel: &'static str, threads: usize, smem: usize| Ok(device.occupancy(kernel, threads, smem));
        for config in configs() {
            let layout = WeightLayout::new(&config);
            for batch in [1, 4, 32, 128, 1000] {
                for pass in [Pass::Forward, Pass::Backward] {
                    let plan = match plan_pass(pass, &config, batch, &limits, &occupancy, Strategy::Auto) {
                        Ok(plan) => plan,
                        // A shape no split fits is a clear error, not a bad launch.
                        Err(_) => continue,
                    };
                    let what = format!(
                        "{} {} B={batch} {pass:?}: {plan:?}",
                        device.name,
                        rnn_kernels::weights::describe(&config)
                    );
                    if pass == Pass::Forward {
                        let buffers = rnn_kernels::cuda::launch::ForwardBuffers {
                            input: 1 << 20,
                            output: 2 << 20,
                            h_n: 3 << 20,
                            c_n: 4 << 20,
                            weights: 5 << 20,
                            workspace: 6 << 20,
                            ..Default::default()
                        };
                        let steps = forward_steps(&config, &plan, &layout, 7, batch, &buffers).unwrap();
                        for step in &steps {
                            launches += 1;
                            problems.extend(
                                audit_launch(device, &plan, &config, step)
                                    .into_iter()
                                    .map(|p| format!("{what}: {p}")),
                            );
                        }
                    } else {
                        // The backward's recurrence launch: the plan's shape.
                        let step = Step::Launch(rnn_kernels::cuda::launch::Launch {
                            kernel: plan.kernel,
                            grid: [
                                (plan.ctas_per_group * config.num_directions() * plan.tiles) as u32,
                                1,
                                1,
                            ],
                            block: plan.threads as u32,
                            smem_bytes: plan.smem_bytes as u32,
                            cooperative: plan.cooperative(),
                            params: KernelParams::RecurrenceBackward(Default::default()),
                        });
                        launches += 1;
                        problems.extend(
                            audit_launch(device, &plan, &config, &step)
                                .into_iter()
                                .map(|p| format!("{what}: {p}")),
                        );
                    }
                }
            }
        }
    }
    assert!(launches > 1000, "audited only {launches} launches");
    assert!(
        problems.is_empty(),
        "{} of {launches} launches would fail or miss outputs:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

#[test]
fn sequences_too_long_for_the_barrier_counter_are_errors() {
    let config = RnnConfig::lstm(4, 64);
    let device = &DEVICES[0];
    let occupancy =
        |kernel: &'static str, threads: usize, smem: usize| Ok(device.occupancy(kernel, threads, smem));
    let plan = plan_pass(
        Pass::Forward,
        &config,
        4,
        &device.limits(),
        &occupancy,
        Strategy::OnChip { ctas_per_group: 4 },
    )
    .unwrap();
    assert_eq!(plan.ctas_per_group, 4);
    let buffers = rnn_kernels::cuda::launch::ForwardBuffers {
        workspace: 1 << 20,
        ..Default::default()
    };
    let layout = WeightLayout::new(&config);
    assert!(forward_steps(&config, &plan, &layout, 1000, 4, &buffers).is_ok());
    let err = forward_steps(&config, &plan, &layout, 1 << 29, 4, &buffers).unwrap_err();
    assert!(err.to_string().contains("32-bit counter"), "{err}");
}

/// Planning is cheap: the planner asks the driver about few distinct launch
/// shapes (the device caches each answer), and a whole plan takes well
/// under a millisecond.
#[test]
fn planning_asks_few_questions_and_takes_little_time() {
    use std::cell::RefCell;
    use std::collections::HashSet;
    let device = &DEVICES[0];
    for (config, batch) in [
        (RnnConfig::lstm(1024, 1024), 128),
        (RnnConfig::lstm(256, 512), 64),
        (RnnConfig::lstm(1024, 1024), 4),
        (
            RnnConfig {
                proj_size: 396,
                ..RnnConfig::lstm(64, 793)
            },
            32,
        ),
    ] {
        for pass in [Pass::Forward, Pass::Backward] {
            let asked = RefCell::new((0usize, HashSet::new()));
            let occupancy = |kernel: &'static str, threads: usize, smem: usize| {
                let mut a = asked.borrow_mut();
                a.0 += 1;
                a.1.insert((kernel, threads, smem));
                Ok(device.occupancy(kernel, threads, smem))
            };
            // The best of several plans: this test runs beside others, and one
            // preempted run (seen in CI: 1.0 ms against a usual 50 µs) says
            // nothing about the planner. Planning is deterministic, so every
            // repeat asks the same questions.
            const REPEATS: usize = 7;
            let elapsed = (0..REPEATS)
                .map(|_| {
                    let start = std::time::Instant::now();
                    let _ = plan_pass(pass, &config, batch, &device.limits(), &occupancy, Strategy::Auto);
                    start.elapsed()
                })
                .min()
                .unwrap();
            let (calls, distinct) = (asked.borrow().0 / REPEATS, asked.borrow().1.len());
            let what = format!("{} B={batch} {pass:?}", rnn_kernels::weights::describe(&config));
            eprintln!("{what}: {calls} queries, {distinct} distinct, best {elapsed:?}");
            assert!(calls <= 2_000, "{what}: {calls} occupancy queries");
            assert!(elapsed.as_micros() < 1_000, "{what}: planning took {elapsed:?}");
        }
    }
}
