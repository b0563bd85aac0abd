"""`python -m kernels_check` runs the `rig kernels` command standalone."""

from kernels_check.cli import main

main()
