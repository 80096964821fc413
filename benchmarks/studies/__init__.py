"""Studies: they train models and measure their quality; results go to docs/results/<study>/ (benchmarks/README.md).
`common` holds what several studies share: training a config to its EMA model, and scoring it."""
