"""Benchmark: the rig's `openai` stack against plain concurrent HTTP calls to the same local vLLM server.

What it answers: how much throughput the rig gives up against a bare client (target: at least 90%). Both send the same
requests (the stack's own request bodies: token-ID prompt, logprobs=K, return_tokens_as_token_ids) with the same
concurrency. The plain client is a thread pool with one keep-alive http.client connection per thread that parses the
JSON and keeps nothing; the rig path is `rig.run.runner.execute` (batches of `--batch-size`, Parquet parts, completions,
manifest) on a loaded stack. The server's start and the stack's load are excluded. Repeats run in pairs: each
repeat times the plain client and every rig row back to back, the order flipping every repeat, and each rig row's
figure is the median over repeats of plain / rig within the repeat (benchmarks/_common.py prints the machine).

    .venv/bin/python benchmarks/bench_openai.py --model /tmp/tiny1 [--base-url http://127.0.0.1:8000/v1]
        [--concurrency 8] [--batch-sizes 8,32] [--samples 2] [--max-new-tokens 32] [--repeats 3]

Without --base-url it starts `python -m vllm.entrypoints.openai.api_server` on a free loopback port (and stops it).
Prints a table for people, then one JSON line for scripts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit


def start_server(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "4096"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/version", timeout=2):
                return proc, url + "/v1"
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"server did not start; see {log}")


def plain_client(base_url: str, bodies: list[dict], concurrency: int) -> float:
    """Wall seconds to send every body with `concurrency` threads, one keep-alive connection each."""
    parts = urlsplit(base_url)
    local = threading.local()

    def post(body: dict) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        conn.request(
            "POST", parts.path + "/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        data = json.loads(resp.read())
        assert resp.status == 200, data
        return len(data["choices"][0]["logprobs"]["tokens"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/tiny-gpt-oss")
    ap.add_argument("--base-url", help="an already running server (its served model name must be --model)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--logprobs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine, print_machine

    from rig.run import runner
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite
    from rig.stacks.openai import OpenAIStack

    suite = load_suite("default")
    tmp = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    proc, base_url = (None, args.base_url) if args.base_url else start_server(args.model, tmp / "server.log")
    sampling = SamplingSpec(max_new_tokens=args.max_new_tokens, stop_token_ids=(201087,), samples=args.samples)
    requests = runner.generation_requests(suite.prompts, args.samples)
    n_tokens = len(requests) * args.max_new_tokens
    rows: dict[str, list[float]] = {}
    try:
        stacks = {}
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            spec = RunSpec(
                stack="openai",
                model=args.model,
                base_url=base_url,
                logprobs=args.logprobs,
                batch_size=bs,
                concurrency=args.concurrency,
                sampling=sampling,
            )
            stacks[bs] = OpenAIStack(spec)
            stacks[bs].load()
        first = next(iter(stacks.values()))
        bodies = []
        for r in requests:
            body = first._body(r)
            body.update(prompt=list(r.prompt.token_ids), return_token_ids=True)
            bodies.append(body)
        plain_client(base_url, bodies[: args.concurrency], args.concurrency)  # warm-up, excluded
        before = machine()
        for i in range(args.repeats):
            steps = [("plain", None)] + [(f"rig batch {bs}", stack) for bs, stack in stacks.items()]
            for name, stack in steps if i % 2 == 0 else steps[::-1]:
                t0 = time.perf_counter()
                if stack is None:
                    plain_client(base_url, bodies, args.concurrency)
                else:
                    runner.execute(stack.spec, tmp / f"r{name}-{i}", suite=suite, telemetry_hz=0, stack=stack)
                rows.setdefault(name, []).append(time.perf_counter() - t0)
        after = machine()
        for stack in stacks.values():
            stack.close()
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)

    print(
        f"{len(requests)} requests x {args.max_new_tokens} tokens, concurrency {args.concurrency}, top-K "
        f"{args.logprobs}, {args.repeats} paired repeats, server {first.describe()['server']['version']}"
    )
    print_machine(before, after)
    print(f"{'client':<16}{'median wall s':>14}{'seq/s':>8}{'tokens/s':>10}{'vs plain':>10}  (per repeat)")
    result = {}
    for name, walls in rows.items():
        w = statistics.median(walls)
        ratios = [p / x for p, x in zip(rows["plain"], walls, strict=True)]
        rel = statistics.median(ratios)
        result[name] = {
            "walls_s": [round(x, 3) for x in walls],
            "median_s": round(w, 3),
            "relative_median_of_pairs": round(rel, 4),
            "relative_per_pair": [round(x, 4) for x in ratios],
        }
        per = ", ".join(f"{x:.0%}" for x in ratios)
        print(f"{name:<16}{w:>14.3f}{len(requests) / w:>8.2f}{n_tokens / w:>10.1f}{rel:>10.1%}  ({per})")
    print("target: every rig row at least 90% of plain")
    print(
        json.dumps(
            {
                "bench": "openai",
                "requests": len(requests),
                "max_new_tokens": args.max_new_tokens,
                "concurrency": args.concurrency,
                "logprobs": args.logprobs,
                "repeats": args.repeats,
                "machine_before": before,
                "machine_after": after,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
