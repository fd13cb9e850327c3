"""`python -m bganhash` (also what `torchrun -m bganhash` launches) runs the command line."""

from bganhash.cli import main

main()
