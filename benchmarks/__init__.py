"""The project's benchmarks, studies and report generators, sorted by kind (benchmarks/README.md is the index).

    speed/     speed benchmarks: each prints a ratio against a baseline measured in the same run (`make bench`)
    studies/   studies that train models and measure their quality; results under docs/results/
    reports/   report generators: tables from tracked runs or from counting, for the docs

Run a script as a module from the repository root, `python -m benchmarks.speed.step_cost`; `device_check.py` also
runs as a file on a bare GPU machine. Nothing here is imported by `imm/` or `orchestrator/`.
"""
