"""Client defaults, named in one place (as openai-python does)."""

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "UnifiedReward"  # the served model name the authors' clients send
DEFAULT_API_KEY = "EMPTY"  # vLLM needs no key unless started with --api-key
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 2

# Images are resized on the client to the size the server would pick anyway (Qwen3-VL: 32-pixel grid,
# 65536..262144 pixels, the authors' training cap), so no bytes are sent that the server throws away.
IMAGE_FACTOR = 32  # patch 16 x spatial merge 2
MIN_PIXELS = 65536
MAX_PIXELS = 262144
# The authors' own client sends JPEG at quality 95; we keep their input distribution.
DEFAULT_IMAGE_FORMAT = "JPEG"
DEFAULT_JPEG_QUALITY = 95
