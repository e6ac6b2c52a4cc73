"""Client defaults, named in one place (as openai-python does)."""

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "UnifiedReward"  # the served model name the authors' clients send
DEFAULT_API_KEY = "EMPTY"  # vLLM needs no key unless started with one (the `shared` profile requires it)
API_KEY_ENV = "UNIFIEDREWARD_API_KEY"  # read when no api_key is given, like openai's OPENAI_API_KEY

# Time and retries. A request is retried only on failures that may pass: transport errors (connect, read,
# reset, protocol, timeout), 408, 409, 429, 5xx, errors inside a stream and answers vLLM aborted; never on
# a 4xx that names the input. A Retry-After is honoured up to RETRY_BACKOFF_MAX_S.
DEFAULT_TIMEOUT_S = 120.0  # per request (one attempt)
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # opening a connection: an unreachable replica fails fast, then is skipped
DEFAULT_MAX_RETRIES = 3
RETRY_BACKOFF_BASE_S = 0.25  # jittered exponential backoff: base * 2**attempt * U(0.5, 1), capped
RETRY_BACKOFF_MAX_S = 8.0
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# Answers that say the endpoint itself is unwell (not the request): skip it for a cool-down.
ENDPOINT_DOWN_STATUS = frozenset({502, 503, 504})

# Batches: requests in flight at once. vLLM batches them continuously on the server; 64 keeps a 2B model
# busy on one GPU without queueing far ahead of it.
DEFAULT_CONCURRENCY = 64
# Items encoded ahead of the in-flight ones, as a multiple of the concurrency: the next requests are ready
# when places free up, and memory stays bounded.
ENCODE_AHEAD = 1
# Pooled HTTP connections shared by all endpoints of one client.
MAX_CONNECTIONS = 512

# Time to wait with no bytes arriving before an answer is abandoned as stalled (a hung engine, a half-dead
# proxy), its endpoint marked and the request retried elsewhere. Every answer is read as a stream so that
# silence is seen: between the request and its head, the head and the first token, and any two chunks.
# Measured (benchmarks.replicas, 2026-12-01): the longest silence of a healthy answer on one tiny CPU replica was
# 4.2 s at 64 requests in flight and 17.9 s at 256; a GPU drains the same queue 10-100x faster (a 256-deep queue
# at ~200 pairs/s is ~1.3 s). The default sits above both; a shared endpoint queued deeper needs more.
DEFAULT_STALL_TIMEOUT_S = 30.0
# Streamed answers send a chunk every this many tokens (vLLM's per-request `stream_interval`; the first token
# always goes at once): a long answer costs the API server as much CPU streamed as plain (measured: 153-token
# answers 48 ms/pair streamed token by token, 27 ms plain, 27 ms at 16).
STREAM_INTERVAL_TOKENS = 16

# Affinity: requests with the same key (a group's pairs, debias' two orders, a caller's own key) go to the same
# endpoint by rendezvous hashing, so its prefix, encoder and processor caches serve the images they share. The
# load bound (Mirrokni, Thorup, Zadimoghaddam 2018): an endpoint holding more than AFFINITY_LOAD_FACTOR x the
# mean in flight (and at least AFFINITY_MIN_LOAD) passes the key's request to the key's next endpoint.
AFFINITY_LOAD_FACTOR = 1.25
# Below this many requests in flight an endpoint is never called overloaded: one GRPO group of 8 (28 pairs)
# stays whole on its replica, where splitting it would only compute its images twice.
AFFINITY_MIN_LOAD = 32
# The header that carries a request's affinity key (hashed): the nginx front (unifiedreward.serving.frontend) hashes on it.
AFFINITY_HEADER = "X-UnifiedReward-Affinity"
# vLLM's own header pinning a request to one data-parallel rank (vllm/entrypoints/generate/base/serving.py).
DATA_PARALLEL_RANK_HEADER = "X-data-parallel-rank"

# Endpoints: a failing endpoint is skipped for a cool-down, then probed on /health before taking traffic.
ENDPOINT_COOLDOWN_S = 1.0
ENDPOINT_COOLDOWN_MAX_S = 30.0
HEALTH_TIMEOUT_S = 2.0

# Images are resized on the client to the size the server would pick anyway (Qwen3-VL: 32-pixel grid,
# 65536..262144 pixels, the authors' training cap), so no bytes are sent that the server throws away.
IMAGE_FACTOR = 32  # patch 16 x spatial merge 2
MIN_PIXELS = 65536
MAX_PIXELS = 262144
# The authors' own client sends JPEG at quality 95; we keep their input distribution.
DEFAULT_IMAGE_FORMAT = "JPEG"
DEFAULT_JPEG_QUALITY = 95
# finish_reason values of a 200 answer that carries no finished output (vLLM: aborted, e.g. by a replica
# shutting down, or failed in the engine): retried like a 503.
UNFINISHED_REASONS = frozenset({"abort", "error"})
