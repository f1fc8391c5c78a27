"""What the pipeline's command lines share."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit 2 (not a usage dump)."""

    def error(self, message):  # noqa: D401 - argparse's API
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")
