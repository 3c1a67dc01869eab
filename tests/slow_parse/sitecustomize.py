"""Makes math-verify slow in every Python process started with this folder on PYTHONPATH
(test_sandbox.py's warm-up and busy-machine tests; the forkserver of score_batch inherits it).

SLOW_PARSE_COLD_CPU_S: the first parse of a process burns that much CPU time first, as a cold
    import of sympy's lazy modules does; it only counts as done once it has run to its end.
SLOW_PARSE_SLEEP_S: every parse under an armed alarm (inside sandbox.deadline) sleeps that long
    first, as on a machine too busy to run it (the warm-up, outside deadlines, stays fast).
"""
import os
import signal
import time

import math_verify

_parse = math_verify.parse
_cold = [float(os.environ.get("SLOW_PARSE_COLD_CPU_S", "0"))]
_sleep = float(os.environ.get("SLOW_PARSE_SLEEP_S", "0"))


def _slow_parse(*args, **kwargs):
    if _cold[0]:
        start = time.thread_time()
        while time.thread_time() - start < _cold[0]:
            pass
        _cold[0] = 0.0
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        time.sleep(_sleep)
    return _parse(*args, **kwargs)


math_verify.parse = _slow_parse
