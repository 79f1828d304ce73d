#!/usr/bin/env python3
"""Load test for `d2moe serve` (issue 8): N concurrent clients send R streamed completions of
mixed prompt lengths over loopback; every request must complete or get a 429 (none lost or
garbled). Reports requests/s, p50/p99 time to first token, aggregate generation tokens/s and the
server's peak memory (with --pid). Standard library only.

    scripts/loadtest.py --url http://127.0.0.1:8080 --clients 64 --requests 256 --max-tokens 32 [--pid PID] [--json]
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse

WORDS = ("the of and to in is was for on that with as by at from his an were are which this be "
         "also has or had first one their its new after who they two her she been other when there "
         "all during into school time may years more most only over city some world would where").split()


def prompt_of(words, rng):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def one_request(host, port, body, timeout):
    """Returns (status, ttft, completion_tokens, problem)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            data = resp.read()
            try:
                err = json.loads(data)["error"]["message"]
            except Exception:
                return resp.status, None, 0, "error body not OpenAI JSON: %r" % data[:200]
            return resp.status, None, 0, None if resp.status == 429 else "status %d: %s" % (resp.status, err)
        ttft, tokens, text, done, finish = None, None, "", False, None
        buf = b""
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    return 200, ttft, 0, "not an SSE data line: %r" % event[:100]
                payload = event[6:]
                if payload == b"[DONE]":
                    done = True
                    continue
                obj = json.loads(payload)
                if "error" in obj:
                    return 200, ttft, 0, "error event: %s" % obj["error"]
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
                for c in obj.get("choices", []):
                    if c.get("text"):
                        if ttft is None:
                            ttft = time.perf_counter() - start
                        text += c["text"]
                    if c.get("finish_reason"):
                        finish = c["finish_reason"]
        if not done or finish is None or tokens is None:
            return 200, ttft, 0, "stream ended early (done=%s finish=%s usage=%s)" % (done, finish, tokens)
        return 200, ttft, tokens, None
    except Exception as e:  # a lost request
        return -1, None, 0, "client error: %s" % e
    finally:
        conn.close()


def peak_rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--pid", type=int, help="server process, for its peak resident memory")
    ap.add_argument("--lengths", default="4,12,40,120,300", help="prompt lengths in words, drawn at random")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    rng = random.Random(args.seed)
    # Mixed prompt lengths: short chat-like, paragraph, long document.
    bodies = []
    for i in range(args.requests):
        words = rng.choice([int(w) for w in args.lengths.split(",")])
        bodies.append({"prompt": prompt_of(words, rng), "max_tokens": args.max_tokens, "temperature": 0.7,
                       "seed": i, "stream": True, "stream_options": {"include_usage": True}})
    results = [None] * args.requests
    next_index = [0]
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next_index[0]
                if i >= args.requests:
                    return
                next_index[0] += 1
            results[i] = one_request(u.hostname, u.port or 80, bodies[i], args.timeout)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r[0] == 200 and r[3] is None]
    rejected = [r for r in results if r[0] == 429]
    problems = [r[3] for r in results if r[3] is not None]
    ttfts = sorted(r[1] for r in ok if r[1] is not None)

    def pct(p):
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] if ttfts else float("nan")

    report = {
        "clients": args.clients, "requests": args.requests, "completed": len(ok), "rejected_429": len(rejected),
        "lost_or_garbled": len(problems), "wall_s": wall, "requests_per_s": len(ok) / wall,
        "ttft_p50_s": pct(0.5), "ttft_p99_s": pct(0.99), "generated_tokens": sum(r[2] for r in ok),
        "tokens_per_s": sum(r[2] for r in ok) / wall,
        "server_peak_rss_bytes": peak_rss(args.pid) if args.pid else None,
        "problems": problems[:5],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print("completed %(completed)d, 429 %(rejected_429)d, lost/garbled %(lost_or_garbled)d in %(wall_s).1f s | "
              "%(requests_per_s).2f req/s | TTFT p50 %(ttft_p50_s).2f s p99 %(ttft_p99_s).2f s | %(tokens_per_s).1f tokens/s" % report)
        for p in problems[:5]:
            print("  problem:", p)
    return 0 if not problems and len(ok) + len(rejected) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
