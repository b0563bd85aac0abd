"""`rig demo`: the rig's main job on the embedded default, end to end on a CPU.

It builds the tiny gpt-oss if it is absent, runs the default suite through two stacks (Transformers and vLLM, both
bf16; or two Transformers configurations, bf16 and fp32), cross-scores each run under the other stack, diffs them, and
prints per prompt: identical, or the first divergence position with its near-tie or confident classification, and the
teacher-forced mean |delta logprob| in both directions. It ends by writing the HTML report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from rig.analysis.results import Divergence
from rig.run import runner
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.suite import load_suite
from rig.testing.tiny import build_tiny_model, is_tiny_model


def _specs(model: Path, stacks: list[str], max_new_tokens: int) -> dict[str, RunSpec]:
    sampling = SamplingSpec(max_new_tokens=max_new_tokens)
    if stacks == ["hf", "hf"]:
        return {
            "hf-bf16": RunSpec(stack="hf", model=str(model), dtype="bfloat16", sampling=sampling),
            "hf-fp32": RunSpec(stack="hf", model=str(model), dtype="float32", sampling=sampling),
        }
    if len(stacks) != 2 or len(set(stacks)) != 2:
        from rig.errors import UserError

        raise UserError(f"--stacks takes two stacks, e.g. hf,vllm or hf,hf (got {','.join(stacks)})")
    extra = {"max_model_len": 2048}
    return {
        f"{s}-bf16": RunSpec(
            stack=s, model=str(model), dtype="bfloat16", sampling=sampling, **(extra if s == "vllm" else {})
        )
        for s in stacks
    }


def run_demo(model: Path, out: Path, *, max_new_tokens: int = 48, stacks: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code (0)."""
    from rig.analysis.diff import diff_runs, sequence_teacher
    from rig.analysis.load import load_run
    from rig.report.html import build_report

    console = Console(width=max(Console().width, 118))
    stacks = stacks or ["hf", "vllm"]
    if not is_tiny_model(model):
        console.print(f"[bold]building the tiny gpt-oss[/bold] into {model}")
        build_tiny_model(model)
    suite = load_suite("default")
    specs = _specs(model, stacks, max_new_tokens)
    (name_a, spec_a), (name_b, spec_b) = specs.items()
    paths = {}
    for name, spec in specs.items():
        console.print(
            f"[bold]run[/bold] {name}: {spec.stack} {spec.dtype}, {len(suite.prompts)} prompts x "
            f"{max_new_tokens} tokens"
        )
        paths[name] = runner.execute(spec, out / name, suite=suite, force=True, telemetry_hz=10.0)
    replicate = f"{name_a}-replicate"
    console.print(f"[bold]run[/bold] {replicate}: {name_a} again, the noise floor for the verdict")
    paths[replicate] = runner.execute(spec_a, out / replicate, suite=suite, force=True, telemetry_hz=10.0)
    from rig.run.store import RunReader

    scored = {}
    for src, spec, label in ((name_a, spec_b, f"{name_b}-on-{name_a}"), (name_b, spec_a, f"{name_a}-on-{name_b}")):
        console.print(f"[bold]score[/bold] {src}'s tokens under {spec.stack} {spec.dtype} -> {label}")
        scored[label] = runner.execute(spec, out / label, source=RunReader(paths[src]), force=True, telemetry_hz=10.0)

    a, b = load_run(paths[name_a]), load_run(paths[name_b])
    b_on_a, a_on_b = load_run(scored[f"{name_b}-on-{name_a}"]), load_run(scored[f"{name_a}-on-{name_b}"])
    floor = diff_runs(a, load_run(paths[replicate]), decode_context=False)
    pair = diff_runs(a, b, scored=b_on_a, floor=floor)
    fwd, back = sequence_teacher(a, b_on_a), sequence_teacher(b, a_on_b)

    table = Table(
        title=f"{name_a} against {name_b}: greedy, near-tie when both margins < {pair.tau:g} nats "
        f"({pair.tau_info.get('why')})",
        title_justify="left",
    )
    table.add_column("prompt")
    table.add_column("category")
    table.add_column("first split", justify="right")
    table.add_column("kind")
    table.add_column("margins A / B", justify="right")
    table.add_column("mean|Δlp| B on A", justify="right")
    table.add_column("mean|Δlp| A on B", justify="right")
    seq = pair.seq
    for i in range(len(seq.d)):
        pid = a.prompt_ids[seq.prompt[i]]
        key = (pid, int(seq.sample[i]))
        d = int(seq.d[i])
        table.add_row(
            pid,
            str(seq.category[i]),
            "identical" if d < 0 else f"token {d}",
            "" if d < 0 else Divergence(int(seq.cls[i])).label,
            "" if d < 0 else f"{_f(seq.margin_a[i])} / {_f(seq.margin_b[i])}",
            _f(fwd.get(key)),
            _f(back.get(key)),
        )
    console.print(f"A = {name_a}, B = {name_b}; margins are top-1 minus top-2 logprob (nats) at the first split")
    console.print(table)
    div = seq.d >= 0
    t = pair.teacher
    console.print(
        f"{int((~div).sum())}/{len(div)} sequences identical; "
        f"{int((seq.cls == Divergence.NEAR_TIE).sum())} near-tie and "
        f"{int((seq.cls == Divergence.CONFIDENT).sum())} confident first splits"
        + (f", median first split at token {int(np.median(seq.d[div]))}" if div.any() else "")
        + f". Teacher-forced ({name_b} scoring {name_a}'s tokens): mean |Δlp| {_f(t.get('mean_abs_delta'))} nats, "
        f"max {_f(t.get('max_abs_delta'))}, top-1 agreement {_f(t.get('top1_agreement'))}."
    )
    from rig.analysis.summary import diff_document

    verdict = diff_document(pair, floor=floor)["verdict"]
    color = "green" if verdict["exit_code"] == 0 else "red"
    console.print(f"verdict against the replicate floor: [bold {color}]{verdict['line']}[/bold {color}]")
    report = out / "report.html"
    build_report(
        [paths[name_a], paths[name_b]],
        report,
        scored=[scored[f"{name_b}-on-{name_a}"]],
        floor=[paths[name_a], paths[replicate]],
    )
    console.print(f"report: {report}   (open it in a browser)")
    console.print(
        f"next: rig diff {paths[name_a]} {paths[name_b]} --scored {scored[f'{name_b}-on-{name_a}']} "
        f"--floor {paths[name_a]} {paths[replicate]}"
    )
    return 0


def _f(x: float | None) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.4f}"


@click.command()
@click.option(
    "--model",
    "model_dir",
    default="models/tiny-gpt-oss",
    show_default=True,
    help="Tiny model directory (built if absent).",
)
@click.option("--out", "out_dir", default="runs/demo", show_default=True, help="Where the demo's runs go.")
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--stacks", default="hf,vllm", show_default=True, help="Two stacks to compare (hf,vllm or hf,hf).")
def demo(model_dir, out_dir, max_new_tokens, stacks):
    """Compare two stacks on the tiny gpt-oss and print, per prompt, where they split."""
    sys.exit(run_demo(Path(model_dir), Path(out_dir), max_new_tokens=max_new_tokens, stacks=stacks.split(",")))


COMMANDS = (demo,)
