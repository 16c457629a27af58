"""What the benchmark scripts share: process setup (env), models and modes, child probes, the old
transformers-Flax runner, and the report (table, targets, chart). Measuring itself is in ``jaxgen.bench``."""
