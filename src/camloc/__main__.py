"""``python -m camloc``: the ``camloc`` command."""

from camloc.cli import console

if __name__ == "__main__":
    console()
