"""Recording runs: what to run (spec), on which prompts (suite), the loop that drives a stack (runner), and the run
directory it writes and every reader checks (store).

    spec.py     RunSpec / SamplingSpec, TOML and flags, canonical hash, one translator per stack
    suite.py    suite schema, harmony rendering, token hashes; bundled suites in suites/
    runner.py   batches, stack lifecycle, telemetry phases, manifest, resume, scoring
    store.py    RunWriter (atomic parts) and RunReader (schema and hash checks)
"""
