"""benchmarks/equal_latency.py: its per-seed config is a valid experiment of the demo's."""

from __future__ import annotations

from gpuprune.experiment import load_config, parse_config
from script_helpers import load_script


def test_seed_config_of_the_demo_parses() -> None:
    # the demo's config grew per-method sparsities and studies after the script was written,
    # and its first rerun failed on them before any training
    script = load_script("benchmarks/equal_latency.py", "equal_latency")
    base = load_config("configs/demo.yaml").model_dump()
    cfg = parse_config(script.seed_config(base, "dense.safetensors", 2, "cpu"))
    assert cfg.seed == 2 and cfg.prune.methods == ["tile"]
    assert cfg.equal_latency.reference == "tile@0.75" and cfg.equal_latency.methods == ["tile"]
    assert cfg.prune.grid() == [("tile", 0.5), ("tile", 0.75)]
    assert not cfg.oneshot.methods and not cfg.distill_study.methods
