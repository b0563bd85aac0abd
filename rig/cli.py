"""The `rig` command. Each command is thin: it parses options and calls library functions.

Errors a user can cause (a malformed suite, an unknown model, runs that cannot be compared, a dead endpoint) end in
one line on stderr and exit code 2; bugs still raise with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from rig import __version__
from rig.errors import UserError


class RigGroup(click.Group):
    """A click group that turns UserError into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"rig: error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=RigGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rig")
def main() -> None:
    """Find out why two LLM inference stacks give different answers for the same model.

    \b
    Typical session:
      rig tiny-model models/tiny                         # a tiny gpt-oss for trying things on a CPU
      rig run --stack hf   --model M --out runs/hf       # record every token's logprob and top-K
      rig run --stack vllm --model M --out runs/vllm
      rig score runs/hf --stack vllm --model M --out runs/vllm-on-hf   # teacher-forced cross-scoring
      rig diff runs/hf runs/vllm --scored runs/vllm-on-hf              # where and how they split
      rig report runs/hf runs/vllm -o report.html
    """


# ---- options shared by run and score -------------------------------------------------------------------------------

SPEC_OPTIONS = [
    click.option(
        "--spec", "spec_file", type=click.Path(dir_okay=False), help="TOML file with RunSpec fields; flags override it."
    ),
    click.option("--stack", type=click.Choice(["hf", "vllm", "openai"]), help="Inference stack. [default: hf]"),
    click.option("--model", help="Local model directory or hub id (openai: the served model name)."),
    click.option("--revision", help="Hub revision (commit) of the model."),
    click.option(
        "--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), help="Activation dtype. [default: bfloat16]"
    ),
    click.option(
        "--quantization", type=click.Choice(["auto", "mxfp4", "dequantize", "none"]), help="MXFP4 path. [default: auto]"
    ),
    click.option(
        "--attention", help="Attention implementation or backend (hf: eager, flex_attention, ...). [default: auto]"
    ),
    click.option("--experts", help="MoE experts implementation (hf: eager, grouped_mm, batched_mm). [default: auto]"),
    click.option("--device", help="cpu, cuda, cuda:1 ... [default: auto]"),
    click.option("--seed", type=int, help="Sampling seed. [default: 0]"),
    click.option("--temperature", type=float, help="0 is greedy. [default: 0]"),
    click.option("--top-p", type=float, help="[default: 1.0]"),
    click.option("--top-k", type=int, help="0 disables. [default: 0]"),
    click.option("--max-new-tokens", type=int, help="[default: 64]"),
    click.option(
        "--stop-token-id", "stop_token_ids", type=int, multiple=True, help="Repeatable. [default: 200002 200012]"
    ),
    click.option("--logprobs", type=int, help="Top-K alternatives recorded per token, 0..20. [default: 20]"),
    click.option("--batch-size", type=int, help="Sequences per batch (and per tokens/ part). [default: 8]"),
    click.option("--samples", type=int, help="Samples per prompt. [default: 1]"),
    click.option("--coupled/--no-coupled", default=None, help="Shared Gumbel noise when sampling. [default: on]"),
    click.option(
        "--engine-arg", "engine_args", multiple=True, metavar="NAME=VALUE", help="Extra stack argument, repeatable."
    ),
    click.option("--max-model-len", type=int, help="vLLM context length."),
    click.option("--base-url", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1"),
    click.option("--api-key-env", help="openai: name of the environment variable holding the API key."),
    click.option("--concurrency", type=int, help="openai: requests in flight. [default: 8]"),
]


def spec_options(f):
    for opt in reversed(SPEC_OPTIONS):
        f = opt(f)
    return f


def build_spec(opts: dict[str, Any]):
    from rig.spec import load_spec, parse_engine_args

    overrides = {
        "stack": opts.get("stack"),
        "model": opts.get("model"),
        "revision": opts.get("revision"),
        "dtype": opts.get("dtype"),
        "quantization": opts.get("quantization"),
        "attention": opts.get("attention"),
        "experts": opts.get("experts"),
        "device": opts.get("device"),
        "logprobs": opts.get("logprobs"),
        "batch_size": opts.get("batch_size"),
        "max_model_len": opts.get("max_model_len"),
        "base_url": opts.get("base_url"),
        "api_key_env": opts.get("api_key_env"),
        "concurrency": opts.get("concurrency"),
        "engine_args": parse_engine_args(opts["engine_args"]) if opts.get("engine_args") else None,
        "sampling.seed": opts.get("seed"),
        "sampling.temperature": opts.get("temperature"),
        "sampling.top_p": opts.get("top_p"),
        "sampling.top_k": opts.get("top_k"),
        "sampling.max_new_tokens": opts.get("max_new_tokens"),
        "sampling.stop_token_ids": list(opts["stop_token_ids"]) if opts.get("stop_token_ids") else None,
        "sampling.samples": opts.get("samples"),
        "sampling.coupled": opts.get("coupled"),
    }
    spec = load_spec(opts.get("spec_file"), overrides)
    if not spec.model:
        raise UserError("no model given: pass --model DIR (or a hub id), or set model in the --spec file")
    return spec


def _execute(label: str, quiet: bool, spec, out, **kwargs):
    """rig.runner.execute with a rich progress bar over batches; returns the run directory."""
    from rig import runner

    update, bar = _progress_runner(label, quiet)
    with bar:
        return runner.execute(spec, out, progress=update, **kwargs)


def _progress_runner(label: str, quiet: bool):
    """A (callback, context manager) pair drawing a rich progress bar over batches."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update, progress


# ---- commands ------------------------------------------------------------------------------------------------------


@main.command()
@spec_options
@click.option("--suite", "suite_name", default="default", show_default=True, help="Bundled suite name or JSONL path.")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date. [default: 2025-08-05]")
@click.option(
    "--reasoning-effort",
    type=click.Choice(["low", "medium", "high"]),
    help="Harmony reasoning effort. [default: medium]",
)
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    help="Continue a killed run from its last complete part.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option(
    "--telemetry-hz", type=float, default=10.0, show_default=True, help="Telemetry sampling rate; 0 turns it off."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def run(suite_name, conversation_date, reasoning_effort, out, resume_dir, force, telemetry_hz, quiet, **opts):
    """Generate completions for a suite and record every token (logprob, top-K) into a run directory.

    \b
    rig run --stack hf --model models/tiny --suite default --out runs/a
    rig run --resume runs/a             # after a crash or kill -9
    """

    if resume_dir:
        path = _execute(
            f"resume {Path(resume_dir).name}", quiet, None, resume_dir, resume=True, telemetry_hz=telemetry_hz
        )
        click.echo(f"resumed and completed {path}")
        return
    if not out:
        raise UserError("--out DIR is required (or --resume DIR)")
    from rig.suite import RenderOptions, load_suite

    render = RenderOptions()
    changes = {
        k: v for k, v in {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}.items() if v
    }
    render = RenderOptions(**{**render.to_dict(), **changes})
    suite = load_suite(suite_name, render)
    spec = build_spec(opts)
    path = _execute(
        f"{spec.stack} {Path(out).name}", quiet, spec, out, suite=suite, force=force, telemetry_hz=telemetry_hz
    )
    click.echo(f"wrote {path} (spec {spec.hash()})")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@spec_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Scored run directory to create.")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--telemetry-hz", type=float, default=10.0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def score(source, out, force, telemetry_hz, quiet, **opts):
    """Teacher-force SOURCE's completions under another stack or configuration.

    The result is a run directory in the same schema (kind "score") whose manifest names the source run and the hash of
    its tokens; `rig diff A B --scored B_ON_A` reads it.
    """
    from rig.runs import RunReader

    src = RunReader(source)
    if src.manifest["status"] != "complete":
        raise UserError(f"{source}: the run is {src.manifest['status']}; only complete runs can be scored")
    spec = build_spec(opts)
    label = f"score {Path(source).name} with {spec.stack}"
    path = _execute(label, quiet, spec, out, source=src, force=force, telemetry_hz=telemetry_hz)
    click.echo(f"wrote {path} (scored {src.name} under spec {spec.hash()})")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--prompts/--no-prompts", default=True, show_default=True, help="List each sequence.")
def show(run_dir, prompts):
    """Summarize a run directory: status, spec, what the stack resolved, counts, timings, telemetry."""
    from rig.show import show_run

    show_run(run_dir, with_prompts=prompts)


@main.group()
def suite():
    """Prompt suites."""


@suite.command("show")
@click.argument("name_or_path")
@click.option("--date", "conversation_date", default=None, help="Harmony conversation date.")
@click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]))
@click.option("--tokens", is_flag=True, help="Print the token IDs too.")
def suite_show(name_or_path, conversation_date, reasoning_effort, tokens):
    """Render a suite (bundled NAME or PATH) and print each prompt with its token count."""
    from rig.show import show_suite
    from rig.suite import RenderOptions, load_suite

    base = RenderOptions().to_dict()
    base.update(
        {k: v for k, v in {"conversation_date": conversation_date, "reasoning_effort": reasoning_effort}.items() if v}
    )
    show_suite(load_suite(name_or_path, RenderOptions(**base)), with_tokens=tokens)


@main.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--no-tokenizer", is_flag=True, help="Skip the tokenizer files (faster).")
def tiny_model(out_dir, no_tokenizer):
    """Build the deterministic tiny gpt-oss checkpoint (real architecture, real vocabulary) into OUT_DIR."""
    from rig.tiny import build_tiny_model

    hashes = build_tiny_model(out_dir, with_tokenizer=not no_tokenizer)
    for name, digest in hashes.items():
        click.echo(f"{digest[:16]}  {name}")


@main.command()
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
    from rig.demo import run_demo

    sys.exit(run_demo(Path(model_dir), Path(out_dir), max_new_tokens=max_new_tokens, stacks=stacks.split(",")))


def _register() -> None:
    """Commands contributed by feature modules (each imports only click and light modules at import time)."""
    from rig.commands.diff import diff_command, report_command
    from rig.commands.env import env_command

    for command in (diff_command, report_command, env_command):
        main.add_command(command)


_register()
