"""A load test of `flowrl serve-reward` on this machine (loopback only, bounded in count and time):
many concurrent clients, bad requests, clients that vanish and connections that idle. Prints
what each phase got and the most request threads the server held at once.

    python benchmarks/reward_server_load.py --clients 200
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
import torch

from flowrl.rewards.registry import FunctionReward
from flowrl.rewards.remote import RemoteReward
from flowrl.rewards.serve import HEADER_TIMEOUT, MAX_CONNECTIONS, make_server


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


class ThreadPeak:
    """The most server request threads alive at once, sampled every 5 ms."""

    def __init__(self) -> None:
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    @staticmethod
    def serving() -> int:
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.serving())
            time.sleep(0.005)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def raw_status(server, headers: str) -> int:
    """The status line's code for a POST /score with these headers and no body sent."""
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as sock:
        sock.sendall(f"POST /score HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        return int(sock.recv(200).split(b" ")[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (each one request of 4 images)")
    parser.add_argument("--idle", type=int, default=50, help="connections opened and left idle")
    args = parser.parse_args(argv)
    server = make_server(FunctionReward(brightness, "brightness"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = RemoteReward(url, concurrency=1, deadline=120.0)
    images = torch.rand(args.clients, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    peak, start = ThreadPeak(), time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        scores = list(pool.map(lambda batch: client.score(batch, ["a"] * 4), images))
    seconds = time.perf_counter() - start
    right = all(torch.allclose(s, brightness(b, None), atol=1e-3) for s, b in zip(scores, images))
    print(f"{args.clients} concurrent clients: all answered {right}, in {seconds:.1f} s; "
          f"most request threads at once {peak.stop()} (the pool: {MAX_CONNECTIONS})")  # fmt: skip

    statuses = Counter()
    score = f"{url}/score"
    statuses["oversized body (1 GB declared, nothing sent)"] = raw_status(server, "Content-Length: 1073741824\r\n")
    statuses["malformed body"] = requests.post(score, data=b"not safetensors").status_code
    statuses["empty body"] = requests.post(score, data=b"").status_code
    statuses["unknown endpoint"] = requests.post(f"{url}/nowhere", data=b"").status_code
    for what, status in statuses.items():
        print(f"{what}: HTTP {status}")

    peak = ThreadPeak()
    for _ in range(50):  # clients that vanish mid-request
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as sock:
            sock.sendall(b"POST /score HTTP/1.1\r\nContent-Length: 100000\r\n\r\npartial")
    idle = [socket.create_connection(("127.0.0.1", server.server_address[1])) for _ in range(args.idle)]
    time.sleep(0.5)
    held = ThreadPeak.serving()
    after = client.score(images[0], ["a"] * 4)
    print(f"50 clients gone mid-body, then {args.idle} idle connections: {held} request threads held "
          f"(at most {MAX_CONNECTIONS}); a request beside them answered {torch.allclose(after, brightness(images[0], None), atol=1e-3)}")  # fmt: skip
    for sock in idle:
        sock.close()
    time.sleep(2.0)
    kept = ThreadPeak.serving()
    time.sleep(HEADER_TIMEOUT + 1)
    print(
        f"request threads 2 s after the idle connections closed: {kept} (the client's kept-alive connections), "
        f"{HEADER_TIMEOUT + 3:.0f} s after: {ThreadPeak.serving()}; peak {peak.stop()}"
    )
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
