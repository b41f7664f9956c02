"""The numpy API's time per call on the benchmark shapes, for comparison
with the Rust bench (`cargo bench --bench forward`) in the same sitting: the
difference is what Python adds (argument conversion, the GIL, output arrays).

    python python/bench.py --only stream_b1,stream_b256,icu --threads 1,2 --out X.json

Each call is timed on its own (time.perf_counter_ns) and the median kept, as
the Rust bench does; one warm-up second first. Forward shapes time
``forward`` (outputs allocated each call, as a user gets them); step shapes
time ``Streams.step`` with the state carried.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import rnn_kernels

SHAPES = Path(__file__).resolve().parents[1] / ".." / "shared" / "gpu" / "shapes.json"


def random_state_dict(shape: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """PyTorch's default initialisation: U(-1/sqrt(H), 1/sqrt(H))."""
    gates = {"lstm": 4, "gru": 3}.get(shape["cell"], 1)
    hidden, bound = shape["hidden"], 1.0 / np.sqrt(shape["hidden"])
    directions = 2 if shape["bidirectional"] else 1
    weights = {}
    for layer in range(shape["layers"]):
        width = shape["input"] if layer == 0 else hidden * directions
        for suffix in ["", "_reverse"][:directions]:
            sizes = {
                "weight_ih": (gates * hidden, width),
                "weight_hh": (gates * hidden, hidden),
                "bias_ih": (gates * hidden,),
                "bias_hh": (gates * hidden,),
            }
            for name, size in sizes.items():
                values = rng.uniform(-bound, bound, size).astype(np.float32)
                weights[f"{name}_l{layer}{suffix}"] = values
    return weights


def time_calls(call: Any, seconds: float) -> tuple[float, float, float, int]:
    """Median, p10 and p90 of one call's time in µs, and the count."""
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        call()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e3)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return statistics.median(samples), pick(0.1), pick(0.9), len(samples)


def bench_shape(shape: dict[str, Any], threads: int, seconds: float) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    model = rnn_kernels.Rnn.from_state_dict(
        random_state_dict(shape, rng), cell=shape["cell"], device="cpu", threads=threads
    )
    if shape.get("step"):
        ward = model.streams(shape["batch"])
        x = rng.standard_normal((shape["batch"], shape["input"]), dtype=np.float32)
        call = lambda: ward.step(x)  # noqa: E731
    else:
        x = rng.standard_normal((shape["seq"], shape["batch"], shape["input"]), dtype=np.float32)
        lengths = shape.get("lengths_list")
        call = lambda: model.forward(x, lengths=lengths)  # noqa: E731
    median, p10, p90, reps = time_calls(call, seconds)
    return {
        "shape": shape["name"],
        "mode": "infer",
        "dtype": "f32",
        "variant": f"python_{threads}t",
        "median_us": median,
        "p10_us": p10,
        "p90_us": p90,
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=Path, default=SHAPES)
    parser.add_argument("--only", default="stream_b1,stream_b256,icu")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shapes = {s["name"]: s for s in json.loads(args.shapes.read_text())["shapes"]}
    records = []
    for name in args.only.split(","):
        if name not in shapes:
            parser.error(f"no shape {name!r} in {args.shapes}")
        for threads in map(int, args.threads.split(",")):
            record = bench_shape(shapes[name], threads, args.seconds)
            records.append(record)
            print(f"{name:12} {record['variant']:10} {record['median_us']:10.1f} µs")
    if args.out:
        info = {"python": platform.python_version(), "numpy": np.__version__}
        args.out.write_text(json.dumps({"info": info, "records": records}, indent=1))


if __name__ == "__main__":
    main()
