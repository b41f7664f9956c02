//! Numbers never depend on scheduling: models running at once, on more
//! threads than the machine has cores, give bitwise the results of the same
//! calls made alone. Every way the fast CPU path shares its work is here:
//! batch rows split between tasks (one direction and two), the units of
//! each step split between threads (with a projection, and the original
//! GRU's second product), streaming steps, and training's products, with
//! copies of each running at once (callers crowding the cores), and one at
//! a time beside busy threads that keep taking the cores from the pool's
//! workers in the middle of their pieces.

mod common;

use common::random_tensor;
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::rng::SplitMix64;
use rnn_kernels::{ForwardInput, ForwardOutput, GradOutputs, Gradients, RnnConfig, State, Tensor, Weights};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One model and the calls it makes.
struct Job {
    name: &'static str,
    config: RnnConfig,
    threads: usize,
    batch: usize,
    seq_len: usize,
    lengths: Option<Vec<usize>>,
    call: Call,
}

#[derive(Clone, Copy)]
enum Call {
    Forward,
    /// A stream stepped this many times, its state carried.
    Steps(usize),
    Train,
}

/// What a job's calls gave, to compare bit for bit.
#[derive(PartialEq, Debug)]
enum Results {
    Forward(Vec<ForwardOutput<f32>>),
    Steps(Vec<Tensor<f32>>, State<f32>),
    Train(ForwardOutput<f32>, Box<Gradients<f32>>),
}

fn jobs() -> Vec<Job> {
    let job = |name, config, threads, batch, seq_len, call| Job {
        name,
        config,
        threads,
        batch,
        seq_len,
        lengths: None,
        call,
    };
    vec![
        // One direction, batch rows in chunks, variable lengths.
        Job {
            lengths: Some((0..37).map(|b| 1 + (b * 7) % 30).collect()),
            ..job(
                "rows_varlen",
                RnnConfig {
                    num_layers: 2,
                    ..RnnConfig::lstm(6, 64)
                },
                3,
                37,
                30,
                Call::Forward,
            )
        },
        // Two directions: a region per layer.
        job(
            "rows_bidirectional",
            RnnConfig {
                num_layers: 2,
                bidirectional: true,
                ..RnnConfig::gru(10, 33)
            },
            2,
            32,
            20,
            Call::Forward,
        ),
        // B = 1: every step's units split between the threads.
        job(
            "units",
            RnnConfig {
                num_layers: 2,
                ..RnnConfig::lstm(16, 96)
            },
            3,
            1,
            40,
            Call::Forward,
        ),
        job(
            "units_projection",
            RnnConfig {
                proj_size: 40,
                ..RnnConfig::lstm(8, 128)
            },
            2,
            2,
            30,
            Call::Forward,
        ),
        job(
            "units_original_gru",
            RnnConfig {
                gru_linear_before_reset: false,
                ..RnnConfig::gru(5, 130)
            },
            2,
            1,
            30,
            Call::Forward,
        ),
        job(
            "stream",
            RnnConfig {
                num_layers: 2,
                ..RnnConfig::lstm(64, 256)
            },
            2,
            1,
            1,
            Call::Steps(30),
        ),
        job(
            "training",
            RnnConfig {
                num_layers: 2,
                ..RnnConfig::lstm(6, 40)
            },
            2,
            9,
            16,
            Call::Train,
        ),
    ]
}

impl Job {
    /// Runs the job's calls on a model of its own.
    fn run(&self, seed: u64) -> Results {
        let weights = Weights::<f32>::random(self.config.clone(), seed).unwrap();
        let mut model = CpuRnn::with_threads(&weights, self.threads).unwrap();
        let mut rng = SplitMix64::new(seed + 1);
        let input_size = self.config.input_size;
        let input = random_tensor::<f32>(&[self.seq_len, self.batch, input_size], &mut rng);
        let args = ForwardInput::new(&input);
        let args = match &self.lengths {
            Some(lengths) => args.lengths(lengths),
            None => args,
        };
        match self.call {
            Call::Forward => {
                let first = model.forward(&args).unwrap();
                let mut again = model.forward(&args).unwrap();
                // Into buffers that held other numbers.
                model.forward_into(&args, &mut again).unwrap();
                Results::Forward(vec![first, again])
            }
            Call::Steps(steps) => {
                let mut state = State::zeros(&self.config, self.batch);
                let outputs = (0..steps)
                    .map(|_| {
                        let x = random_tensor::<f32>(&[self.batch, input_size], &mut rng);
                        model.step(&x, &mut state).unwrap()
                    })
                    .collect();
                Results::Steps(outputs, state)
            }
            Call::Train => {
                let (out, reserve) = model.forward_train(&args, Some(seed)).unwrap();
                let grad = random_tensor::<f32>(out.output.shape(), &mut rng);
                let grads = GradOutputs {
                    output: &grad,
                    h_n: None,
                    c_n: None,
                };
                let gradients = model.backward(&args, &reserve, &grads).unwrap();
                Results::Train(out, Box::new(gradients))
            }
        }
    }
}

/// Threads that keep both cores busy (and so keep descheduling the pool's
/// workers) until dropped.
struct Busy {
    stop: &'static AtomicBool,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    fn start(count: usize) -> Busy {
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let threads = (0..count)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        Busy { stop, threads }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn models_at_once_on_more_threads_than_cores_give_the_bits_they_give_alone() {
    let jobs = jobs();
    let alone: Vec<Results> = jobs.iter().map(|job| job.run(11)).collect();
    // Two copies of every job at once, each calling from its own thread.
    let deadline = Instant::now() + Duration::from_secs(4);
    std::thread::scope(|scope| {
        for (job, expected) in jobs.iter().zip(&alone) {
            for copy in 0..2 {
                scope.spawn(move || {
                    let mut rounds = 0;
                    while rounds < 3 || (rounds < 50 && Instant::now() < deadline) {
                        let got = job.run(11);
                        assert!(got == *expected, "{} (copy {copy}, round {rounds})", job.name);
                        rounds += 1;
                    }
                });
            }
        }
    });
}

#[test]
fn workers_descheduled_mid_piece_change_no_bit() {
    let jobs = jobs();
    let alone: Vec<Results> = jobs.iter().map(|job| job.run(23)).collect();
    // Twice as many busy threads as cores: the pool's workers (and the
    // caller) lose their core at random points, pieces are claimed late or
    // by the caller, and the pool turns solo and back.
    let _busy = Busy::start(2 * cores());
    for (job, expected) in jobs.iter().zip(&alone) {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut rounds = 0;
        while rounds < 3 || (rounds < 30 && Instant::now() < deadline) {
            assert!(job.run(23) == *expected, "{} (round {rounds})", job.name);
            rounds += 1;
        }
    }
}
