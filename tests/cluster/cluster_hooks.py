"""Run in every worker of the test cluster at its start (Ray's `worker_process_setup_hook`):
each tensor's merge sleeps while a flag file exists, so a test can catch a step mid-build."""

from __future__ import annotations

import os
import time

SLOW_FILE = "MERGEPKG_TEST_SLOW_FILE"  # set in every node's environment by the fixture
PAUSE = 0.3  # seconds per tensor while the flag is up: the lost node must die mid-step, well before its end


def slow_when_flagged() -> None:
    import mergepkg.engine.step as step

    flag = os.environ.get(SLOW_FILE)
    original = step.merge_tensor

    def merge_tensor(*args, **kwargs):
        if flag and os.path.exists(flag):
            time.sleep(PAUSE)
        return original(*args, **kwargs)

    step.merge_tensor = merge_tensor
