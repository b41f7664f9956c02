"""rnn_kernels.torch against torch.nn eager, from Python, in one sitting.

    python python/bench_torch.py --threads 1,2 --rounds 5 --out X.json

Each shape of ../shared/gpu/shapes.json is built as ../shared/bench/cpu_anchor.py
builds it (batch-first module and input, zero initial state, varlen shapes
packed in the call with enforce_sorted=False), and timed as it times it:
``infer`` under eval() and no_grad(), ``train`` the forward then
``output.sum().backward()`` with the input requiring its gradient. PyTorch's
module and ours (``rnn_kernels.torch.from_torch`` of the same module) take
turns, in alternating order, for ``--rounds`` rounds of ``--seconds`` each;
a record's time is the median of its rounds' medians. ``torch_Nt`` and
``ours_Nt`` run with ``torch.set_num_threads(N)``, which our modules follow
(``threads=None``). Variant ``ours_lengths_Nt`` is ours on the padded input
with ``lengths=`` instead of packing. Variant ``ours_pool_Nt`` is ours with
the crate's own thread pool instead of torch's OpenMP team (what the modules
did before they ran on torch's team). Shape ``icu_model`` is the seed's
whole ICUTimeSeriesModel (LSTM, then its head) on icu_varlen's cohort.
"""

import argparse
import json
import platform
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_kernels._ops as ops
import rnn_kernels.torch as rt
from bench import SHAPES, time_calls


def lengths_for(shape: dict[str, Any]) -> torch.Tensor | None:
    """cpu_anchor.py's: 'random:LO..HI' drawn with random.Random(0), the first HI."""
    spec = shape.get("lengths")
    if not spec:
        return None
    lo, hi = (int(v) for v in spec.split(":")[1].split(".."))
    rng = random.Random(0)
    lengths = [rng.randint(lo, hi) for _ in range(shape["batch"])]
    lengths[0] = hi
    return torch.tensor(lengths, dtype=torch.int64)


class ICUTimeSeriesModel(nn.Module):
    """The seed model, as tests/fixtures/generate.py has it."""

    def __init__(self, n_features: int = 6, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True, dropout=0.2)
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (hn, _) = self.lstm(packed)
        return torch.sigmoid(self.head(hn[-1])).squeeze(-1)


def on_own_pool(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the crate's models on its own pool, not torch's team."""
    on_team = ops.torch_openmp

    def run() -> object:
        ops.torch_openmp = lambda: None
        try:
            return call()
        finally:
            ops.torch_openmp = on_team

    return run


def calls(shape: dict[str, Any], mode: str) -> dict[str, Callable[[], object]]:
    """The timed call of each engine on one shape and mode."""
    torch.manual_seed(0)
    if shape["name"] == "icu_model":
        ref = ICUTimeSeriesModel().eval()
        ours = rt.convert(ICUTimeSeriesModel().eval())
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(shape["batch"], shape["seq"], shape["input"])
        lengths = lengths_for(shape)

        def ours_call() -> object:
            return ours(x, lengths)

        return {
            "torch": lambda: ref(x, lengths),
            "ours": ours_call,
            "ours_pool": on_own_pool(ours_call),
        }
    cls = {"lstm": nn.LSTM, "gru": nn.GRU}[shape["cell"]]
    d = 2 if shape["bidirectional"] else 1
    ref = cls(
        shape["input"], shape["hidden"], shape["layers"], batch_first=True, bidirectional=d > 1
    )
    ours = rt.from_torch(ref)
    x = torch.randn(shape["batch"], shape["seq"], shape["input"])
    lengths = lengths_for(shape)
    h0 = torch.zeros(shape["layers"] * d, shape["batch"], shape["hidden"])
    state = (h0, h0.clone()) if shape["cell"] == "lstm" else h0

    def pack() -> Any:
        if lengths is None:
            return x
        return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)

    def run(module: nn.Module, use_lengths: bool = False) -> Callable[[], object]:
        if mode == "train":
            module.train()
            x.requires_grad_(True)

            def call() -> object:
                if use_lengths:
                    out, _ = module(x, state, lengths=lengths)
                else:
                    out, _ = module(pack(), state)
                (out if hasattr(out, "sum") else out.data).sum().backward()
                return out

            return call
        module.eval()
        if use_lengths:
            return lambda: module(x, state, lengths=lengths)
        return lambda: module(pack(), state)

    out = {"torch": run(ref), "ours": run(ours), "ours_pool": on_own_pool(run(ours))}
    if lengths is not None:
        out["ours_lengths"] = run(ours, use_lengths=True)
    return out


def sitting(
    shape: dict[str, Any], mode: str, threads: int, rounds: int, seconds: float
) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    engines = calls(shape, mode)
    medians: dict[str, list[float]] = {name: [] for name in engines}
    context = torch.no_grad() if mode == "infer" else torch.enable_grad()
    with context:
        for r in range(rounds):
            order = list(engines) if r % 2 == 0 else list(reversed(engines))
            for name in order:
                medians[name].append(time_calls(engines[name], seconds)[0])
    return [
        {
            "shape": shape["name"],
            "mode": mode,
            "dtype": "f32",
            "variant": f"{name}_{threads}t",
            "median_us": statistics.median(values),
            "rounds_us": values,
        }
        for name, values in medians.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=Path, default=SHAPES)
    parser.add_argument(
        "--only",
        default="icu:infer,icu:train,icu_varlen:infer,icu_varlen:train,seed_lstm:infer,"
        "seed_bigru:infer,icu_model:infer",
        help="shape:mode pairs",
    )
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shapes = {s["name"]: s for s in json.loads(args.shapes.read_text())["shapes"]}
    shapes["icu_model"] = {**shapes["icu_varlen"], "name": "icu_model"}
    records = []
    for pair in args.only.split(","):
        name, mode = pair.split(":")
        if name not in shapes or mode not in ("infer", "train"):
            parser.error(f"no shape and mode {pair!r}")
        for threads in map(int, args.threads.split(",")):
            found = sitting(shapes[name], mode, threads, args.rounds, args.seconds)
            records += found
            base = found[0]["median_us"]
            for r in found:
                print(
                    f"{name:11} {mode:5} {r['variant']:17} {r['median_us']:10.1f} µs"
                    f"  {base / r['median_us']:5.2f}×",
                    flush=True,
                )
    if args.out:
        info = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        }
        args.out.write_text(json.dumps({"info": info, "records": records}, indent=1))


if __name__ == "__main__":
    main()
