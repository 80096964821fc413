"""Report generators: tables and grids for the docs, from tracked runs or from counting (benchmarks/README.md)."""
