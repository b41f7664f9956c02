#!/usr/bin/env python3
"""Joins our CPU bench and the CPU anchor into a markdown table of ratios.

  python3 bench/compare.py OURS.json ANCHOR.json [--shapes shapes.json] [--out TABLE.md]

OURS.json is `BENCH_JSON_DIR=DIR cargo bench --bench forward`'s DIR/rnn_kernels.json
(variants cpu_1t, cpu_2t, ...); ANCHOR.json is ../shared/bench/cpu_anchor.py's output
(torch_1t, torch_2t, ort_1t, ort_2t). Both hold records {shape, mode, dtype, variant,
median_us, ...}. For each (shape, mode) and thread count N the table gives our median,
the best anchor at N threads (PyTorch or ONNX Runtime), and ratio = best anchor / ours
(above 1: we are faster), against the targets of issue 12; and our GFLOP/s next to the
machine's SGEMM rate at N threads (from OURS.json's info).
"""
import argparse, json, os, sys

# Issue 12's targets: ratio = best of PyTorch and ONNX Runtime at the same thread count ÷ ours.
TARGETS = {
    ("icu", "infer"): 1.5, ("icu_varlen", "infer"): 1.5, ("seed_lstm", "infer"): 1.5,
    ("seed_bigru", "infer"): 1.5, ("stream_b256", "infer"): 1.5, ("stream_b1", "infer"): 1.5,
    ("long", "infer"): 1.0, ("mid", "infer"): 1.0, ("gru_mid", "infer"): 1.0,
    ("large", "infer"): 1.0, ("xl_b4", "infer"): 1.0, ("icu", "train"): 1.5,
}


def records(path):
    doc = json.load(open(path))
    rows = doc.get("records", doc.get("results", []))
    return doc.get("info", {}), [r for r in rows if r.get("median_us") is not None]


def flops(shape):
    """Multiply-adds of one forward call (one step on step shapes), x2."""
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[shape["cell"]]
    dirs = 2 if shape.get("bidirectional") else 1
    h, total = shape["hidden"], 0
    for layer in range(shape["layers"]):
        inp = shape["input"] if layer == 0 else dirs * h
        total += dirs * gates * h * (inp + h)
    steps = 1 if shape.get("step") else shape["seq"]
    if shape.get("lengths_list"):
        return 2 * total * sum(shape["lengths_list"])
    return 2 * total * shape["batch"] * steps


def fmt_us(us):
    if us is None:
        return "—"
    if us >= 1e5:
        return f"{us / 1e3:,.0f} ms"
    if us >= 1e3:
        return f"{us / 1e3:,.2f} ms"
    return f"{us:,.1f} µs"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours")
    ap.add_argument("anchor")
    ap.add_argument("--shapes", default=os.path.join(here, "..", "..", "shared", "gpu", "shapes.json"))
    ap.add_argument("--out", help="write the table here (default: stdout)")
    a = ap.parse_args()
    our_info, ours = records(a.ours)
    anchor_info, anchor = records(a.anchor)
    shapes = {s["name"]: s for s in json.load(open(a.shapes))["shapes"]}

    def median(rows, shape, mode, variant):
        found = [r["median_us"] for r in rows
                 if (r["shape"], r["mode"], r["variant"], r.get("dtype", "f32")) == (shape, mode, variant, "f32")]
        return found[0] if found else None

    threads = sorted({int(r["variant"][4:-1]) for r in ours
                      if r["variant"].startswith("cpu_") and r["variant"].endswith("t")})
    sgemm = our_info.get("sgemm_gflops", {})
    out = []
    out.append(f"CPU: {our_info.get('cpu') or anchor_info.get('cpu')} ({our_info.get('cpu_count')} CPUs, "
               f"{our_info.get('isa')}); SGEMM (gemm crate, 1024³): "
               + ", ".join(f"{k} {v} GFLOP/s" for k, v in sgemm.items()) + ".")
    out.append(f"Anchors: PyTorch {anchor_info.get('torch')}, ONNX Runtime {anchor_info.get('onnxruntime')}; "
               f"ours at commit {our_info.get('commit') or '?'}.")
    out.append("")
    head = ["shape", "mode"]
    for n in threads:
        head += [f"ours {n}t", f"best other {n}t", f"ratio {n}t"]
    head += [f"GFLOP/s {threads[-1]}t (SGEMM %)", "target", "met"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    keys = []
    for r in ours:
        key = (r["shape"], r["mode"])
        if key not in keys and r["variant"].startswith("cpu_") and r["variant"] != "cpu_reference":
            keys.append(key)
    for shape, mode in keys:
        row, met = [shape, mode], []
        for n in threads:
            mine = median(ours, shape, mode, f"cpu_{n}t")
            others = [(median(anchor, shape, mode, f"{e}_{n}t"), e) for e in ("torch", "ort")]
            others = [(v, e) for v, e in others if v is not None]
            best = min(others) if others else (None, None)
            ratio = best[0] / mine if best[0] and mine else None
            row += [fmt_us(mine), f"{fmt_us(best[0])} ({best[1]})" if best[0] else "—",
                    f"{ratio:.2f}×" if ratio else "—"]
            target = TARGETS.get((shape, mode))
            if target and ratio:
                met.append((n, ratio >= target))
        n = threads[-1]
        mine = median(ours, shape, mode, f"cpu_{n}t")
        if mode == "infer" and mine and shape in shapes:
            gflops = flops(shapes[shape]) / mine / 1e3
            rate = sgemm.get(f"{n}t")
            row.append(f"{gflops:.0f} ({100 * gflops / rate:.0f}%)" if rate else f"{gflops:.0f}")
        else:
            row.append("—")
        target = TARGETS.get((shape, mode))
        row.append(f"≥ {target}×" if target else "—")
        passed = [f"{n}t" for n, ok in met if ok]
        row.append("—" if not met else "yes" if len(passed) == len(met) else
                   "no" if not passed else "at " + ", ".join(passed))
        out.append("| " + " | ".join(row) + " |")
    text = "\n".join(out) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
