#!/usr/bin/env python3
"""Soak: kill -9 the server at random moments while jobs and pollers run; nothing may be lost.

Runs the real `fluxpipe serve` on 127.0.0.1 over one data folder, with a model (the random-weight
test model is enough: this measures the server, not the pictures). One thread submits --jobs
requests, each with an Idempotency-Key, retrying until it gets an answer (a submission whose
connection broke may or may not have been stored; the key makes the retry safe). Pollers read
the status of every known request all the time. Meanwhile the server is killed with SIGKILL
--kills times at random moments and restarted at once on the same port.

At the end every request must have reached SUCCESS or FAILURE-with-a-reason, every retry of a
key must have answered the same id, and every image must be a whole PNG: signature, every
chunk's CRC, IHDR size equal to the request's, and IDAT inflating to exactly height*(1+3*width)
bytes. Prints one summary line; exits 1 on any loss or corruption.

  python3 bench/soak.py --fluxpipe build/fluxpipe --model DIR [--kills 20] [--jobs 40] [--seed 1]
"""
import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, model, data, port):
        self.args = [binary, "serve", "--data", data, "--listen", f"127.0.0.1:{port}", "--model", model,
                     "--sync-wait", "0", "--rate-limit", "0", "--max-queue", "1000", "--max-queued-per-key", "1000"]
        self.log = open(os.path.join(data, "server.log"), "ab")
        self.base = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None:
                sys.exit(f"soak: the server exited with {self.proc.returncode}; see its log in {self.args[3]}")
            time.sleep(0.02)
        sys.exit("soak: the server did not become ready in 60 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def request(base, method, path, key, body=None, headers=None, timeout=5):
    h = {"API-Key": key, "Content-Type": "application/json"}
    h.update(headers or {})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_png(data, width, height):
    """Returns None for a whole PNG of that size, else what is wrong."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "no PNG signature"
    pos, idat, size = 8, b"", None
    seen_end = False
    while pos < len(data):
        if pos + 8 > len(data):
            return "truncated chunk header"
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc_at = pos + 8 + length
        if crc_at + 4 > len(data):
            return f"truncated {kind!r} chunk"
        (crc,) = struct.unpack(">I", data[crc_at:crc_at + 4])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            return f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            seen_end = True
        pos = crc_at + 4
    if not seen_end:
        return "no IEND"
    if size != (width, height):
        return f"IHDR says {size}, the request {width}x{height}"
    raw = zlib.decompress(idat)
    if len(raw) != height * (1 + 3 * width):
        return f"IDAT inflates to {len(raw)} bytes, not {height * (1 + 3 * width)}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fluxpipe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--pollers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    data = tempfile.mkdtemp(prefix="fluxpipe-soak-")
    key = subprocess.run([a.fluxpipe, "keys", "add", "--data", data, "--name", "soak"], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    server = Server(a.fluxpipe, a.model, data, free_port())
    server.start()
    started = time.time()

    ids = {}            # idempotency key -> request id
    sizes = {}          # request id -> (width, height)
    mismatched = []     # a retry that answered another id
    lock = threading.Lock()
    done_submitting = threading.Event()
    stop = threading.Event()
    retries = [0]

    def submitter():
        for i in range(a.jobs):
            w, h = rng.choice([(64, 64), (80, 64), (64, 96)])
            body = {"prompt": f"soak {i}", "width": w, "height": h, "seed": i, "samples": rng.choice([1, 2]),
                    "num_inference_steps": rng.choice([2, 4, 6])}
            ikey = f"soak-{a.seed}-{i}"
            while True:
                try:
                    status, raw = request(server.base, "POST", "/generate/v3", key, body, {"Idempotency-Key": ikey})
                except OSError:
                    status, raw = 0, b""
                if status == 200:
                    rid = json.loads(raw)["id"]
                    with lock:
                        if ikey in ids and ids[ikey] != rid:
                            mismatched.append((ikey, ids[ikey], rid))
                        ids[ikey] = rid
                        sizes[rid] = (w, h)
                    break
                retries[0] += 1
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 0.3))
        done_submitting.set()

    def poller():
        while not stop.is_set():
            with lock:
                known = list(sizes)
            for rid in known:
                try:
                    request(server.base, "GET", "/generate/v3/status/" + rid, key, timeout=2)
                except OSError:
                    pass
            time.sleep(0.05)

    threads = [threading.Thread(target=submitter)] + [threading.Thread(target=poller) for _ in range(a.pollers)]
    for t in threads:
        t.start()
    for _ in range(a.kills):
        time.sleep(rng.uniform(0.2, 1.5))
        server.kill9()
        server.start()
    done_submitting.wait()

    # Every request to its end (the killed jobs are queued again at each start).
    final = {}
    deadline = time.time() + 600
    while time.time() < deadline and len(final) < len(sizes):
        for rid in list(sizes):
            if rid in final:
                continue
            status, raw = request(server.base, "GET", "/generate/v3/status/" + rid, key)
            j = json.loads(raw) if status == 200 else {}
            if j.get("status") in ("SUCCESS", "FAILURE"):
                final[rid] = j
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()

    lost = [rid for rid in sizes if rid not in final]
    reasonless = [rid for rid, j in final.items() if j["status"] == "FAILURE" and not j.get("error")]
    failures = {rid: j.get("error") for rid, j in final.items() if j["status"] == "FAILURE"}
    corrupt, images = [], 0
    for rid, j in final.items():
        if j["status"] != "SUCCESS":
            continue
        for url in j.get("download_urls", []):
            path = url[url.index("/v3/images/"):]
            status, png = request(server.base, "GET", path, key)
            images += 1
            problem = "HTTP %d" % status if status != 200 else check_png(png, *sizes[rid])
            if problem:
                corrupt.append((rid, url, problem))
    server.stop()
    summary = {"requests": len(sizes), "submitted_of": a.jobs, "kills": a.kills, "success": len(final) - len(failures),
               "failure": len(failures), "lost": len(lost), "failure_without_reason": len(reasonless),
               "images_checked": images, "corrupt": len(corrupt), "idempotency_mismatches": len(mismatched),
               "submission_retries": retries[0], "seconds": round(time.time() - started, 1)}
    print("soak: " + json.dumps(summary))
    for rid, err in failures.items():
        print(f"  FAILURE {rid}: {err}")
    for c in corrupt:
        print("  CORRUPT", *c)
    for m in mismatched:
        print("  IDEMPOTENCY", *m)
    ok = not lost and not corrupt and not reasonless and not mismatched and len(sizes) == a.jobs
    if ok:
        import shutil
        shutil.rmtree(data, ignore_errors=True)
    else:
        print(f"soak: FAILED; the data folder is kept in {data}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
