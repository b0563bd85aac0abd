"""Evaluations from the ecosystem, run through the rig: suites imported from the benchmarks' own files, answers checked
by the field's libraries, and statistics for the repeats those benchmarks use (docs/evals.md).

    tabular.py    rows from local JSONL, CSV or Parquet files
    importers.py  rows -> suite records with a field mapping (presets gpqa, aime, ifeval), provenance header
    lmeval.py     lm-evaluation-harness tasks (definitions and documents from local files or caches) -> suite records
    scorers.py    math (math-verify), mc (lighteval's and lm-eval's letter extraction), ifeval (lm-eval's IFEval)

Nothing here imports torch, and the libraries (math-verify, lm-eval) load only when a suite or a score needs them.
"""
