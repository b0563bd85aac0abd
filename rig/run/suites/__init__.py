"""Bundled prompt suites (JSONL). `rig suite show default` renders one."""
