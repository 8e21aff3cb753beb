"""``make up`` / ``make down``: a local Airflow with the DAG in local pod mode, to click "Trigger" on.

``up`` writes the demo data (synthetic parquet, a tiny LLaVA), starts the Gemini simulator and
the four Airflow 3 components — api-server (UI and REST API on 127.0.0.1:8080), scheduler,
dag-processor, triggerer — on SQLite with the LocalExecutor, waits until the DAG is parsed and
prints the login. The DAG's defaults point at the demo data (``VLMPROBE_PARAM_DEFAULTS``), so a
plain "Trigger" runs; the form shows every param to override. Pods run as local processes
(``VLMPROBE_POD_MODE=local``): the probe as 2 CPU ranks, each QA shard as one process.

``down`` stops every process ``up`` started — one process group each, found by the pid files
under the state folder — and nothing else. ``status`` says what runs.

State lives in ``demo-output/up/`` (or ``$VLMPROBE_UP_DIR``): ``airflow/`` (home, SQLite, logs),
``data/``, ``runs/`` (outputs), ``logs/`` (each process's output), ``pids/``. ``up`` again reuses it;
delete the folder for a fresh start. ``$VLMPROBE_UP_PORT`` changes the port (default 8080).

    python scripts/local_airflow.py up | down | status
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("VLMPROBE_UP_DIR") or REPO / "demo-output" / "up").resolve()
HOST = "127.0.0.1"
PORT = int(os.environ.get("VLMPROBE_UP_PORT") or 8080)
BASE_URL = f"http://{HOST}:{PORT}"
USER = "admin"
DAG_ID = "vlm_failure_pipeline"
COMPONENTS = {
    "api-server": ["api-server", "--host", HOST, "--port", str(PORT), "--workers", "1"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
}
READY_TIMEOUT_S = float(os.environ.get("VLMPROBE_UP_TIMEOUT_S") or 240)

PIDS, LOGS, HOME, DATA, RUNS = (STATE / "pids", STATE / "logs", STATE / "airflow", STATE / "data", STATE / "runs")
SECRETS_FILE = STATE / "secrets.json"
PASSWORDS_FILE = STATE / "passwords.json"


def say(text: str) -> None:
    print(f"[make up] {text}", flush=True)


# -- processes -----------------------------------------------------------------------------------

def _alive(pid: int, *, group: bool = False) -> bool:
    """Whether process ``pid`` (with ``group``: any process of group ``pid``) exists; signal 0 sends nothing."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def running() -> dict[str, int]:
    """name → pid of the processes ``up`` started that still run (stale pid files are removed)."""
    out = {}
    for f in sorted(PIDS.glob("*.pid")) if PIDS.exists() else []:
        try:
            pid = int(f.read_text().strip())
        except ValueError:
            f.unlink()
            continue
        if _alive(pid):
            out[f.stem] = pid
        else:
            f.unlink()
    return out


def start(name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start ``argv`` in a process group of its own (so ``down`` stops its children too); its pid."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    (PIDS / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop_all(timeout_s: float = 30.0) -> list[str]:
    """SIGTERM each recorded process group, SIGKILL what is left after ``timeout_s``; the names stopped."""
    procs = running()
    for pid in procs.values():
        try:
            os.killpg(pid, signal.SIGTERM)  # the group ``start`` created: the component and its children
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p, group=True) for p in procs.values()):
        time.sleep(0.3)
    for pid in procs.values():
        if _alive(pid, group=True):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for name in procs:
        (PIDS / f"{name}.pid").unlink(missing_ok=True)
    return list(procs)


# -- setup ---------------------------------------------------------------------------------------

def _secrets() -> dict[str, str]:
    """Secrets every component must share (JWT, API), kept across restarts; the admin password."""
    if SECRETS_FILE.exists():
        return json.loads(SECRETS_FILE.read_text())
    values = {"jwt_secret": secrets.token_urlsafe(32), "api_secret_key": secrets.token_urlsafe(32),
              "password": secrets.token_urlsafe(12)}
    STATE.mkdir(parents=True, exist_ok=True)
    _write_private(SECRETS_FILE, json.dumps(values))
    _write_private(PASSWORDS_FILE, json.dumps({USER: values["password"]}) + "\n")
    return values


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def demo_data() -> tuple[str, str]:
    """(parquet folder, tiny LLaVA folder), written once."""
    parquet, model = DATA / "parquet", DATA / "tiny-llava"
    if not (model / "config.json").exists():
        say(f"writing demo data under {DATA} (synthetic parquet, a tiny LLaVA with random weights)")
        from vlmprobe.demo.data import build_tiny_llava, write_demo_parquet

        write_demo_parquet(str(parquet))
        build_tiny_llava(str(model))
    return str(parquet), str(model)


def start_simulator(env: dict[str, str]) -> str:
    """Start ``vlmprobe gemini-sim`` on a free loopback port; its base URL."""
    port_file = STATE / "gemini-sim.port"
    port_file.unlink(missing_ok=True)
    start("gemini-sim", [sys.executable, "-m", "vlmprobe.cli", "gemini-sim", "--host", HOST, "--port", "0",
                         "--port-file", str(port_file), "--latency-ms", "30", "--rate-429", "0.03",
                         "--rate-503", "0.02", "--rate-malformed", "0.02", "--seed", "7",
                         # a run with qa_mode=batch: jobs that take seconds, not hours
                         "--batch-pending-s", "2", "--batch-running-s", "2"], env)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if time.monotonic() > deadline or "gemini-sim" not in running():
            raise SystemExit(f"the Gemini simulator did not start; see {LOGS / 'gemini-sim.log'}")
        time.sleep(0.2)
    return f"http://{HOST}:{port_file.read_text().strip()}"


def airflow_env(sim_url: str, parquet: str, model: str, secret: dict[str, str]) -> dict[str, str]:
    from vlmprobe.demo.data import DEMO_RUN_PARAMS

    bin_dir = str(Path(sys.executable).parent)
    defaults = {"target_model": model, **DEMO_RUN_PARAMS}
    return {
        **os.environ,
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORDS_FILE),
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(PORT),
        "AIRFLOW__API__BASE_URL": BASE_URL,
        "AIRFLOW__API__SECRET_KEY": secret["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt_secret"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{BASE_URL}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        # the DAG, in local pod mode, pointed at the demo data and the simulator
        "VLMPROBE_POD_MODE": "local",
        "VLMPROBE_INPUT_URI": parquet,
        "VLMPROBE_OUTPUT_URI": str(RUNS),
        "VLMPROBE_PARAM_DEFAULTS": json.dumps(defaults),
        "VLMPROBE_GEMINI_BASE_URL": sim_url,
        # the simulator accepts any key; a real one in the shell is never handed to it (a cluster
        # reads the real one from a Kubernetes Secret)
        "GEMINI_API_KEY": "local-simulator-key",
    }


# -- readiness -----------------------------------------------------------------------------------

def _http_json(method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(BASE_URL + path, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def token(password: str) -> str:
    return _http_json("POST", "/auth/token", {"username": USER, "password": password})["access_token"]


def wait_ready(password: str) -> None:
    """Until the API answers, the DAG is parsed and scheduler and triggerer report healthy."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "the API server"
    while time.monotonic() < deadline:
        gone = [n for n in ("gemini-sim", *COMPONENTS) if n not in running()]
        if gone:
            raise SystemExit(f"{', '.join(gone)} stopped; see {LOGS}/<name>.log (make down cleans up)")
        try:
            health = _http_json("GET", "/api/v2/monitor/health")
            bad = [c for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                   if (health.get(c) or {}).get("status") != "healthy"]
            if bad:
                last = ", ".join(bad)
            else:
                _http_json("GET", f"/api/v2/dags/{DAG_ID}", token=token(password))
                return
        except urllib.error.HTTPError as e:
            last = f"the DAG ({e.code} from /api/v2/dags/{DAG_ID})" if e.code == 404 else f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(2)
    raise SystemExit(f"not ready after {READY_TIMEOUT_S:.0f} s, still waiting for {last}; see {LOGS}")


# -- commands ------------------------------------------------------------------------------------

def up() -> int:
    if running():
        say(f"already up ({', '.join(running())}); `make down` stops it")
        print_login(_secrets()["password"])
        return 0
    t0 = time.monotonic()
    for d in (HOME, DATA, RUNS, LOGS, PIDS):
        d.mkdir(parents=True, exist_ok=True)
    secret = _secrets()
    parquet, model = demo_data()
    sim_url = start_simulator({**os.environ, "PYTHONPATH": str(REPO)})
    env = airflow_env(sim_url, parquet, model, secret)
    airflow = str(Path(sys.executable).parent / "airflow")
    say(f"airflow db migrate (SQLite in {HOME})")
    with open(LOGS / "db-migrate.log", "wb") as log:
        if subprocess.run([airflow, "db", "migrate"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode:
            stop_all()
            raise SystemExit(f"airflow db migrate failed; see {LOGS / 'db-migrate.log'}")
    for name, args in COMPONENTS.items():
        start(name, [airflow, *args], env)
    say(f"started {', '.join(COMPONENTS)} and the Gemini simulator ({sim_url}); waiting for the DAG")
    try:
        wait_ready(secret["password"])
    except SystemExit:
        stop_all()
        raise
    say(f"ready in {time.monotonic() - t0:.0f} s")
    print_login(secret["password"])
    return 0


def print_login(password: str) -> None:
    print(f"""
  Airflow UI   {BASE_URL}      login: {USER} / {password}
  DAG          {BASE_URL}/dags/{DAG_ID}   (paused; "Trigger" unpauses it)
  outputs      {RUNS}/<run_date>/
  logs         {LOGS}/ and {HOME}/logs/
  stop         make down

  Trigger → the form shows every param, grouped by step; the defaults already point at the
  demo data. README.md, "Try it locally", walks through a run with overrides.
""", flush=True)


def down() -> int:
    stopped = stop_all()
    say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def status() -> int:
    procs = running()
    for name in ("gemini-sim", *COMPONENTS):
        print(f"{name:14} {'pid ' + str(procs[name]) if name in procs else 'not running'}")
    return 0 if procs else 1


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
