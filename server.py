"""Entry point: the HTTP API with the embedded local worker (``opeva-spool serve``)."""

import sys

from opeva_spool.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
