"""Entry point: the worker for one host (``opeva-spool agent``)."""

import sys

from opeva_spool.cli import main

if __name__ == "__main__":
    sys.exit(main(["agent", *sys.argv[1:]]))
