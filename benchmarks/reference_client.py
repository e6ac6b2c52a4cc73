"""The authors' request pattern, as their vllm_request.py does it (re-implemented here, not copied): a pool
of worker threads, one requests.Session per thread, every image read from disk, converted to RGB and
re-encoded as JPEG quality 95 at full size, base64 data URLs before the text, one POST per item, a failed
POST sent again (up to 10 times)."""
from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import requests
from PIL import Image


RETRIES = 10  # the authors' vllm_request.py tries a failed request again, up to 10 times


class ReferenceClient:
    def __init__(self, base_url: str, threads: int = 16, model: str = "UnifiedReward") -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.threads = threads
        self.model = model
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "ReferenceClient":
        """One thread pool (and its threads' sessions) for every run until exit, as one long evaluation run of
        the authors' script keeps its pool; without it, each run() makes its own."""
        self._pool = ThreadPoolExecutor(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    @staticmethod
    def encode(path: Path) -> str:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        return base64.b64encode(buffer.getvalue()).decode("utf-8")

    def payload(self, images: Sequence[Path], prompt: str, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{self.encode(p)}"}} for p in images]
        content.append({"type": "text", "text": prompt})
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "do_sample": False,
                "max_tokens": max_tokens, **extra}

    def send(self, images: Sequence[Path], prompt: str, max_tokens: int, extra: dict[str, Any],
             since: float | None = None) -> dict[str, Any]:
        """One item, retried up to `RETRIES` times as the authors' client does (a kept-alive connection the
        server closes just as a request goes out fails that request; their client sends it again). Retries
        are counted in the sample, and their time is in its latency."""
        picked = time.perf_counter()  # a thread took the job (in open loop: `since` is its scheduled arrival)
        started = picked if since is None else since
        body = self.payload(images, prompt, max_tokens, extra)
        encoded = time.perf_counter()
        errors: list[str] = []
        while True:
            try:
                response = self._session().post(self.url, json=body, timeout=300)
                response.raise_for_status()
                break
            except requests.RequestException as exc:
                errors.append(type(exc).__name__)
                self._session().close()  # its broken connection goes; the next try opens a new one
                self._local.session = requests.Session()
                if len(errors) > RETRIES:
                    return {"ok": False, "error": f"{errors[-1]} after {RETRIES} retries", "retries": RETRIES,
                            "latency_s": time.perf_counter() - started}
        done = time.perf_counter()
        # Where a request's time went: waiting for a thread, reading and encoding its images, the HTTP call.
        phases = {"queued": picked - started, "encode": encoded - picked, "http": done - encoded}
        usage = response.json().get("usage") or {}
        if "prompt_tokens" not in usage:  # a figure from the server, never a default in its place
            return {"ok": False, "error": "no usage.prompt_tokens in the answer", "latency_s": done - started}
        return {"ok": True, "latency_s": done - started, "prompt_tokens": usage["prompt_tokens"], "phases_s": phases,
                "retries": len(errors), "retried_after": errors}

    def run(self, jobs: Sequence[tuple[Sequence[Path], str]], max_tokens: int, extra: dict[str, Any],
            arrivals: Sequence[float] | None = None) -> tuple[float, list[dict[str, Any]]]:
        """All jobs through the thread pool: closed loop, or submitted at `arrivals` (seconds from start)."""
        if self._pool is not None:
            return self._through(self._pool, jobs, max_tokens, extra, arrivals)
        with ThreadPoolExecutor(self.threads) as pool:
            return self._through(pool, jobs, max_tokens, extra, arrivals)

    def _through(self, pool: ThreadPoolExecutor, jobs: Sequence[tuple[Sequence[Path], str]], max_tokens: int,
                 extra: dict[str, Any], arrivals: Sequence[float] | None) -> tuple[float, list[dict[str, Any]]]:
        started = time.perf_counter()
        futures = []
        for k, (images, prompt) in enumerate(jobs):
            since = None
            if arrivals is not None:
                since = started + arrivals[k]
                time.sleep(max(0.0, since - time.perf_counter()))
            futures.append(pool.submit(self.send, images, prompt, max_tokens, extra, since))
        samples = [f.result() for f in futures]
        return time.perf_counter() - started, samples
