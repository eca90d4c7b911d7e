"""Put on PYTHONPATH by tests/flows/test_demo.py: delays the start of `prefect server start` by
GRAFT_TEST_SERVER_DELAY seconds, as a busy machine would, and nothing else."""

import os
import sys
import time

if os.environ.get("GRAFT_TEST_SERVER_DELAY") and sys.orig_argv[1:4] == ["-m", "prefect", "server"]:
    time.sleep(float(os.environ["GRAFT_TEST_SERVER_DELAY"]))
