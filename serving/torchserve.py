"""Run a TorchServe for pigment on loopback, in its own directory, and always be able to stop it.

Used by scripts/start_server.sh / stop_server.sh (through scripts/local_torchserve.py, this module's command
line), the serving tests and the benchmarks. Everything a server writes lives in
one run directory: the resolved config.properties, logs/, key_file.json, and a private temp dir. The temp dir
matters: TorchServe keeps its pid file (``$TMPDIR/.model_server.pid``), its worker sockets
(``java.io.tmpdir/.ts.sock.<port>``) and the extracted archives in the system temp dir, so two servers on one
machine (a developer's and a test's) would otherwise stop or talk to each other.

    python -m serving.torchserve start --model-store model_store --run-dir logs
    python -m serving.torchserve status --run-dir logs    # exit 0 when the model is READY
    python -m serving.torchserve stop --run-dir logs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from serving.properties import write_properties

ROOT = Path(__file__).resolve().parents[1]
CONFIG_TEMPLATE = ROOT / "serve_config" / "config.properties"
METRICS_CONFIG = ROOT / "serve_config" / "metrics.yaml"
STATE_FILE = "server.json"


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
        """Five ports the OS says are free on 127.0.0.1 right now (held together so they are distinct)."""
        sockets = [socket.socket() for _ in range(5)]
        try:
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()

    def properties(self) -> dict[str, str]:
        return {
            "inference_address": f"http://127.0.0.1:{self.inference}",
            "management_address": f"http://127.0.0.1:{self.management}",
            "metrics_address": f"http://127.0.0.1:{self.metrics}",
            "grpc_inference_port": str(self.grpc_inference),
            "grpc_management_port": str(self.grpc_management),
        }


class LocalTorchServe:
    """One TorchServe serving ``model_name`` from ``model_store``; files under ``run_dir``.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (stop is safe to call twice and kills
    the server's own processes if ``torchserve --stop`` does not end them).
    """

    def __init__(self, model_store: str | Path, run_dir: str | Path, ports: Ports | None = None,
                 model_name: str = "pigment", mar: str = "pigment.mar", config_template: Path = CONFIG_TEMPLATE,
                 detach: bool = False):
        self.model_store = Path(model_store).resolve()
        self.run_dir = Path(run_dir).resolve()
        self.ports = ports or Ports()
        self.model_name = model_name
        self.mar = mar
        self.config_template = config_template
        self.detach = detach  # True: own session, so the server outlives the shell that started it
        self.tmp_dir = self.run_dir / "tmp"
        self.config_path = self.run_dir / "config.properties"

    # -- addresses and keys -------------------------------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def key(self, kind: str) -> str:
        """The current ``inference``, ``management`` or ``API`` key from key_file.json."""
        return json.loads(self.key_file.read_text())[kind]["key"]

    def auth(self, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(kind)}"}

    # -- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> LocalTorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        """Write the config, launch TorchServe and wait until the model answers /ping with READY workers."""
        mar_path = self.model_store / self.mar
        if not mar_path.is_file():
            raise FileNotFoundError(f"{mar_path}: no model archive; build one with scripts/build_mar.sh CKPT STORE")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)  # a stale key file would look like a ready server
        self.write_config()
        (self.run_dir / STATE_FILE).write_text(json.dumps(
            {"ports": asdict(self.ports), "model_store": str(self.model_store), "model_name": self.model_name,
             "mar": self.mar}, indent=2))
        cmd = [torchserve_executable(), "--start", "--ncs", "--model-store", str(self.model_store),
               "--models", f"{self.model_name}={self.mar}", "--ts-config", str(self.config_path)]
        # The Java frontend inherits the launcher's stdout/stderr: send them to a file, never to a pipe we
        # would wait on until the server exits.
        with open(self.run_dir / "torchserve.out", "ab") as out:
            code = subprocess.run(cmd, cwd=self.run_dir, env=self._env(), stdout=out, stderr=out,
                                  start_new_session=self.detach).returncode
        if code != 0:
            raise RuntimeError(f"torchserve --start failed ({code}); see {self.run_dir / 'torchserve.out'}")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def write_config(self) -> Path:
        """The template with this server's ports and absolute paths (:mod:`serving.properties`)."""
        overrides = {**self.ports.properties(), "metrics_config": str(METRICS_CONFIG),
                     "model_store": str(self.model_store)}
        return write_properties(self.config_path, self.config_template, overrides,
                                "Set by serving/torchserve.py for this run; they replace the values above")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_pid() is None:
                raise RuntimeError(f"TorchServe exited during startup\n{self.log_tail()}")
            if self.key_file.is_file() and self.ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe did not get {self.model_name} ready in {timeout:.0f} s\n{self.log_tail()}")

    def ready(self) -> bool:
        """/ping is Healthy and every worker of the model is READY."""
        try:
            ping = requests.get(f"{self.inference_url}/ping", headers=self.auth("inference"), timeout=5)
            model = requests.get(f"{self.management_url}/models/{self.model_name}",
                                 headers=self.auth("management"), timeout=5)
        except (requests.RequestException, KeyError, ValueError, OSError):
            return False
        if ping.status_code != 200 or model.status_code != 200:
            return False
        workers = model.json()[0].get("workers", [])
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def stop(self, timeout: float = 30.0) -> None:
        """``torchserve --stop`` for this run dir, then kill the server's own process tree if it lingers."""
        pid = self.server_pid()
        if pid is None:
            return
        with open(self.run_dir / "torchserve.out", "ab") as out:
            subprocess.run([torchserve_executable(), "--stop"], cwd=self.run_dir, env=self._env(), stdout=out,
                           stderr=out)
        if not _wait_gone(pid, timeout):
            _kill_tree(pid)
        self.key_file.unlink(missing_ok=True)

    def server_pid(self) -> int | None:
        """The TorchServe frontend's pid from this run's pid file, if that process is alive."""
        pid_file = self.tmp_dir / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("ts_log.log", "model_log.log"):
            path = self.log_dir / name
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no logs in {self.log_dir})"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TMPDIR=str(self.tmp_dir), TEMP=str(self.tmp_dir), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir))
        env.pop("TS_CONFIG_FILE", None)  # would override --ts-config
        # The workers import model/ and handler/ from the archive alone; a PYTHONPATH pointing at a checkout (as
        # scripts/local_torchserve.py sets for this package) would hide a file the archive is missing.
        env.pop("PYTHONPATH", None)
        return env

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> LocalTorchServe:
        """The server a previous ``start`` left in ``run_dir`` (for stop and clients)."""
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
        return cls(state["model_store"], run_dir, Ports(**state["ports"]), state["model_name"], state["mar"])


def torchserve_executable() -> str:
    """The ``torchserve`` launcher of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("torchserve")
    return str(beside) if beside.exists() else "torchserve"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.2)
    return False


def _kill_tree(pid: int) -> None:
    """Kill the frontend we started and its children (the Python workers), by pid."""
    import psutil  # only needed on this fallback path

    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start TorchServe and wait until the model is ready")
    start.add_argument("--model-store", default="model_store")
    start.add_argument("--run-dir", default="logs", help="config, logs/, key_file.json and temp files go here")
    start.add_argument("--model-name", default="pigment")
    start.add_argument("--mar", default="pigment.mar")
    start.add_argument("--free-ports", action="store_true", help="pick free loopback ports instead of 8080-8082")
    start.add_argument("--timeout", type=float, default=180.0)
    stop = sub.add_parser("stop", help="stop the TorchServe started with this run dir")
    stop.add_argument("--run-dir", default="logs")
    status = sub.add_parser("status", help="exit 0 if the TorchServe of this run dir serves a READY model")
    status.add_argument("--run-dir", default="logs")
    args = parser.parse_args(argv)

    if args.command == "status":
        if not (Path(args.run_dir) / STATE_FILE).is_file():
            print(f"no server state in {args.run_dir}/{STATE_FILE}; not running")
            return 1
        server = LocalTorchServe.from_run_dir(args.run_dir)
        ready = server.server_pid() is not None and server.ready()
        print(f"{server.model_name} {'ready' if ready else 'not ready'} at {server.inference_url}")
        return 0 if ready else 1

    if args.command == "stop":
        run_dir = Path(args.run_dir)
        if not (run_dir / STATE_FILE).is_file():
            print(f"no server state in {run_dir}/{STATE_FILE}; nothing to stop")
            return 0
        server = LocalTorchServe.from_run_dir(run_dir)
        was_running = server.server_pid() is not None
        server.stop()
        print("TorchServe stopped" if was_running else "TorchServe was not running")
        return 0

    server = LocalTorchServe(args.model_store, args.run_dir, Ports.free() if args.free_ports else Ports(),
                             args.model_name, args.mar, detach=True)
    if server.server_pid() is not None:
        print(f"a TorchServe from {server.run_dir} is already running; stop it first (scripts/stop_server.sh)")
        return 1
    server.start(args.timeout)
    print(f"TorchServe is serving {args.model_name}:")
    print(f"  inference   {server.inference_url}/predictions/{args.model_name}")
    print(f"  management  {server.management_url}/models/{args.model_name}")
    print(f"  metrics     {server.metrics_url}/metrics")
    print(f"  keys        {server.key_file}  (inference key for /predictions and /ping, management key for "
          f"/models)")
    print(f"  logs        {server.log_dir}/ (ts_log.log, model_log.log, access_log.log)")
    print(f"  config      {server.config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
