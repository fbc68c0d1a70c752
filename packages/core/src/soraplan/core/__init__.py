"""soraplan.core: what every soraplan package shares (config, shard schema, video I/O, inputs, Ray, jobs)."""
