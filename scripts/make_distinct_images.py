#!/usr/bin/env python3
"""Make N distinct, real-size photos for the load tests (see --help).

The code is lensbench/distinct_photos.py; this file keeps the command name.
Running it puts scripts/ on sys.path, which is where lensbench is.
"""

from lensbench.distinct_photos import main

main()
