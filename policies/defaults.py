"""The project's default policies by registry name: what the live service runs unless its config
says otherwise, and what `t2i trace cache` measures when no policy is named, so an offline
figure printed without flags is the figure of the code that serves.
"""

from __future__ import annotations

DEFAULT_EVICTION = "cost-aware"  # the replica model cache, the ControlNet cache and the LoRA store
# Adapter-level prefetch in the live service: none (the coordinator's bandit prefetches whole
# pipelines into free replica memory, which the adapter cache simulation does not model)
DEFAULT_ADAPTER_PREFETCH = "none"
