"""Closed-loop load: N workers call as fast as they can for a while."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.stats import percentile


@dataclass(frozen=True)
class LoadResult:
    """Throughput and latency of one load run."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def closed_loop(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
) -> LoadResult:
    """Keep ``concurrency`` calls in flight for ``duration`` seconds."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = 0.0

    async def worker() -> None:
        nonlocal errors
        while True:
            started = time.perf_counter()
            if measuring and started >= stop_at:
                return
            try:
                await call()
            except Exception:  # noqa: BLE001 - every failure counts as an error
                if measuring:
                    errors += 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - started)

    warm_tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    began = time.perf_counter()
    stop_at = began + duration
    await asyncio.gather(*warm_tasks)
    elapsed = time.perf_counter() - began
    if not latencies:
        return LoadResult(0, errors, elapsed, float("nan"), float("nan"))
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
    )
