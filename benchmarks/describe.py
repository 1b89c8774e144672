"""Benchmark: summary requests one by one vs with bounded concurrency, through the real openai client against the
local OpenAI test server answering each request after a fixed delay. The server runs in its own process (as a
real server would), so its threads do not share the client's GIL.

    .venv/bin/python benchmarks/describe.py [--n 200] [--delay 0.05] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test server lives with the tests

from openai_server import OpenAITestServer, last_user_text  # noqa: E402

from and_lightning.describe.llm.base import ChatRequest  # noqa: E402
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM  # noqa: E402
from and_lightning.describe.llm.prompts import summary_messages  # noqa: E402

def summary_requests(n: int) -> list[ChatRequest]:
    """`n` distinct summary requests, the pipeline's own prompt over 5 captions each (free-text replies)."""
    return [ChatRequest(summary_messages([f"neuron {i}: clip {j} is a loud bright tone" for j in range(5)]))
            for i in range(n)]


def answer(body: dict) -> str:
    return f"{last_user_text(body).split(':')[0]}: loud bright tones."


def serve(delay: float, urls: "mp.Queue", stop: "mp.Event", counts: "mp.Queue") -> None:
    """Run the test server in this (child) process until `stop` is set; report its URL, then its request count."""
    with OpenAITestServer(answer=answer, delay=delay) as server:
        urls.put(server.base_url)
        stop.wait()
        counts.put(server.count)


def timed_run(base_url: str, requests: list, concurrency: int, cache_dir: str) -> float:
    llm = OpenAIChatLLM(
        model="bench-model", base_url=base_url, api_key_env=None, concurrency=concurrency,
        cache_path=f"{cache_dir}/llm-c{concurrency}.sqlite",
    )
    start = time.perf_counter()
    replies = llm.complete_many(requests)
    elapsed = time.perf_counter() - start
    assert len(replies) == len(requests) and llm.stats.requests_sent == len(requests), llm.stats
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="distinct summary requests")
    parser.add_argument("--delay", type=float, default=0.05, help="server delay per request, seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="the configured concurrency")
    parser.add_argument("--target", type=float, default=8.0, help="speed-up to reach")
    args = parser.parse_args()
    requests = summary_requests(args.n)
    ctx = mp.get_context("spawn")
    urls, counts, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(args.delay, urls, stop, counts), daemon=True)
    server.start()
    try:
        base_url = urls.get(timeout=60)
        with tempfile.TemporaryDirectory() as cache_dir:
            serial = timed_run(base_url, requests, 1, cache_dir)
            parallel = timed_run(base_url, requests, args.concurrency, cache_dir)
    finally:
        stop.set()
        sent = counts.get(timeout=30)
        server.join(timeout=30)
    ratio = serial / parallel
    print(f"{args.n} distinct summary requests, test server delay {args.delay * 1000:.0f} ms, {sent} requests sent")
    print(f"  concurrency 1 : {serial:7.2f} s  ({serial / args.n * 1000:.1f} ms/request)")
    print(f"  concurrency {args.concurrency:<2}: {parallel:7.2f} s  ({parallel / args.n * 1000:.1f} ms/request)")
    verdict = "met" if ratio >= args.target else "NOT met"
    print(f"  speed-up      : {ratio:7.1f}x  (target >= {args.target:g}x: {verdict})")


if __name__ == "__main__":
    main()
