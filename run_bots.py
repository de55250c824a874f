#!/usr/bin/env python3
"""TalkTwin's one entry point. `python run_bots.py --help` lists the commands."""

import sys

from bots.cli import main

if __name__ == "__main__":
    sys.exit(main())
