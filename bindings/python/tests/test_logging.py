"""LaminarDB writes nothing to stderr: its warnings are records of the standard ``logging``
module, logger ``laminardb``."""

import glob
import logging
import os
import subprocess
import sys
import time

import laminardb


def durable_with_a_torn_log_tail(path):
    """A durable database in ``path`` (a source, then close: a checkpoint) whose newest log
    segment then gets a few bytes of garbage: the next open drops them with a warning."""
    with laminardb.open(str(path)) as db:
        db.execute("CREATE SOURCE IF NOT EXISTS s (k BIGINT NOT NULL)")
    segments = sorted(glob.glob(os.path.join(str(path), "wal", "*")))
    assert segments
    with open(segments[-1], "ab") as f:
        f.write(b"\xab" * 7)


def laminardb_records(caplog, timeout=10.0):
    """The records of logger ``laminardb`` so far, waiting for the first one: they are delivered
    by a thread of the package, shortly after the engine logs them."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in caplog.records if r.name == "laminardb"]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


def test_a_recovery_warning_is_a_logging_record_and_nothing_goes_to_stderr(tmp_path, caplog, capfd):
    caplog.set_level(logging.WARNING, logger="laminardb")
    durable_with_a_torn_log_tail(tmp_path)
    db = laminardb.open(str(tmp_path))
    db.close()
    records = laminardb_records(caplog)
    assert len(records) == 1, records
    assert records[0].levelno == logging.WARNING
    assert "torn tail" in records[0].getMessage()
    out, err = capfd.readouterr()
    assert err == ""


def test_a_warning_just_before_exit_is_delivered_and_exit_is_clean(tmp_path):
    # The atexit hook delivers what is queued, and the interpreter exits without a hang or a
    # message on stderr.
    durable_with_a_torn_log_tail(tmp_path)
    code = (
        "import logging, sys, laminardb\n"
        "logging.basicConfig(stream=sys.stdout, format='%(name)s %(levelname)s %(message)s')\n"
        f"db = laminardb.open({str(tmp_path)!r})\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert "laminardb WARNING" in p.stdout and "torn tail" in p.stdout, p.stdout
