"""`python -m mmssl COMMAND ...` (and `torchrun ... -m mmssl train RECIPE`): the `mmssl` command line."""

import sys

from mmssl.commands import main

if __name__ == "__main__":
    sys.exit(main())
