"""inference-rig: find where and why two LLM inference stacks disagree.

`import rig` is light on purpose: no torch, transformers or vllm here. The stacks load lazily through
`rig.stacks.get_stack`, so `rig diff` and `rig report` work on a laptop with neither installed.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
