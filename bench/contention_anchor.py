#!/usr/bin/env python3
"""ONNX Runtime and PyTorch under the load of `cargo bench --bench contention`.

The same protocol as benches/contention.rs, on the anchors' models (cpu_anchor.py's, from
../shared/bench): each shape alone, then as 2 and 4 copies at once, with 1 and 2 threads a
copy; a copy is a session (ORT, intra-op threads = the copy's threads) or a module
(PyTorch, torch.set_num_threads) of its own making single calls (a whole forward, or one
step of every stream with the state carried). Copies run as threads of one process (ORT
sessions each with its own pool; PyTorch modules sharing the process's intra-op pool, as
ours share the process's pool) or as separate processes. Each copy times its calls for
--secs while the others keep calling; its figure is its window over its calls (not a
median: a call shorter than a time slice mostly runs whole, hiding a copy that gets half
a core), and its slowdown is that over the figure alone.

Run: python bench/contention_anchor.py --out contention_anchor.json
         [--only icu,b1_seq] [--engines ort,torch] [--threads 1,2] [--copies 2,4]
         [--kinds threads,processes] [--secs 2]
Needs ../shared/bench/setup-venv's venv (torch, onnx, onnxruntime). Records:
{shape, mode, dtype, engine, variant, threads, copies, kind, alone_us, per_call_us: [...],
slowdown: [...], worst_slowdown}, as contention.json's.
"""
import argparse, json, os, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_BENCH = os.path.join(HERE, "..", "..", "shared", "bench")
sys.path.insert(0, SHARED_BENCH)
import cpu_anchor  # noqa: E402  (the anchors' models, input and ONNX graph)

MIN_CALLS = 5
DEFAULT_SHAPES = "icu,seed_lstm,seed_bigru,b1_seq,stream_b1"


def workload(engine, shape, threads):
    """A copy's call: ORT session or PyTorch module on cpu_anchor.py's model and input."""
    import torch
    m, x, lens, state, pack = cpu_anchor.build(shape)
    m.eval()
    lstm = shape["cell"] == "lstm"
    if engine == "torch":
        carried = [state]
        def call():
            with torch.no_grad():
                _, new = m(pack(), carried[0])
            if shape.get("step"):
                carried[0] = new
        return call
    import numpy as np, onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(cpu_anchor.onnx_model(shape, m).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    names, zeros = (["h0", "c0"], list(state)) if lstm else (["h0"], [state])
    feeds = {"x": x.transpose(0, 1).contiguous().numpy()}
    if lens is not None:
        feeds["lens"] = lens.numpy().astype(np.int32)
    feeds.update({n: z.numpy() for n, z in zip(names, zeros)})
    def call():
        outs = sess.run(None, feeds)
        if shape.get("step"):
            feeds.update(zip(names, outs[1:]))
    return call


def warm_up(call, secs):
    end, calls = time.perf_counter() + secs / 5, 0
    while calls < 3 or time.perf_counter() < end:
        call(); calls += 1


def measure(call, secs):
    """Time per call (µs): the window over the calls made in it."""
    start = time.perf_counter()
    end, calls = start + secs, 0
    while calls < MIN_CALLS or time.perf_counter() < end:
        call(); calls += 1
    return (time.perf_counter() - start) * 1e6 / calls


def in_threads(engine, shape, threads, copies, secs):
    import torch
    if engine == "torch":
        torch.set_num_threads(threads)
    ready, stop, results = threading.Barrier(copies), threading.Event(), [None] * copies
    finished = [0]
    lock = threading.Lock()
    def copy(i):
        call = workload(engine, shape, threads)
        warm_up(call, secs)
        ready.wait()
        results[i] = measure(call, secs)
        with lock:
            finished[0] += 1
            if finished[0] == copies:
                stop.set()
        while not stop.is_set():
            call()
    ts = [threading.Thread(target=copy, args=(i,)) for i in range(copies)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def in_processes(engine, shape, threads, copies, secs, argv):
    cmd = [sys.executable, os.path.abspath(__file__), *argv,
           f"--child={engine}:{shape['name']}:{threads}"]
    children = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(copies)]
    def line(p):
        while True:
            text = p.stdout.readline()
            if not text:
                raise RuntimeError("a copy ended early")
            if text.startswith("@"):  # ours; anything else is a library's chatter
                return text[1:].strip()
    for p in children:
        assert line(p) == "ready"
    for p in children:
        p.stdin.write("go\n"); p.stdin.flush()
    per_call = [float(line(p)) for p in children]
    for p in children:
        p.stdin.write("stop\n"); p.stdin.flush()
    for p in children:
        assert p.wait() == 0
    return per_call


def child(spec, shapes, secs):
    import torch
    engine, name, threads = spec.split(":")
    threads = int(threads)
    torch.set_num_threads(threads if engine == "torch" else 1)
    shape = next(s for s in shapes if s["name"] == name)
    call = workload(engine, shape, threads)
    warm_up(call, secs)
    print("@ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    print(f"@{measure(call, secs)}", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    while not stop.is_set():
        call()


def fmt(us):
    return f"{us / 1e6:.2f} s" if us >= 1e6 else f"{us / 1e3:.2f} ms" if us >= 1e3 else f"{us:.1f} µs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="contention_anchor.json")
    ap.add_argument("--shapes", default=os.path.join(SHARED_BENCH, "..", "gpu", "shapes.json"))
    ap.add_argument("--only", default=DEFAULT_SHAPES)
    ap.add_argument("--engines", default="ort,torch")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--copies", default="2,4")
    ap.add_argument("--kinds", default="threads,processes")
    ap.add_argument("--secs", type=float, default=2.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    shapes = json.load(open(a.shapes))["shapes"]
    if a.child:
        return child(a.child, shapes, a.secs)
    keep = a.only.split(",")
    shapes = [s for s in shapes if s["name"] in keep]
    argv = [f"--shapes={a.shapes}", f"--secs={a.secs}"]
    records = []
    print(f"{os.cpu_count()} CPUs; each copy timed for {a.secs} s while the others run")
    for engine in a.engines.split(","):
        for shape in shapes:
            for threads in map(int, a.threads.split(",")):
                alone = in_threads(engine, shape, threads, 1, a.secs)[0]
                print(f"{engine:5} {shape['name']:12} {threads}t alone {fmt(alone):>10}", flush=True)
                for copies in map(int, a.copies.split(",")):
                    for kind in a.kinds.split(","):
                        if kind == "threads":
                            per_call = in_threads(engine, shape, threads, copies, a.secs)
                        else:
                            per_call = in_processes(engine, shape, threads, copies, a.secs, argv)
                        slowdown = [p / alone for p in per_call]
                        cells = ", ".join(f"{fmt(p)} ({s:.2f}×)" for p, s in zip(per_call, slowdown))
                        print(f"{engine:5} {shape['name']:12} {threads}t x{copies} {kind:9} {cells}",
                              flush=True)
                        records.append({
                            "shape": shape["name"], "mode": "infer", "step": bool(shape.get("step")),
                            "dtype": "f32", "engine": engine, "variant": f"{engine}_{threads}t",
                            "threads": threads, "copies": copies, "kind": kind, "alone_us": alone,
                            "per_call_us": per_call, "slowdown": slowdown,
                            "worst_slowdown": max(slowdown)})
                        with open(a.out, "w") as f:
                            json.dump({"info": {"cpu_count": os.cpu_count(), "secs": a.secs},
                                       "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
