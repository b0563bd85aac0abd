"""Per-layer localization: where inside the model two stacks part (`rig layers`).

`rig diff` stops at the token: hf and vLLM split at token 16. This package goes inside the model at such positions. Both
stacks run teacher-forced on the identical token prefix with hooks on every decoder layer (Transformers in this
process, vLLM in a child process with its engine in-process and eager); a float64 Transformers run of each checkpoint
is the truth. Per layer and block the error between the stacks is set beside each stack's own error against the
truth, router decisions are compared, and one line per position names the cause.

    targets.py       which positions: first divergences and spikes from `rig diff`, --prompt/--pos, --top N
    capture.py       the capture format (one row per position, O(layers x hidden)) and the Transformers hooks
    reference.py     the float64 reference and the fresh-input mode (each hf block fed the reference's input)
    vllm_capture.py  the vLLM side: `python -m rig.localize.vllm_capture JOB OUT`, one process for every vLLM model
    metrics.py       rel_diff, relative L2, max |error| with its coordinate, error in rounding steps
    verdict.py       router flips, the first bad block, the cause line
    layers.py        the orchestration behind `rig layers` and its JSON document
    table.py         the terminal table (layers x blocks)

Nothing here imports torch, transformers or vLLM at import time. docs/layers.md has the definitions.
"""
