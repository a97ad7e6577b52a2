"""`python -m rlvr ...` (also what `accelerate launch -m rlvr` runs)."""

from rlvr.cli import main

main()
