#!/usr/bin/env python3
"""An asyncio open- or closed-loop load generator for Lens's POST /predict (see --help).

The code is lensbench/openloop.py; this file keeps the command name.
Running it puts scripts/ on sys.path, which is where lensbench is.
"""

from lensbench.openloop import main

main()
