"""`python -m taskstream ...`: the same as the `taskstream` command."""

from taskstream.cli import main

if __name__ == "__main__":
    main(prog_name="taskstream")
