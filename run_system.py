#!/usr/bin/env python3
"""Start the memesys daemon: ``python run_system.py [--config FILE] [--host H] [--port P] ...``."""

import sys

from memesys.cli.daemon import main

if __name__ == "__main__":
    sys.exit(main())
