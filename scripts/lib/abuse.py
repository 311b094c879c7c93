"""The attacks of issue 13 against a running release gateway, with figures.

Run by scripts/bench-abuse (which starts the gateway). Reads GW, KEY, GW_PID from the
environment; prints one line per measurement.
"""

import http.client
import json
import os
import socket
import statistics
import threading
import time
import urllib.parse

GW = urllib.parse.urlparse(os.environ["GW"])
HOST, PORT = GW.hostname, GW.port
KEY = os.environ["KEY"]
PID = int(os.environ["GW_PID"])


def rss_mib():
    """Resident and peak resident memory of the gateway, in MiB."""
    fields = {}
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    kib = lambda k: int(fields[k].split()[0]) / 1024
    return kib("VmRSS"), kib("VmHWM")


def request(method, path, body=b"", headers=None, timeout=120):
    """(status, seconds) of one request on a new connection; status 0 on a network error."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(HOST, PORT, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started
    finally:
        conn.close()


def at_once(n, work):
    """Runs work(i) in n threads at once; returns their results in order."""
    out = [None] * n
    def run(i):
        out[i] = work(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def counts(statuses):
    tally = {}
    for s in statuses:
        tally[s] = tally.get(s, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(tally.items()))


class HealthProbe:
    """Times GET /health every 50 ms while something else runs."""
    def __init__(self):
        self.times, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self.run)
    def run(self):
        while not self.stop.is_set():
            status, took = request("GET", "/health", timeout=60)
            self.times.append(took)
            time.sleep(0.05)
    def __enter__(self):
        self.thread.start()
        return self
    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()
    def summary(self):
        t = sorted(self.times)
        return f"/health meanwhile: {len(t)} probes, p50 {statistics.median(t) * 1000:.1f} ms, max {t[-1] * 1000:.1f} ms"


def diverse_text(size):
    x, out = 0x9E3779B97F4A7C15, []
    total = 0
    while total < size:
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        word = "".join(chr(97 + ((x >> (i * 5)) & 15)) for i in range(2 + (x >> 60)))
        out.append(word)
        total += len(word) + 1
    return " ".join(out)


def chat(prompt, model="mock-big", **extra):
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": prompt}]}
    body.update(extra)
    return json.dumps(body).encode()


JSON = {"content-type": "application/json"}

# 5. Registrations: 200 at once from 200 addresses (through the trusted proxy 127.0.0.1),
# so the per-address throttle lets them all try; hashing is bounded by its own queue.
before = rss_mib()
started = time.monotonic()
regs = at_once(200, lambda i: request("POST", "/api/auth/register", json.dumps(
    {"email": f"r{i}@bench.local", "password": "bench-password-1", "username": "r"}).encode(),
    {**JSON, "x-forwarded-for": f"10.9.{i // 250}.{i % 250}"})[0])
after = rss_mib()
print(f"registrations, 200 at once from 200 addresses: {counts(regs)} in "
      f"{time.monotonic() - started:.1f} s; RSS {before[0]:.0f} MiB before, peak "
      f"{after[1]:.0f} MiB, {after[0]:.0f} MiB after")
same = at_once(30, lambda i: request("POST", "/api/auth/register", json.dumps(
    {"email": f"s{i}@bench.local", "password": "bench-password-1", "username": "s"}).encode(),
    {**JSON, "x-forwarded-for": "10.8.0.1"})[0])
print(f"registrations, 30 at once from one address: {counts(same)}")

# 4. Sixty wrong passwords at once for one email from one address.
wrong = at_once(60, lambda i: request("POST", "/api/auth/login", json.dumps(
    {"email": "admin@bench.local", "password": "Wrong-password-9"}).encode(),
    {**JSON, "x-forwarded-for": "203.0.113.5"})[0])
owner = request("POST", "/api/auth/login", json.dumps(
    {"email": "admin@bench.local", "password": "bench-password-1"}).encode(),
    {**JSON, "x-forwarded-for": "198.51.100.7"})[0]
print(f"sign-ins, 60 wrong passwords at once for one email: {counts(wrong)}; "
      f"the owner from another address: {owner}")

# 1. Unknown keys with 4 MB bodies, six at once.
big_text = diverse_text(4_000_000)
big = chat(big_text)
with HealthProbe() as probe:
    answers = at_once(6, lambda i: request("POST", "/v1/chat/completions", big,
                                           {**JSON, "x-virtual-key": f"vk_made_up_{i}"}))
took = sorted(t for _, t in answers)
print(f"unknown key, 4 MB body, 6 at once: {counts(s for s, _ in answers)}; answered in "
      f"p50 {statistics.median(took) * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms "
      f"(the body sent in full); {probe.summary()}")

# 1. A valid key with 4 MB prompts (about 1.8 M tokens each, counted off the async workers).
with HealthProbe() as probe:
    answers = at_once(6, lambda i: request("POST", "/v1/chat/completions", big,
                                           {**JSON, "x-virtual-key": KEY}))
took = sorted(t for _, t in answers)
print(f"valid key, 4 MB prompt, 6 at once: {counts(s for s, _ in answers)}; answered in "
      f"p50 {statistics.median(took):.2f} s, max {took[-1]:.2f} s; {probe.summary()}")
spaces = request("POST", "/v1/chat/completions", chat(" " * 1_000_000),
                 {**JSON, "x-virtual-key": KEY})
print(f"a million spaces: {spaces[0] or 'connection dropped, no answer'} in "
      f"{spaces[1] * 1000:.0f} ms")

# 6. Slow clients: 500 connections with half-sent headers, and a body that never comes.
socks = []
for _ in range(500):
    s = socket.create_connection((HOST, PORT))
    s.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n")
    socks.append(s)
started = time.monotonic()
for s in socks:
    s.settimeout(max(0.1, 15 - (time.monotonic() - started)))
    try:
        s.recv(1)
    except socket.timeout:
        pass
closed_at = time.monotonic() - started
still = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            continue
    except BlockingIOError:
        still += 1
    except OSError:
        continue
    s.close()
if still:
    print(f"500 connections with half-sent headers: {500 - still} closed by the gateway, "
          f"{still} still open after {closed_at:.0f} s")
else:
    print(f"500 connections with half-sent headers: all closed by the gateway within "
          f"{closed_at:.1f} s")
s = socket.create_connection((HOST, PORT))
s.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
          b"Content-Length: 100000\r\n\r\n{\"email\": ")
started = time.monotonic()
s.settimeout(60)
seen = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        seen += chunk
    line = seen.split(b"\r\n", 1)[0].decode()
    print(f"a body announced (Content-Length: 100000) and never sent: '{line}', connection "
          f"closed after {time.monotonic() - started:.1f} s")
except socket.timeout:
    print("a body announced (Content-Length: 100000) and never sent: no answer, connection "
          "still open after 60 s")
