"""Trackers that cannot write fail fast and say so once: an MLflow server that does not answer stops a run
or a sweep before training, in seconds, and a TensorBoard write error is one warning line.

Real sockets and HTTP servers on 127.0.0.1, a real pneumolab process, and a real write error (a file-size
limit, which even root cannot write past)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, pneumolab_command, subprocess_env
from pneumolab.config import MLflowLoggerConfig, TensorBoardLoggerConfig
from pneumolab.errors import PneumolabError
from pneumolab.outputs.tracking import CONNECT_TIMEOUT_S, check_tracker_reachable

TINY = ["data.limit_per_class=20", "trainer.epochs=2", "trainer.seeds=[0,1]"]


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(respond) -> Iterator[str]:
    """An http.server in a thread whose GET handler is `respond(handler)`; yields its URL."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            respond(self)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts the connection and reads the request, then never answers (until the test ends)."""
    done = threading.Event()
    yield from serve(lambda handler: done.wait(60))
    done.set()


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Answers a GET with bytes that are no HTTP response."""
    def respond(handler):
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    yield from serve(respond)


@pytest.fixture
def status_server() -> Iterator[tuple[str, dict[str, int]]]:
    """Answers every GET with the status in `status["code"]`; yields (URL, status)."""
    status = {"code": 200}

    def respond(handler):
        handler.send_response(status["code"])
        handler.end_headers()
        handler.wfile.write(b"OK")
    for url in serve(respond):
        yield url, status


def mlflow_logger(uri: str) -> MLflowLoggerConfig:
    return MLflowLoggerConfig(tracking_uri=uri)


def refusal(uri: str) -> tuple[str, float]:
    """check_tracker_reachable's message for `uri`, and the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(PneumolabError) as exc:
        check_tracker_reachable(mlflow_logger(uri))
    return str(exc.value), time.perf_counter() - start


def test_a_closed_port_is_refused_at_once():
    uri = f"http://127.0.0.1:{closed_port()}"
    message, seconds = refusal(uri)
    assert seconds < 1.0
    assert message.startswith(f"logger=mlflow cannot reach the tracking server logger.tracking_uri={uri}: "
                              "no connection (")
    assert "Connection refused" in message and "logger.tracking_uri=sqlite:///outputs/mlflow.db" in message


def test_a_server_that_never_answers_is_given_up_after_one_timeout(silent_server: str):
    message, seconds = refusal(silent_server)
    assert CONNECT_TIMEOUT_S - 0.5 < seconds < CONNECT_TIMEOUT_S + 2.0
    assert f"no answer within {CONNECT_TIMEOUT_S:g} s" in message


def test_a_server_that_answers_no_http_is_refused(garbage_server: str):
    message, seconds = refusal(garbage_server)
    assert seconds < 2.0
    assert "the answer is not HTTP (BadStatusLine" in message


def test_only_a_tracking_servers_answer_passes(status_server):
    url, status = status_server
    for code in (200, 401, 403):  # healthy, or behind a login the MLflow client handles
        status["code"] = code
        check_tracker_reachable(mlflow_logger(url + "/"))
    for code in (404, 503):  # not an MLflow server there, or one that is down: MLflow would retry for minutes
        status["code"] = code
        message, _ = refusal(url)
        assert f"{url}/health answered HTTP {code}" in message
    # Local stores and other loggers need no server.
    check_tracker_reachable(mlflow_logger("sqlite:///outputs/mlflow.db"))
    check_tracker_reachable(TensorBoardLoggerConfig())


def run_pneumolab(tmp_path: Path, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([*pneumolab_command(), *args, *TINY], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    return done, time.perf_counter() - start


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_pneumolab_stops_before_training_with_one_paragraph_and_exit_2(tmp_path: Path, sweep: bool):
    uri = f"http://127.0.0.1:{closed_port()}"
    where = ["-m", "head=bce,ce", f"hydra.sweep.dir={tmp_path / 'out'}"] if sweep else [
        f"hydra.run.dir={tmp_path / 'out'}"]
    done, seconds = run_pneumolab(tmp_path, [*where, "logger=mlflow", f"logger.tracking_uri={uri}"])
    assert done.returncode == 2, done.stderr
    assert seconds < 60  # the process's start-up; MLflow's own retries took about four minutes per job
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"pneumolab: error: logger=mlflow cannot reach the tracking server "
                           f"logger.tracking_uri={uri}: no connection (")
    assert "Traceback" not in done.stdout + done.stderr
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob("error.json"))


# --- TensorBoard: a write error inside its writer thread ----------------------------------------------

RECORD_WITH_A_FILE_SIZE_LIMIT = """
import json, logging, resource, signal, sys
from pathlib import Path
from pneumolab.config import TensorBoardLoggerConfig
from pneumolab.record.results import read_metrics_csv
from pneumolab.outputs.tracking import track_job
from pneumolab.record.seed_run import SeedRun

job, limit = Path(sys.argv[1]), int(sys.argv[2])
results = json.loads((job / "results.json").read_text())
runs = [SeedRun(history["seed"], history) for history in read_metrics_csv(job / "metrics.csv")]
logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
track_job(TensorBoardLoggerConfig(), job, runs, results)
"""


@pytest.mark.slow  # a process importing torch and TensorBoard: 6-11 s
def test_a_tensorboard_write_error_is_one_warning_without_the_writer_threads_traceback(tmp_path: Path):
    """A job of the real-data report sweep logged again with files capped at 20 kB: the per-seed event files
    fit, the job's (its figures as images) does not, and its writer thread hits 'File too large'."""
    job = tmp_path / "job"
    subprocess.run(["cp", "-r", str(REPO / "docs" / "report" / "runs" / "0"), str(job)], check=True)
    done = subprocess.run([sys.executable, "-c", RECORD_WITH_A_FILE_SIZE_LIMIT, str(job), "20000"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "Exception in thread" not in output, output
    (line,) = output.strip().splitlines()
    assert line == (f"[WARNING] logger=tensorboard could not record this job (OSError: [Errno 27] File too large); "
                    f"its own files in {job} are complete.")
    assert (job / "tensorboard" / "seed_0").is_dir()  # what fit was written
