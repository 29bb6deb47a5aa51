"""The two simulator workloads the policy benchmarks share, so they compare like with like.

- katz-synth: a Katz-shaped synthetic trace (seeded) over gpus + gpus // 15 instances, arrivals
  compressed by ``time_scale`` so caching and queueing matter, one SLO;
- gentd26: GenTD26 `data_trace_processed.csv` (real base-model and LoRA ids), arrivals a Poisson
  process shaped like its qps.csv at ``mean_qps``, the trace's exec seconds as service time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def katz_synth(requests: int, gpus: int, seed: int = 0, time_scale: float = 10.0, slo_s: float = 30.0):
    """(table, SimConfig) of the katz-synth workload."""
    from trace_replay.formats import load_trace
    from trace_replay.simulator import SimConfig
    from trace_replay.simulator.config import ClusterSpec
    from trace_replay.synth import SynthConfig, write_katz_json

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "synth.json"
        write_katz_json(SynthConfig(requests=requests, instances=gpus + gpus // 15, seed=seed), trace)
        table = load_trace(trace, "katz")
    return table, SimConfig(cluster=ClusterSpec(gpus=gpus), time_scale=time_scale, slo_s=slo_s, seed=seed)


def gentd26(data: Path, gpus: int = 64, seed: int = 0, mean_qps: float = 0.5, slo_s: float = 60.0):
    """(table, SimConfig) of the GenTD26 workload, or None when the data folder lacks the trace."""
    from trace_replay.formats import load_trace
    from trace_replay.simulator import SimConfig
    from trace_replay.simulator.config import ClusterSpec, InferenceSpec

    proc = Path(data) / "data_trace_processed.csv"
    if not proc.exists():
        print(f"gentd26 skipped: {proc} not found (../shared/data absent)", flush=True)
        return None
    table = load_trace(proc, "gentd26-processed", qps_path=Path(data) / "qps.csv", seed=seed, mean_qps=mean_qps)
    return table, SimConfig(cluster=ClusterSpec(gpus=gpus), slo_s=slo_s, seed=seed,
                            inference=InferenceSpec(use_trace_exec=True))
