"""Stage entry points: a SIGTERM during setup is recorded as a failed run in the audit trail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import REPO
from pathtrail.provenance.audit import chain_problems, read_entries


def test_sigterm_during_setup_records_a_failed_run(tmp_path):
    trail = tmp_path / "trail.jsonl"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(REPO / "src")!r}]
        from pathtrail.provenance import audit
        from pathtrail.pipeline.stagekit import entrypoint

        @entrypoint("demo")
        def main(argv=None):
            with audit.stage("demo", inputs=[], trail={str(trail)!r}):
                print("ready", flush=True)
                time.sleep(30)

        main(["--log-file", {str(tmp_path / "log.jsonl")!r}])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PATHTRAIL_AUDIT_TRAIL": str(trail)})
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 130
    assert time.monotonic() - start < 10
    entries = read_entries(trail)
    assert chain_problems(entries) == []
    assert [(e["action"], e["outcome"]) for e in entries] == [("start", "running"), ("end", "failed")]
    assert "KeyboardInterrupt" in str(entries[-1].get("error"))


def test_a_stage_error_is_printed_once_and_logged_to_the_file(tmp_path):
    log = tmp_path / "log.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO / "src")!r}]
        from pathtrail.core.errors import PathTrailError
        from pathtrail.pipeline.stagekit import entrypoint

        @entrypoint("demo")
        def main(argv=None):
            raise PathTrailError("'data.split.val_fraction' must be between 0 and 1")

        main(["--log-file", {str(log)!r}])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.count("must be between 0 and 1") == 1, done.stderr
    assert "ERROR in stage 'demo'" in done.stderr and "Traceback" not in done.stderr
    assert '"event": "demo.failed"' in log.read_text() and "must be between 0 and 1" in log.read_text()
