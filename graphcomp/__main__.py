"""`python -m graphcomp` is the `graphcomp` command."""

from graphcomp.cli import main

main()
