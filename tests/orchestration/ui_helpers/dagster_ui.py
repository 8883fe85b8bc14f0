"""Drive a real `dagster dev` on a throwaway copy of the repository, through the webserver's GraphQL API.

    root = copy_project(tmp / "slmrec")                       # tests/orchestration/project_copy.py
    with DagsterDev(root, tmp / "dagster_home") as ui:        # webserver + daemon + code server
        run_id = ui.launch_assets(["raw_interactions", "item_catalog"])   # what "Materialize" sends
        ui.wait_for_run(run_id, timeout_s=180)
        ui.latest_metadata("raw_interactions")     # {label: value} of the latest materialization
        ui.check_results("raw_interactions")       # {check name: CheckResult}

Used by tests/orchestration/test_ui_e2e.py and bench/ui/screenshots.py. Everything runs on localhost.
`dagster dev` runs in its own process group, which `stop()` signals as a whole: webserver, daemon,
code server and run workers stop together, and `forced_kill` tells whether any needed SIGKILL
(Linux: the group is read from /proc).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
ASSET_JOB = "__ASSET_JOB"  # the implicit job the UI's "Materialize" button runs an asset selection in
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
# `dagster dev` is exec'd (same pid) with SIGINT at its default disposition. A process started from a script as
# `cmd &` (no job control) or under some CI runners inherits SIGINT *ignored*; Python then installs no
# KeyboardInterrupt handler, and dagster's setup_interrupt_handlers() copies SIGINT's disposition onto SIGTERM,
# so `dagster dev` and its code servers ignore SIGTERM as well. The webserver and daemon do stop (uvicorn and the
# daemon install their own handlers) but then wait forever on their shutdown pipe for the SHUTDOWN message that
# `dagster dev` never sends (dagster_shared/ipc.py monitor_ipc_shutdown_pipe) -- the whole group outlived SIGTERM
# until SIGKILL (docs/RELIABILITY.md, "`dagster dev` shutdown"). `make ui` does the same.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- GraphQL documents

LOCATIONS = """
query { workspaceOrError { __typename
  ... on Workspace { locationEntries { name
    locationOrLoadError { __typename
      ... on RepositoryLocation { repositories { name } }
      ... on PythonError { message } } } }
  ... on PythonError { message } } }
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on PipelineNotFoundError { message }
  ... on UnauthorizedError { message } } }
"""

RUN_STATUS = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status stepStats { stepKey status } }
  ... on RunNotFoundError { message }
  ... on PythonError { message } } }
"""

LATEST_RUN = """
query Latest($job: String!) { runsOrError(filter: {pipelineName: $job}, limit: 1) { __typename
  ... on Runs { results { runId } }
  ... on PythonError { message } } }
"""

RUN_FAILURES = """
query Failures($runId: ID!) { logsForRun(runId: $runId, limit: 5000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on ExecutionStepUpForRetryEvent { stepKey error { message } }
    ... on RunFailureEvent { message } } } } }
"""

METADATA_FIELDS = """
  __typename label
  ... on IntMetadataEntry { intValue intRepr }
  ... on FloatMetadataEntry { floatValue }
  ... on TextMetadataEntry { text }
  ... on MarkdownMetadataEntry { mdStr }
  ... on JsonMetadataEntry { jsonString }
  ... on BoolMetadataEntry { boolValue }
  ... on PathMetadataEntry { path }
"""

LATEST_MATERIALIZATION = """
query Latest($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename
  ... on Asset { assetMaterializations(limit: 1) { runId metadataEntries { %s } } }
  ... on AssetNotFoundError { message } } }
""" % METADATA_FIELDS

ASSET_CHECKS = """
query Checks($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { assetChecksOrError { __typename
    ... on AssetChecks { checks { name blocking
      executionForLatestMaterialization { runId status
        evaluation { success severity description metadataEntries { %s } } } } } } }
  ... on AssetNotFoundError { message } } }
""" % METADATA_FIELDS

ASSET_GRAPH = """
query { assetNodes { assetKey { path } groupName description kinds dependencyKeys { path } } }
"""


def metadata_value(entry: dict):
    """The Python value of one GraphQL MetadataEntry (JSON decoded; text/markdown/path as str)."""
    kind = entry["__typename"]
    if kind == "IntMetadataEntry":  # GraphQL Int is 32-bit: larger ints come only as intRepr
        return entry["intValue"] if entry["intValue"] is not None else int(entry["intRepr"])
    if kind == "JsonMetadataEntry":
        return json.loads(entry["jsonString"])
    for key in ("floatValue", "text", "mdStr", "boolValue", "path"):
        if key in entry:
            return entry[key]
    raise ValueError(f"metadata entry {entry['label']!r}: type {kind} not handled by this client")


@dataclass
class CheckResult:
    """The latest evaluation of one asset check, as the UI shows it."""

    name: str
    blocking: bool
    status: str | None  # SUCCEEDED | FAILED | EXECUTION_FAILED | SKIPPED | IN_PROGRESS | None (never ran)
    run_id: str | None = None
    success: bool | None = None
    severity: str | None = None
    description: str | None = None
    metadata: dict = field(default_factory=dict)


class RunFailed(RuntimeError):
    pass


# --------------------------------------------------------------------------- the server


class DagsterDev:
    """`dagster dev` in `root` (the documented `make ui` command) on a free port, DAGSTER_HOME `dagster_home`."""

    def __init__(self, root: Path, dagster_home: Path, port: int | None = None, log_file: Path | None = None):
        self.root = Path(root)
        self.home = Path(dagster_home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = Path(log_file) if log_file else self.home / "dagster_dev.log"
        self.proc: subprocess.Popen | None = None
        self.forced_kill = False
        self.survivors: dict[int, str] = {}  # pid -> command line of what needed SIGKILL
        self.location: str | None = None
        self.repository: str | None = None

    # -- lifecycle

    def start(self) -> "DagsterDev":
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / "orchestration/dagster.yaml", self.home / "dagster.yaml")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "PYTHONPATH": str(self.root),  # the copy's packages, ahead of the editable install of the checkout
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "SLMREC_NO_TQDM": "1",
            # as `make ui` sets it: a code server stops within 5 s of its shutdown, instead of waiting up to
            # 60 s for in-flight RPCs (a sensor tick) -- the shutdown that once needed SIGKILL (docs/RELIABILITY.md)
            "DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD": os.environ.get("DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD", "5"),
        }
        # `make ui`: no -m, so the module and the location name ("slmrec") come from pyproject.toml [tool.dagster];
        # exec'd with SIGINT at its default, see DEFAULT_SIGINT
        cmd = [sys.executable, "-c", DEFAULT_SIGINT,
               str(VENV_BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(self.port)]
        self._log = open(self.log_file, "ab")
        # own session = own process group: stop() signals webserver, daemon, code server and run workers at once
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until GraphQL answers and the code location has loaded (its repositories are listed)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
            try:
                ws = self.query(LOCATIONS)["workspaceOrError"]
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                last = repr(err)
            else:
                entries = ws.get("locationEntries") or []
                kinds = [(e["locationOrLoadError"] or {}).get("__typename") for e in entries]
                loaded = [e for e, kind in zip(entries, kinds) if kind == "RepositoryLocation"]
                failed = [e for e, kind in zip(entries, kinds) if kind == "PythonError"]
                if failed:
                    raise RuntimeError(f"code location {failed[0]['name']} failed to load: "
                                       f"{failed[0]['locationOrLoadError']['message']}")
                if loaded:
                    self.location = loaded[0]["name"]
                    self.repository = loaded[0]["locationOrLoadError"]["repositories"][0]["name"]
                    return
                last = f"workspace: {ws}"
            time.sleep(1.0)
        raise TimeoutError(f"dagster dev on {self.url} not ready after {timeout_s:.0f}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout_s: float = 120.0, linger_s: float = 60.0) -> None:
        """SIGTERM to the whole process group, as Ctrl-C in a terminal would; SIGKILL what is left after
        `timeout_s` + `linger_s` (and set `forced_kill`, so a test can insist on a clean shutdown).

        Why so long: the daemon (`dagster._daemon run`) does not ignore SIGTERM — it maps it to SIGINT and
        then joins each of its daemon threads (scheduler, sensors, backfills, run monitoring, ...) for up
        to 30 s apiece (dagster/_daemon/controller.py `__exit__`), and `dagster dev` waits up to 60 s each
        for the webserver and the daemon. A clean shutdown returns as soon as the group is gone. (The whole
        group outliving SIGTERM in fresh-clone runs was not slowness: those were started with SIGINT
        ignored, see DEFAULT_SIGINT.)"""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + linger_s
        while self.group_members() and time.monotonic() < deadline:
            time.sleep(0.5)
        if self.group_members():  # run workers or code servers that did not exit
            self.forced_kill = True
            self.survivors = {pid: self.command_line(pid) for pid in self.group_members()}
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 30  # SIGKILLed members need a moment to be gone from /proc
        while self.group_members() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._log.close()

    @staticmethod
    def command_line(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except (FileNotFoundError, ProcessLookupError):
            return "(exited)"

    def group_members(self) -> list[int]:
        """Live (not zombie) processes of the server's process group, from /proc."""
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
            except (FileNotFoundError, ProcessLookupError):  # exited while we looked
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        return members

    def __enter__(self) -> "DagsterDev":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])

    # -- GraphQL

    def query(self, document: str, variables: dict | None = None, timeout_s: float = 30.0) -> dict:
        """POST one GraphQL document; the `data` object, or RuntimeError with the server's errors."""
        body = json.dumps({"query": document, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {json.dumps(payload['errors'])[:2000]}")
        return payload["data"]

    def launch_assets(self, assets: list[str], tags: dict[str, str] | None = None,
                      run_config: dict | None = None) -> str:
        """Launch a run of `assets` (and, as the UI does, their checks) in the implicit asset job; the run id."""
        return self.launch_job(ASSET_JOB, tags, run_config, assets=assets)

    def launch_job(self, job: str, tags: dict[str, str] | None = None, run_config: dict | None = None,
                   assets: list[str] | None = None) -> str:
        """Launch a run of `job` (restricted to `assets` when given); the run id."""
        selector = {"repositoryLocationName": self.location, "repositoryName": self.repository, "jobName": job}
        if assets is not None:
            selector["assetSelection"] = [{"path": a.split("/")} for a in assets]
        params = {
            "selector": selector,
            "mode": "default",
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        result = self.query(LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun of {job} {assets or ''} refused ({result['__typename']}): "
                               f"{json.dumps(result)[:2000]}")
        return result["run"]["runId"]

    def run_status(self, run_id: str) -> dict:
        run = self.query(RUN_STATUS, {"runId": run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise RuntimeError(f"run {run_id}: {run}")
        return run

    def wait_for_run(self, run_id: str, timeout_s: float = 180.0, poll_s: float = 2.0) -> str:
        """Poll until the run ends; its status, or RunFailed naming each failed step and its error."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run_status(run_id)
            if run["status"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                steps = {s["stepKey"]: s["status"] for s in run["stepStats"]}
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout_s:.0f}s; steps {steps}")
            time.sleep(poll_s)
        if run["status"] != "SUCCESS":
            raise RunFailed(f"run {run_id} ended {run['status']}: {self.failures(run_id)}\n{self.log_tail(20)}")
        return run["status"]

    def latest_run_id(self, job: str) -> str:
        runs = self.query(LATEST_RUN, {"job": job})["runsOrError"]
        if runs["__typename"] != "Runs" or not runs["results"]:
            raise LookupError(f"no run of {job} on {self.url}: {runs}")
        return runs["results"][0]["runId"]

    def failures(self, run_id: str) -> list[str]:
        logs = self.query(RUN_FAILURES, {"runId": run_id})["logsForRun"]
        out = []
        for event in logs.get("events", []):
            if event["__typename"] in ("ExecutionStepFailureEvent", "ExecutionStepUpForRetryEvent"):
                out.append(f"{event['stepKey']}: {event['error']['message'].strip()[:1500] if event['error'] else ''}")
            elif event["__typename"] == "RunFailureEvent":
                out.append(event["message"])
        return out

    def latest_metadata(self, asset: str) -> tuple[str, dict]:
        """(run id, {label: value}) of the asset's latest materialization."""
        found = self.query(LATEST_MATERIALIZATION, {"key": {"path": asset.split("/")}})["assetOrError"]
        if found["__typename"] != "Asset" or not found["assetMaterializations"]:
            raise LookupError(f"asset {asset}: no materialization ({found})")
        latest = found["assetMaterializations"][0]
        return latest["runId"], {e["label"]: metadata_value(e) for e in latest["metadataEntries"]}

    def check_results(self, asset: str) -> dict[str, CheckResult]:
        """{check name: the latest evaluation} of every check defined on `asset`."""
        node = self.query(ASSET_CHECKS, {"key": {"path": asset.split("/")}})["assetNodeOrError"]
        if node["__typename"] != "AssetNode":
            raise LookupError(f"asset {asset}: {node}")
        checks = node["assetChecksOrError"]
        if checks["__typename"] != "AssetChecks":
            raise RuntimeError(f"asset {asset}: checks not readable ({checks['__typename']})")
        results = {}
        for c in checks["checks"]:
            execution = c["executionForLatestMaterialization"] or {}
            evaluation = execution.get("evaluation") or {}
            results[c["name"]] = CheckResult(
                name=c["name"],
                blocking=c["blocking"],
                status=execution.get("status"),
                run_id=execution.get("runId"),
                success=evaluation.get("success"),
                severity=evaluation.get("severity"),
                description=evaluation.get("description"),
                metadata={e["label"]: metadata_value(e) for e in evaluation.get("metadataEntries", [])},
            )
        return results

    def asset_graph(self) -> dict[str, dict]:
        """{asset key: {group, description, kinds, deps}} as the UI's asset graph sees it."""
        nodes = self.query(ASSET_GRAPH)["assetNodes"]
        return {
            "/".join(n["assetKey"]["path"]): {
                "group": n["groupName"],
                "description": n["description"],
                "kinds": n["kinds"],
                "deps": ["/".join(d["path"]) for d in n["dependencyKeys"]],
            }
            for n in nodes
        }
