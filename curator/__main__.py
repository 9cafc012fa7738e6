"""``python -m curator`` is the ``curator`` command line."""

from curator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
