"""Presentation: the terminal view (terminal.py) and the self-contained HTML report (html.py, svg.py, tokens.py).

Everything here renders what rig.analysis returns; the verdict and every number are decided there. Nothing here
imports torch.

    from rig.report.html import build_report
    build_report(["runs/hf", "runs/vllm"], "report.html")
"""
