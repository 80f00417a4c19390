"""`python -m heron` runs the `heron` command."""

from heron.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
