#!/usr/bin/env python3
"""Reads `perf script` output (samples with call chains) on stdin and prints the share of
samples per request-path stage. Each sample goes to the first stage found walking its
stack from the leaf up, so allocator, memcpy and kernel time count for the code that
caused them."""
import re
import sys
from collections import Counter

# (stage, pattern on a frame's symbol), most specific first.
STAGES = [
    ("tokenize (tiktoken)", r"tiktoken|neuropia::tokens::"),
    ("metrics", r"\bmetrics(_exporter_prometheus|_util)?::|neuropia::metrics::"),
    ("ledger + journal (sqlx, PostgreSQL client)", r"sqlx|neuropia::actors::ledger|neuropia::journal|neuropia::db::"),
    ("upstream client (reqwest/hyper client)", r"reqwest|hyper::client|hyper::proto::h1::role::Client|hyper_util::client|neuropia::upstream::"),
    ("key actor", r"neuropia::actors::keys"),
    ("balance actor", r"neuropia::actors::balances"),
    ("json (serde_json)", r"serde_json"),
    ("chat handler", r"neuropia::http::chat"),
    ("other gateway code", r"neuropia::"),
    ("actor runtime (ractor)", r"ractor::"),
    ("http server (hyper/axum)", r"hyper::|axum|tower"),
    ("tokio scheduler, timers, I/O driver", r"tokio::"),
    ("tracing", r"tracing"),
]
COMPILED = [(name, re.compile(p)) for name, p in STAGES]


def stage(frames):
    for sym in frames:
        for name, rx in COMPILED:
            if rx.search(sym):
                return name
    return "unattributed (kernel, libc, threads idle)"


def samples(lines):
    frames = []
    in_sample = False
    for line in lines:
        if not line.strip():
            if in_sample:
                yield frames
            frames, in_sample = [], False
            continue
        if not line.startswith((" ", "\t")):
            in_sample = True
            frames = []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            frames.append(parts[1])
    if in_sample:
        yield frames


def main():
    counts = Counter(stage(f) for f in samples(sys.stdin))
    total = sum(counts.values()) or 1
    for name, n in counts.most_common():
        print(f"{100.0 * n / total:6.1f}%  {name}")
    print(f"({total} samples)")


if __name__ == "__main__":
    main()
