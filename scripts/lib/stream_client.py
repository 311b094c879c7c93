"""One client calling sequentially over one keep-alive connection; prints the time to the
response head, to the first body byte (the first token of a stream) and to the end, p50 and p99 in microseconds,
and the gateway's own share from `server-timing` when there is one.

    python stream_client.py HOST PORT CALLS STREAM(0|1) [HEADER:VALUE ...]
"""
import http.client
import json
import statistics
import sys
import time

host, port, calls, stream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
headers = {"content-type": "application/json"}
for h in sys.argv[5:]:
    k, v = h.split(":", 1)
    headers[k.strip()] = v.strip()
model = headers.pop("x-bench-model", "bench")
body = json.dumps({"model": model, "max_tokens": 512, "stream": stream,
                   "messages": [{"role": "user", "content": "Say hello to the benchmark"}]})
conn = http.client.HTTPConnection(host, port)
conn.connect()
import socket
conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
head, first, total, gateway, upstream, chunks = [], [], [], [], [], 0
for i in range(calls):
    t0 = time.perf_counter_ns()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    th = time.perf_counter_ns()
    if resp.status != 200:
        sys.exit(f"status {resp.status}: {resp.read()[:200]!r}")
    data = resp.read1(65536)
    t1 = time.perf_counter_ns()
    rest = resp.read()
    t2 = time.perf_counter_ns()
    if stream:
        chunks = (data + rest).count(b"data: ") - 1  # without [DONE]
    timing = resp.getheader("server-timing") or ""
    parts = dict(p.split(";dur=")[0:2] for p in (x.strip().split(";desc")[0] for x in timing.split(",")) if ";dur=" in p)
    if i >= calls // 10:  # the first tenth warms up
        head.append((th - t0) / 1000)
        first.append((t1 - t0) / 1000)
        total.append((t2 - t0) / 1000)
        if "gateway" in parts:
            gateway.append(float(parts["gateway"]) * 1000)
            upstream.append(float(parts["upstream"]) * 1000)


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


out = {"head_p50": q(head, .5), "first_p50": q(first, .5), "first_p99": q(first, .99), "total_p50": q(total, .5),
       "total_p99": q(total, .99), "chunks": chunks,
       "gateway_p50": q(gateway, .5), "upstream_p50": q(upstream, .5)}
print(" ".join(f"{k}={v:.0f}" if isinstance(v, float) and v == v else f"{k}={v}" for k, v in out.items()))
