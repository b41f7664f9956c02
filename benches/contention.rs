//! Sharing the machine: each shape alone, then as 2 and 4 copies running at
//! once, with 1 and 2 threads a copy. A copy is a model of its own making
//! single calls (a whole forward, or one step of every stream with the state
//! carried); the copies are threads of this process (sharing its one CPU
//! pool) or separate processes (this binary started again). Every copy
//! times its calls for `RNN_CONTENTION_SECS` seconds (default 2) while the
//! others keep calling, and reports its time per call (the window over the
//! calls it made); the table gives each copy's
//! slowdown against the same call made alone, the numbers that say whether
//! a model degrades gracefully when it does not have the cores to itself.
//!
//! - `RNN_BENCH_SHAPES` (default `icu,seed_lstm,seed_bigru,b1_seq,stream_b1`),
//!   `RNN_BENCH_THREADS` (default `1,2`), `RNN_CONTENTION_COPIES` (default
//!   `2,4`), `RNN_CONTENTION_KINDS` (default `threads,processes`).
//! - `BENCH_JSON_DIR=DIR` writes `DIR/contention.json`: one record per
//!   (shape, threads, copies, kind) with each copy's time per call, the time
//!   alone and the slowdowns; `bench/contention_anchor.py` writes the same
//!   records for ONNX Runtime and PyTorch under the same load.
//!
//! Under `cargo test --benches` (no `--bench` argument) it makes one short
//! pass of icu, 2 threads, 2 copies of each kind, as a smoke test.

mod common;

use common::{load_shapes, shape_input, Shape};
use rnn_kernels::cpu::CpuRnn;
use rnn_kernels::{ForwardInput, ForwardOutput, State, Tensor, Weights};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Set in a copy started as a process: `SHAPE:THREADS:SECS`.
const CHILD_ENV: &str = "RNN_CONTENTION_CHILD";

/// A copy times at least this many calls, however long they take.
const MIN_CALLS: usize = 5;

/// One copy's work: a model and its call, with buffers kept between calls.
struct Workload {
    model: CpuRnn,
    input: Tensor<f32>,
    lengths: Option<Vec<usize>>,
    call: Call,
}

enum Call {
    Forward(ForwardOutput<f32>),
    Step {
        x: Tensor<f32>,
        state: State<f32>,
        h: Tensor<f32>,
    },
}

impl Workload {
    fn new(shape: &Shape, threads: usize) -> Workload {
        let config = &shape.config;
        let weights = Weights::<f32>::random(config.clone(), 1).unwrap();
        let mut model = CpuRnn::with_threads(&weights, threads).unwrap();
        let input = shape_input(shape, 2);
        let lengths = shape.lengths.clone();
        let call = if shape.step {
            let row = shape.batch * config.input_size;
            Call::Step {
                x: Tensor::new([shape.batch, config.input_size], input.data()[..row].to_vec()).unwrap(),
                state: State::zeros(config, shape.batch),
                h: Tensor::zeros([shape.batch, config.output_size()]),
            }
        } else {
            let args = ForwardInput::new(&input);
            let args = match &lengths {
                Some(l) => args.lengths(l),
                None => args,
            };
            Call::Forward(model.forward(&args).unwrap())
        };
        Workload {
            model,
            input,
            lengths,
            call,
        }
    }

    /// One call, timed.
    fn call(&mut self) -> Duration {
        let start = Instant::now();
        match &mut self.call {
            Call::Forward(out) => {
                let args = ForwardInput::new(&self.input);
                let args = match &self.lengths {
                    Some(l) => args.lengths(l),
                    None => args,
                };
                self.model.forward_into(&args, out).unwrap();
            }
            Call::Step { x, state, h } => self.model.step_into(x, state, h).unwrap(),
        }
        start.elapsed()
    }

    /// Calls for a fifth of `secs` (three calls at least), untimed.
    fn warm_up(&mut self, secs: f64) {
        let end = Instant::now() + Duration::from_secs_f64(secs / 5.0);
        let mut calls = 0;
        while calls < 3 || Instant::now() < end {
            self.call();
            calls += 1;
        }
    }

    /// Calls for `secs` seconds and [`MIN_CALLS`] calls at least: the time
    /// per call (µs), the window over the calls. Not a median of single
    /// calls: a call shorter than the OS's time slice mostly runs whole
    /// between preemptions, so its median hides a copy that gets half a core.
    fn measure(&mut self, secs: f64) -> f64 {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut calls = 0;
        while calls < MIN_CALLS || Instant::now() < end {
            self.call();
            calls += 1;
        }
        start.elapsed().as_secs_f64() * 1e6 / calls as f64
    }
}

/// How the copies run at once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Threads,
    Processes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Threads => "threads",
            Kind::Processes => "processes",
        }
    }
}

/// `copies` copies as threads of this process: each one's time per call (µs).
fn in_threads(shape: &Shape, threads: usize, copies: usize, secs: f64) -> Vec<f64> {
    let ready = Barrier::new(copies);
    let (finished, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    std::thread::scope(|scope| {
        let copies: Vec<_> = (0..copies)
            .map(|_| {
                scope.spawn(|| {
                    let mut work = Workload::new(shape, threads);
                    work.warm_up(secs);
                    ready.wait();
                    let per_call = work.measure(secs);
                    // The load stays on until every copy has its times.
                    if finished.fetch_add(1, Ordering::AcqRel) + 1 == copies {
                        stop.store(true, Ordering::Release);
                    }
                    while !stop.load(Ordering::Acquire) {
                        work.call();
                    }
                    per_call
                })
            })
            .collect();
        copies.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// A copy started as a process, and its pipes.
struct ChildCopy {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildCopy {
    fn start(shape: &Shape, threads: usize, secs: f64) -> ChildCopy {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, format!("{}:{threads}:{secs}", shape.name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a copy of the bench");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        ChildCopy { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "a copy of the bench ended early");
        line.trim().to_string()
    }

    fn say(&mut self, word: &str) {
        writeln!(self.stdin, "{word}").unwrap();
        self.stdin.flush().unwrap();
    }
}

/// `copies` copies as processes: each one's time per call (µs).
fn in_processes(shape: &Shape, threads: usize, copies: usize, secs: f64) -> Vec<f64> {
    let mut children: Vec<ChildCopy> = (0..copies)
        .map(|_| ChildCopy::start(shape, threads, secs))
        .collect();
    for c in &mut children {
        assert_eq!(c.line(), "ready");
    }
    for c in &mut children {
        c.say("go");
    }
    let per_call = children.iter_mut().map(|c| c.line().parse().unwrap()).collect();
    for c in &mut children {
        c.say("stop");
    }
    for mut c in children {
        assert!(c.child.wait().unwrap().success());
    }
    per_call
}

/// A copy as a process: warms up, says `ready`, waits for `go`, prints its
/// time per call, and keeps calling until `stop`.
fn child_main(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, threads, secs] = parts[..] else {
        panic!("{CHILD_ENV}={spec}: expected SHAPE:THREADS:SECS")
    };
    let shape = load_shapes()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no shape {name}"));
    let secs: f64 = secs.parse().unwrap();
    let mut work = Workload::new(&shape, threads.parse().unwrap());
    work.warm_up(secs);
    println!("ready");
    let mut word = String::new();
    std::io::stdin().read_line(&mut word).unwrap();
    assert_eq!(word.trim(), "go");
    println!("{}", work.measure(secs));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // "stop", or the parent gone.
            let _ = std::io::stdin().read_line(&mut String::new());
            stop.store(true, Ordering::Release);
        });
        while !stop.load(Ordering::Acquire) {
            work.call();
        }
    });
}

fn list<T: std::str::FromStr>(var: &str, default: &str) -> Vec<T> {
    let spec = std::env::var(var).unwrap_or_else(|_| default.into());
    spec.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={spec}: expected a comma-separated list"))
        })
        .collect()
}

fn format_us(us: f64) -> String {
    match us {
        us if us >= 1e6 => format!("{:.2} s", us / 1e6),
        us if us >= 1e3 => format!("{:.2} ms", us / 1e3),
        us => format!("{us:.1} µs"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child_main(&spec);
    }
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching && std::env::var_os("RNN_BENCH_SHAPES").is_none() {
        // SAFETY: nothing else runs yet.
        unsafe { std::env::set_var("RNN_BENCH_SHAPES", "icu") };
    }
    if std::env::var_os("RNN_BENCH_SHAPES").is_none() {
        // SAFETY: nothing else runs yet.
        unsafe { std::env::set_var("RNN_BENCH_SHAPES", "icu,seed_lstm,seed_bigru,b1_seq,stream_b1") };
    }
    let (thread_counts, copy_counts, secs) = if benching {
        let secs = std::env::var("RNN_CONTENTION_SECS").map_or(2.0, |s| s.parse().unwrap());
        (
            list("RNN_BENCH_THREADS", "1,2"),
            list("RNN_CONTENTION_COPIES", "2,4"),
            secs,
        )
    } else {
        (vec![2], vec![2], 0.05)
    };
    let kinds: Vec<Kind> = list::<String>("RNN_CONTENTION_KINDS", "threads,processes")
        .iter()
        .map(|k| match k.as_str() {
            "threads" => Kind::Threads,
            "processes" => Kind::Processes,
            other => panic!("RNN_CONTENTION_KINDS: {other}? (threads, processes)"),
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{cores} cores; each copy timed for {secs} s while the others run");
    println!(
        "{:<12} {:>7} {:>6} {:<9} {:>10}  per copy: time per call (× alone)",
        "shape", "threads", "copies", "kind", "alone"
    );
    let mut records = Vec::new();
    for shape in load_shapes() {
        for &threads in &thread_counts {
            let alone = in_threads(&shape, threads, 1, secs)[0];
            println!(
                "{:<12} {threads:>7} {:>6} {:<9} {:>10}",
                shape.name,
                1,
                "alone",
                format_us(alone)
            );
            for &copies in &copy_counts {
                for &kind in &kinds {
                    let per_call = match kind {
                        Kind::Threads => in_threads(&shape, threads, copies, secs),
                        Kind::Processes => in_processes(&shape, threads, copies, secs),
                    };
                    let slowdowns: Vec<f64> = per_call.iter().map(|m| m / alone).collect();
                    let cells: Vec<String> = per_call
                        .iter()
                        .zip(&slowdowns)
                        .map(|(m, s)| format!("{} ({s:.2}×)", format_us(*m)))
                        .collect();
                    println!(
                        "{:<12} {threads:>7} {copies:>6} {:<9} {:>10}  {}",
                        shape.name,
                        kind.name(),
                        "",
                        cells.join(", ")
                    );
                    let worst = slowdowns.iter().copied().fold(0.0, f64::max);
                    records.push(json!({
                        "shape": shape.name, "mode": "infer", "step": shape.step,
                        "dtype": "f32", "engine": "rnn_kernels", "variant": format!("cpu_{threads}t"),
                        "threads": threads, "copies": copies, "kind": kind.name(),
                        "alone_us": alone, "per_call_us": per_call, "slowdown": slowdowns,
                        "worst_slowdown": worst,
                    }));
                }
            }
        }
    }
    if let Ok(dir) = std::env::var("BENCH_JSON_DIR") {
        let info: Value = json!({
            "cpu_count": cores,
            "secs": secs,
            "commit": std::env::var("RNN_BENCH_COMMIT").ok(),
        });
        let path = std::path::Path::new(&dir).join("contention.json");
        let doc = json!({ "info": info, "records": records });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("wrote {} records to {}", records.len(), path.display());
    }
}
