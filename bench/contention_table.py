#!/usr/bin/env python3
"""The contention table: ours (benches/contention.rs's contention.json) beside ONNX Runtime
(bench/contention_anchor.py's JSON) under the same load, as markdown.

  python3 bench/contention_table.py OURS.json ANCHOR.json [--out table.md]

For each shape, threads a copy, copies and kind (threads of one process, or processes): each
engine's time per call alone and its worst copy's slowdown (time per call under the load over
the time alone). Targets (issue 21): two copies at most 2.5x alone each, four at most 5x.
"""
import argparse, json

TARGET = {2: 2.5, 4: 5.0}


def fmt(us):
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.1f} µs"


def index(records):
    return {(r["shape"], r["threads"], r["copies"], r["kind"]): r for r in records}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours")
    ap.add_argument("anchor")
    ap.add_argument("--out")
    a = ap.parse_args()
    ours = index(json.load(open(a.ours))["records"])
    theirs = index(json.load(open(a.anchor))["records"])
    lines = [
        "| shape | threads | copies | kind | ours alone | ours worst × | ORT alone | ORT worst × | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shapes = list(dict.fromkeys(k[0] for k in ours))
    for key in sorted(ours, key=lambda k: (shapes.index(k[0]), k[1], k[2], k[3] != "threads")):
        shape, threads, copies, kind = key
        r, t = ours[key], theirs.get(key)
        target = TARGET.get(copies)
        met = "—" if target is None else ("yes" if r["worst_slowdown"] <= target else "no")
        lines.append("| " + " | ".join([
            shape, str(threads), str(copies), kind, fmt(r["alone_us"]), f"{r['worst_slowdown']:.2f}×",
            fmt(t["alone_us"]) if t else "—", f"{t['worst_slowdown']:.2f}×" if t else "—",
            f"≤ {target}×" if target else "—", met]) + " |")
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
