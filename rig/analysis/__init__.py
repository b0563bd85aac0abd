"""Analysis: everything `rig diff` decides. Alignment and metrics (diff.py), statistics (stats.py), task-level
scoring (scoring.py), aggregates, the floor table and the verdict (summary.py), and the entry point (compare.py).

Presentation (rig.report, the terminal) renders the documents built here and decides nothing. Nothing here imports
torch.
"""
