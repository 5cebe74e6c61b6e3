"""Load test of `cvae serve`: a burst of concurrent generation requests against 127.0.0.1.

Starts `cvae serve RUN --port 0` as a user would, fires --requests POST /v1/runs/RUN/generate at
once (httpx's AsyncClient, one connection each, every request its own label and seed), twice, and
reports errors, latency percentiles, requests per second and the server's resident memory (its peak,
VmHWM, from /proc). The peer, measured in the same run: the same generations computed in-process,
one after another, by the function the server calls (ServedRun.generate: cvae.apps.generate and the
PNG grid), so the ratio is what HTTP, JSON and the queue cost on top of the model.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py            # trains a digits run first (~10 s)
    python benchmarks/serve_load.py --run runs/digits --requests 500 --n 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvae.probe import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def memory(pid: int) -> dict[str, float]:
    """Resident memory of a process in MiB: now (VmRSS) and its peak so far (VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




async def burst(base: str, run: str, bodies: list[dict]) -> tuple[list[float], list[int], float, list[str]]:
    import httpx

    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        async def one(body):
            t = time.perf_counter()
            try:
                r = await client.post(f"/v1/runs/{run}/generate", json=body)
                return time.perf_counter() - t, r.status_code, "" if r.status_code == 200 else r.text[:200]
            except httpx.HTTPError as e:
                return time.perf_counter() - t, 0, f"{type(e).__name__}: {e}"

        start = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    return [r[0] for r in results], [r[1] for r in results], wall, [r[2] for r in results if r[2]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="the run to serve (default: train a digits run for 20 epochs in a temporary folder)")
    p.add_argument("--requests", type=int, default=500, help="concurrent requests per burst (default 500)")
    p.add_argument("--bursts", type=int, default=2, help="bursts, one after another (default 2)")
    p.add_argument("--n", type=int, default=16, help="examples per request (default 16)")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-load.json"))
    args = p.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import cvae
    from cvae.serve.served import ServedRun
    from cvae.train import native_bfloat16

    print(f"machine: {cpu_name()}, native bfloat16: {native_bfloat16(torch.device('cpu'))}, the server on "
          f"{args.threads} thread(s), torch {torch.__version__}", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="cvae-serve-load-")
    run = Path(args.run) if args.run else Path(tmp.name) / "digits"
    if not args.run:
        torch.set_num_threads(1)
        cvae.train(data="digits", epochs=20, batch_size=64, out=run, progress=False, tensorboard=False, pictures=False)
    name = run.resolve().name
    rng = np.random.default_rng(0)
    bodies = [[{"condition": {"label": str(int(rng.integers(10)))}, "n": args.n, "seed": int(rng.integers(2**31)),
                "temperature": 0.9} for _ in range(args.requests)] for _ in range(args.bursts)]

    proc = subprocess.Popen([sys.executable, "-m", "cvae", "serve", str(run), "--port", "0", "--quiet",
                             "--threads", str(args.threads)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    report: dict = {}
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        if not m:
            raise SystemExit(f"cvae serve did not start: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}")
        base = m.group(1)
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{base}/v1/runs", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        idle = memory(proc.pid)
        one = httpx.post(f"{base}/v1/runs/{name}/generate", json=bodies[0][0], timeout=60)
        assert one.status_code == 200, one.text
        bursts = []
        for b in bodies:
            cpu0 = cpu_seconds(proc.pid)
            latencies, codes, wall, errors = asyncio.run(burst(base, name, b))
            server_cpu = cpu_seconds(proc.pid) - cpu0
            lat = np.array(latencies) * 1000
            bursts.append({"requests": len(b), "errors": int(sum(c != 200 for c in codes)), "error_samples": errors[:3],
                           "wall_s": round(wall, 3), "requests_per_s": round(len(b) / wall, 1),
                           "server_cpu_ms_per_request": round(1000 * server_cpu / len(b), 2),
                           "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p90", "p99")}
                           | {"max": round(float(lat.max()), 1)},
                           "server_memory_mib": {k: round(v, 1) for k, v in memory(proc.pid).items()}})
        again = httpx.post(f"{base}/v1/runs/{name}/generate", json=bodies[0][0], timeout=60)
        deterministic = again.content == one.content
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # the peer: the same computation in this process, no HTTP, one request after another
    torch.set_num_threads(args.threads)
    served = ServedRun(name, run)
    served.generate(**{k: v for k, v in bodies[0][0].items()})
    start = time.perf_counter()
    for body in bodies[0]:
        served.generate(**body)
    inproc = len(bodies[0]) / (time.perf_counter() - start)

    last = bursts[-1]
    report = {
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores (client and server on the same machine)",
        "torch": torch.__version__, "server_threads": args.threads, "examples_per_request": args.n,
        "server_idle_memory_mib": {k: round(v, 1) for k, v in idle.items()},
        "bursts": bursts, "same_request_same_bytes": deterministic,
        "in_process_requests_per_s": round(inproc, 1),
        "served_over_in_process": round(last["requests_per_s"] / inproc, 3),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"cvae serve, {args.requests} concurrent POST /generate (n={args.n}) x {args.bursts} bursts; {report['machine']}")
    for i, b in enumerate(bursts):
        lat = b["latency_ms"]
        print(f"  burst {i + 1}: {b['errors']} errors, {b['requests_per_s']} requests/s, latency p50 {lat['p50']} ms, "
              f"p90 {lat['p90']} ms, p99 {lat['p99']} ms; server CPU {b['server_cpu_ms_per_request']} ms per request; "
              f"server RSS {b['server_memory_mib']['VmRSS']} MiB, "
              f"peak {b['server_memory_mib']['VmHWM']} MiB")
    print(f"  server memory at start: {idle['VmRSS']:.1f} MiB; same request, same bytes: {deterministic}")
    print(f"  in-process peer (ServedRun.generate, no HTTP): {inproc:.1f} requests/s; served / in-process = "
          f"{report['served_over_in_process']}")
    print(f"  wrote {out}")
    return 0 if all(b["errors"] == 0 for b in bursts) and deterministic else 1


if __name__ == "__main__":
    sys.exit(main())
