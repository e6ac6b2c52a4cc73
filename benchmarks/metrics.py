"""Read vLLM's Prometheus counters: computed versus cached prompt tokens, the KV block size."""
from __future__ import annotations

import re

import httpx


def scrape(server_url: str) -> dict[str, float]:
    text = httpx.get(server_url.rstrip("/") + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        values = re.findall(rf"^{re.escape(name)}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
        out[name.split(":")[1]] = sum(float(v) for v in values)
    block = re.search(r'^vllm:cache_config_info{[^}]*\bblock_size="(\d+)"', text, re.MULTILINE)
    out["block_size"] = float(block.group(1)) if block else 16.0
    return out


def computed_prompt_tokens(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(queried, computed) prompt tokens between two scrapes: computed = queried - served from the cache."""
    queried = after["prefix_cache_queries_total"] - before["prefix_cache_queries_total"]
    hits = after["prefix_cache_hits_total"] - before["prefix_cache_hits_total"]
    return queried, queried - hits
