"""`python -m halfv_export.cli ...`: the same command as the `halfv-export` console script."""

from . import main

main()
