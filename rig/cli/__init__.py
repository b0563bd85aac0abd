"""The `rig` command line: one module per command group, each thin over the library.

    run.py      rig run, rig score, rig tiny-model        (options generated from RunSpec by options.py)
    diff.py     rig diff, rig report                      (rig.analysis decides, rig.report renders)
    show.py     rig show, rig suite show
    suite_import.py  rig suite import                     (rig.evals: files and lm-eval tasks -> suites)
    compare.py  rig compare                               (rig.compare: many endpoints, one provider page)
    env.py      rig env
    verify.py   rig verify                                (rig.run.verify checks every file of a run)
    layers.py   rig layers                                (rig.localize: layer, block, router decision)
    sweep.py    rig sweep                                 (rig.sweep: precision grids, locally or on Ray)
    compare.py, suite_import.py   rig compare, rig suite import   (rig.compare, rig.evals)
    kernels     rig kernels                               (the top-level kernels_check package)
    demo.py     rig demo

Errors a user can cause (a malformed suite, an unknown model, runs that cannot be compared, a dead endpoint) end in
one line on stderr and exit code 2. Exit codes 0 and 1 are verdicts (`rig diff`: agree, diverged); a bug prints its
traceback and exits 3, and Ctrl-C exits 130, so that no crash or interruption reads as a verdict.
"""

from __future__ import annotations

from typing import Any

import click

from rig import __version__
from rig.errors import UserError

EXIT_USER_ERROR = 2  # bad input: one line on stderr
EXIT_BUG = 3  # an unexpected exception: traceback on stderr; never 0, 1 or 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it: never read as a verdict


class RigGroup(click.Group):
    """A click group that turns UserError into one line and exit 2, and any other exception into exit 3."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"rig: error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("rig: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception:  # noqa: BLE001 - a bug: show it, and exit with a code no verdict uses
            import traceback

            traceback.print_exc()
            click.echo("rig: internal error (a bug in the rig, not a verdict); exit code 3", err=True)
            ctx.exit(EXIT_BUG)


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

    \b
    Exit codes: 0 agree (or success), 1 diverged beyond the verdict's rule, 2 bad input, 3 a bug in the rig.
    """


def _register() -> None:
    """Adds every command group's commands (each module imports only click and light modules at import time)."""
    from rig.cli import bisect, compare, demo, diff, env, layers, run, show, suite_import, sweep, verify

    for module in (run, show, diff, env, demo, verify, bisect, layers, suite_import, compare, sweep):
        for command in module.COMMANDS:
            main.add_command(command)
    from kernels_check.cli import kernels_command  # the top-level package of kernel checks (imports only click)

    main.add_command(kernels_command)


_register()
