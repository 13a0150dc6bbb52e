"""`python -m jobctl`: the same as the `jobctl` script (the worker runs its cleanup this way)."""

from jobctl.cli import main

if __name__ == "__main__":
    main()
