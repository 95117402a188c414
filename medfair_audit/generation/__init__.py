"""Seeded, sharded, resumable, distributed image generation for audits."""

from .engine import GenerationConfig, Shard, plan_shards, run_shards
from .seeds import image_seed

__all__ = ["GenerationConfig", "Shard", "image_seed", "plan_shards", "run_shards"]
