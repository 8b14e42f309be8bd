"""`python -m tuneforge ...`: the CLI; torchrun starts each rank this way (`torchrun -m tuneforge train ...`)."""

from tuneforge.cli.main import main

main()
