"""Precision sweeps: a grid of settings around a base spec, every cell an ordinary run, every cell judged against a
reference with the floor-aware verdict of `rig diff` (docs/sweep.md).

    plan.py      the grid, the cells, the reference and its replicates; plan.json
    cells.py     one cell into its run directory: new, resumed, cached, or skipped with the stack's reason
    driver.py    run_sweep: an executor over the cells, then the diffs and the documents; the local executor
    ray_exec.py  the Ray executor: cells as tasks across boxes, run directories streamed back part by part
    matrix.py    the diffs against the reference and the sweep document (cells x metrics, verdicts)
    table.py     the matrix in the terminal (the heatmap page is rig.report.sweep_html)

Nothing here imports torch, vllm or ray at import time.
"""
