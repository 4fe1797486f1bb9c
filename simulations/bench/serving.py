"""Benchmark: the node's model service against calling the model directly, and a hot swap.

For each task a store is made with a signed release (a freshly initialised model: serving
cost does not depend on how well it was trained), and measured side by side in one run:

* **direct** — the model's forward pass on one row in this process (``torch.inference_mode``);
* **HTTP, W workers** — ``federator node serve --workers W`` as its own process, driven by
  real HTTP clients (httpx, keep-alive) on the same machine:
  - latency: one client sending single-row requests back to back (p50, p99, and the p50
    overhead over the direct call), once as JSON and once as a raw float32 body
    (``Content-Type: application/octet-stream``);
  - throughput: two clients sending 64-row batches; halfway through a new release is
    installed in the store, so the count of failed requests is across a hot swap under load.

The clients share the machine's cores with the service, so throughput is a lower bound.

    python -m federator.simulations.bench.serving [--seconds 5] [--tasks digits-mlp mnist-cnn]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import torch
from rich.console import Console

from federator.client.keys import generate_keys, load_private_key
from federator.client.serving.inputs import RAW_FLOAT32
from federator.client.serving.model import load_served
from federator.client.store import ModelStore
from federator.client.tasks import resolve_task
from federator.client.weights import model_arrays, save_safetensors
from federator.server.releases import ReleaseSigner
from federator.simulations.bench._common import print_table

BATCH = 64
RAW_HEADERS = {"Content-Type": RAW_FLOAT32}


def _install(store: ModelStore, key_path: Path, task: str, version: int, folder: Path) -> None:
    """Sign version ``version`` of a fresh ``task`` model and install it, as a node does."""
    out = folder / f"release-{version}"
    out.mkdir()
    torch.manual_seed(version)
    save_safetensors(model_arrays(resolve_task(task).build_model()), out / "weights.safetensors")
    (out / "lineage.json").write_text("{}")
    signed = ReleaseSigner(load_private_key(key_path)).sign(
        model=store.model, version=version, previous_version=None, round=version,
        federation="bench", run_id="bench", task=task, reasons=["benchmark"], metrics={},
        folder=out, valid_for=timedelta(days=1), now=lambda: datetime.now(UTC),
    )  # fmt: skip
    store.install(signed.envelope, signed.files)


def _install_when(
    swap: threading.Event, store: ModelStore, key: Path, task: str, version: int, folder: Path
) -> None:
    swap.wait()
    _install(store, key, task, version, folder)


def _quantiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def direct_latency(store: ModelStore, *, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) of the model's forward pass on one row, in this process."""
    torch.set_num_threads(1)
    served = load_served(store)
    row = torch.from_numpy(np.random.default_rng(0).random((1, *served.input_shape), np.float32))
    times = []
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            served.module(row)
            times.append(time.perf_counter() - t0)
    return _quantiles(times)


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def start_service(store: ModelStore, *, workers: int, log: Path) -> Service:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    federator = Path(sys.executable).parent / "federator"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(federator), "node", "serve", "--store", str(store.root), "--port", str(port),
             "--workers", str(workers), "--poll", "0.2"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    service = Service(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{service.url}/health", timeout=1).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"node serve did not start:\n{log.read_text()}")


def _timed(
    url: str, call: Callable[[httpx.Client], httpx.Response], *, seconds: float
) -> tuple[float, float]:
    """p50 and p99 (ms) of ``call`` made back to back by one client (after 20 to warm the
    connection and the service)."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(20):
            call(client)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            reply = call(client)
            times.append(time.perf_counter() - t0)
            reply.raise_for_status()
    return _quantiles(times)


def http_latency(
    url: str, shape: tuple[int, ...], *, seconds: float, raw: bool = False
) -> tuple[float, float]:
    """Single-row requests. Each request's body is encoded inside the timed span (as a
    client must), as JSON or, with ``raw``, as float32 bytes."""
    row = np.random.default_rng(0).random((1, *shape)).astype(np.float32)

    def post(client: httpx.Client) -> httpx.Response:
        if raw:
            return client.post("/predict", content=row.tobytes(), headers=RAW_HEADERS)
        return client.post("/predict", json={"inputs": row.tolist()})

    return _timed(url, post, seconds=seconds)


def http_floor(url: str, *, seconds: float) -> tuple[float, float]:
    """``GET /health``: the HTTP round trip itself (client, server, no model), the part of
    the overhead no request format can remove."""
    return _timed(url, lambda client: client.get("/health"), seconds=seconds)


def throughput_across_swap(
    url: str, shape: tuple[int, ...], *, seconds: float, swap: threading.Event
) -> tuple[float, int, set[int]]:
    """Rows per second of two clients sending 64-row batches; ``swap`` is set halfway.
    Returns the rate, the failed requests and the versions that answered."""
    body = {"inputs": np.random.default_rng(1).random((BATCH, *shape)).round(4).tolist()}
    done, failed, versions, lock = [0], [0], set(), threading.Lock()
    stop = threading.Event()

    def drive() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    reply = client.post("/predict", json=body)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        done[0] += 1
                        versions.add(reply.json()["version"])
                    else:
                        failed[0] += 1

    threads = [threading.Thread(target=drive) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    swap.set()
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    return done[0] * BATCH / (time.perf_counter() - t0), failed[0], versions


def bench_task(task: str, *, workers: list[int], seconds: float, tmp: Path) -> list[list[str]]:
    keys = generate_keys(tmp / task / "keys")
    store = ModelStore.open(tmp / task / "store", pinned_key=keys.public, model="bench", keep=3)
    version = 1
    _install(store, keys.private, task, version, tmp / task)
    shape = resolve_task(task).input_shape
    d50, d99 = direct_latency(store, seconds=seconds)
    rows = [[task, "direct (in process)", f"{d50:.3f}", f"{d99:.3f}", "–", "–", "–"]]
    for w in workers:
        service = start_service(store, workers=w, log=tmp / task / f"serve-{w}.log")
        try:
            p50, p99 = http_latency(service.url, shape, seconds=seconds)
            r50, r99 = http_latency(service.url, shape, seconds=seconds, raw=True)
            f50, f99 = http_floor(service.url, seconds=seconds / 2)
            version += 1
            swap = threading.Event()
            installer = threading.Thread(
                target=_install_when, args=(swap, store, keys.private, task, version, tmp / task)
            )
            installer.start()
            rate, failed, seen = throughput_across_swap(
                service.url, shape, seconds=seconds, swap=swap
            )
            installer.join()
        finally:
            service.stop()
        workers_ = f"{w} worker{'s' if w > 1 else ''}"
        rows.append(
            [
                task, f"HTTP JSON, {workers_}", f"{p50:.3f}", f"{p99:.3f}",
                f"{p50 - d50:+.3f}", f"{rate:,.0f}",
                f"{failed} ({', '.join(f'v{v}' for v in sorted(seen))} answered)",
            ]
        )  # fmt: skip
        rows.append(
            [task, f"HTTP raw float32, {workers_}", f"{r50:.3f}", f"{r99:.3f}",
             f"{r50 - d50:+.3f}", "–", "–"]
        )  # fmt: skip
        rows.append(
            [task, f"GET /health (HTTP floor), {workers_}", f"{f50:.3f}", f"{f99:.3f}", "–", "–",
             "–"]
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tasks", nargs="*", default=["digits-mlp", "mnist-cnn"])
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="1 s per measurement, digits only")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.tasks = 1.0, ["digits-mlp"]
    console = Console()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="federator-serve-bench-") as tmp:
        for task in args.tasks:
            rows += bench_task(task, workers=args.workers, seconds=args.seconds, tmp=Path(tmp))
    print_table(
        console,
        title=f"Model service vs the model called directly ({os.cpu_count()} cores, "
        f"{args.seconds:g} s per measurement)",
        header=[
            "task", "path", "p50 (ms), 1 row", "p99 (ms)", "p50 overhead (ms)",
            f"rows/s ({BATCH}-row batches)", "failed requests across a hot swap",
        ],
        rows=rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
