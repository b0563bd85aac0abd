"""Models and faults for testing the rig without real weights: the deterministic tiny gpt-oss (tiny.py)."""
