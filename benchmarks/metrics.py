"""Read vLLM's Prometheus counters: computed versus cached prompt tokens, the KV block size."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

# Sample names, which keep the `_total` suffix (the parser drops it from counter family names only).
COUNTERS = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
            "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total")
CACHE_INFO = "vllm:cache_config_info"
DEFAULT_BLOCK_SIZE = 16.0  # vLLM's default, for a server that does not export its cache config


def parse_metrics(text: str) -> dict[str, float]:
    """The counters summed over their label sets (one per engine under data parallelism), keyed without the
    `vllm:` prefix, and the KV block size; a pure function of the /metrics text so it can be tested offline."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    block_size: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
            elif sample.name == CACHE_INFO and block_size is None and "block_size" in sample.labels:
                block_size = float(sample.labels["block_size"])
    out = {name.split(":", 1)[1]: value for name, value in totals.items()}
    out["block_size"] = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    return out


def sample_total(text: str, name: str, **labels: str) -> float:
    """A /metrics sample summed over its label sets (those matching `labels`): API processes, engines, tenants."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def scrape(server_url: str, api_key: str | None = None) -> dict[str, float]:
    """`parse_metrics` of the server's /metrics now (`server_url` without the /v1 suffix)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    response = httpx.get(server_url.rstrip("/") + "/metrics", timeout=10, headers=headers)
    response.raise_for_status()
    return parse_metrics(response.text)


def computed_prompt_tokens(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(queried, computed) prompt tokens between two scrapes: computed = queried - served from the cache."""
    queried = after["prefix_cache_queries_total"] - before["prefix_cache_queries_total"]
    hits = after["prefix_cache_hits_total"] - before["prefix_cache_hits_total"]
    return queried, queried - hits


def per_engine(server_url: str, api_key: str | None = None) -> dict[str, dict[str, float]]:
    """The counters per `engine` label (one per data-parallel rank): {"0": {...}, "1": {...}}."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    response = httpx.get(server_url.rstrip("/") + "/metrics", timeout=10, headers=headers)
    response.raise_for_status()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in COUNTERS and "engine" in sample.labels:
                engine = out.setdefault(sample.labels["engine"], dict.fromkeys(
                    (n.split(":", 1)[1] for n in COUNTERS), 0.0))
                engine[sample.name.split(":", 1)[1]] += sample.value
    return out
