"""``python -m bhvit_export``: the same CLI as the ``bhvit-export`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
