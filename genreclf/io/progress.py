"""Progress of long Spark work in the logs: a line every few seconds while stages run."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("genreclf.io.progress")


class SparkProgress:
    """Context manager: logs ``label: done/total tasks (pct), elapsed`` for active stages every ``interval`` s."""

    def __init__(self, spark_context, label: str, interval: float = 10.0):
        self._sc = spark_context
        self._label = label
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{label}", daemon=True)
        self._started = None

    def __enter__(self):
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False

    def _run(self):
        tracker = self._sc.statusTracker()
        while not self._stop.wait(self._interval):
            try:
                stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            except Exception:  # the context is stopping: progress is best effort
                return
            for st in filter(None, stages):
                if st.numTasks:
                    log.info("%s: stage %d %d/%d tasks done (%.0f%%), %d running, %.0f s elapsed", self._label,
                             st.stageId, st.numCompletedTasks, st.numTasks, 100.0 * st.numCompletedTasks / st.numTasks,
                             st.numActiveTasks, time.time() - self._started)
