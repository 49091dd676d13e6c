"""The operator under load, against the API emulator the tests use (tests/operator/cluster.py).

1. Latency: time from creating an EGTRun to its first child (the prepare Job) existing, over
   ``--latency-runs`` runs created one after another.
2. Throughput: ``--runs`` runs created at once and driven to Succeeded, this script playing the
   kubelet (every Job and RayJob is completed as soon as it appears). Reports the wall time, the
   operator's peak memory (RSS of its process, sampled every 0.2 s) and the API requests the
   operator made per run (the emulator counts every request; this script's own requests carry
   another User-Agent and are left out).

    .venv/bin/python bench/operator.py --runs 200

The emulator, the operator (a real ``kopf run``, as in a pod, and as in its image without the
``kubernetes`` package) and this script's kubelet each run in
a process of their own, so the kubelet's polling does not slow the emulator down through the GIL.
The runs' store is a real S3 server (SeaweedFS, as in the tests): the operator reads each stage's
manifest from it to decide what to skip.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from egt.spec import STAGES  # noqa: E402
from egt_operator.crd import GROUP, PLURAL, VERSION  # noqa: E402
from tests.fixtures.processes import free_ports  # noqa: E402
from tests.fixtures.s3 import seaweedfs  # noqa: E402
from tests.operator.cluster import (  # noqa: E402
    NOT_IN_OPERATOR_IMAGE,
    Kubelet,
    KubeServer,
    OperatorProcess,
    api_client,
    write_kubeconfig,
)

BENCH_AGENT = "egt-bench"
TINY = yaml.safe_load((ROOT / "examples/egtrun-tiny.yaml").read_text())


class QuietOperator(OperatorProcess):
    """The operator without --verbose: debug logging of 200 runs would measure the log, not the work."""

    @property
    def command(self) -> list[str]:
        return [part for part in super().command if part != "--verbose"]


def run_body(name: str, store: str) -> dict:
    """A run of its own: each in its own store prefix, so no two share a stage (egt_operator.sharing)."""
    body = copy.deepcopy(TINY)
    body["metadata"] = {"name": name}
    body["spec"]["store"]["uri"] = f"{store}/{name}"
    return body


def create(api: k8s.CustomObjectsApi, body: dict) -> None:
    api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)


def succeeded(api: k8s.CustomObjectsApi) -> int:
    items = api.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"]
    return sum(
        any(
            c["type"] == "Succeeded" and c["status"] == "True"
            for c in (i.get("status") or {}).get("conditions", [])
        )
        for i in items
    )


def play_kubelet(kubelet: Kubelet, stop: threading.Event) -> None:
    """End every child as soon as it exists."""
    done: set[str] = set()
    while not stop.is_set():
        for job in kubelet.list("Job"):
            if job["metadata"]["name"] not in done:
                kubelet.complete_job(job["metadata"]["name"])
                done.add(job["metadata"]["name"])
        for rayjob in kubelet.list("RayJob"):
            if rayjob["metadata"]["name"] not in done:
                kubelet.complete_rayjob(rayjob["metadata"]["name"])
                done.add(rayjob["metadata"]["name"])
        stop.wait(0.2)


def serve_emulator() -> None:
    """``--serve``: the emulator in this process; prints its URL, then, when stdin closes, how many
    requests came from clients other than this script (the operator's)."""
    server = KubeServer().start()
    print(server.url, flush=True)
    sys.stdin.read()
    counts = server.emulator.requests_by_agent
    print(sum(n for agent, n in counts.items() if agent != BENCH_AGENT), flush=True)
    server.stop()


def start_emulator() -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(Path(__file__)), "--serve"]
    emulator = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return emulator, emulator.stdout.readline().strip()


def stop_emulator(emulator: subprocess.Popen) -> int:
    """The operator's request count, read as the emulator exits."""
    out, _ = emulator.communicate(timeout=60)
    return int(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0, help="EGT_RECONCILE_SECONDS of the operator")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_emulator()

    work = Path(tempfile.mkdtemp(prefix="egt-bench-operator-"))
    (work / "s3").mkdir()
    with seaweedfs(work / "s3") as s3:  # a cluster run's store is S3; the operator reads its manifests
        measure(args, work, f"{s3.uri}/bench")


def measure(args: argparse.Namespace, work: Path, store: str) -> None:
    emulator, url = start_emulator()
    kubeconfig = write_kubeconfig(work / "kubeconfig", url)
    api_base = api_client(kubeconfig)
    api_base.user_agent = BENCH_AGENT
    api, kubelet = k8s.CustomObjectsApi(api_base), Kubelet(api_base)
    env = {
        "EGT_RECONCILE_SECONDS": str(args.interval),
        "EGT_METRICS_PORT": str(free_ports()[0]),
        "MALLOC_ARENA_MAX": "2",  # as images/operator.Dockerfile sets it
    }
    log, hidden = work / "operator.log", NOT_IN_OPERATOR_IMAGE
    operator = QuietOperator("egt_operator.handlers", kubeconfig, log, env, hidden=hidden).start()
    process = psutil.Process(operator.proc.pid)
    try:
        latencies = []
        for index in range(args.latency_runs):
            name = f"latency-{index}"
            started = time.perf_counter()
            create(api, run_body(name, store))
            while kubelet.get("Job", f"{name}-prepare") is None:
                time.sleep(0.005)
            latencies.append(time.perf_counter() - started)

        peak = process.memory_info().rss
        stop = threading.Event()
        player = threading.Thread(target=play_kubelet, args=(kubelet, stop), daemon=True)
        player.start()
        started = time.perf_counter()
        for index in range(args.runs):
            create(api, run_body(f"load-{index:04d}", store))
        target = args.latency_runs + args.runs  # the latency runs finish too, played by the kubelet
        while succeeded(api) < target:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.2)
        wall = time.perf_counter() - started
        stop.set()
        player.join()
        cpu = process.cpu_times()
        operator_cpu = cpu.user + cpu.system
    finally:
        operator.stop()
        requests = stop_emulator(emulator)

    result = {
        "first_child_seconds": {
            "median": statistics.median(latencies),
            "max": max(latencies),
            "runs": len(latencies),
        },
        "runs": args.runs,
        "stages_per_run": len(STAGES),
        "all_succeeded_seconds": wall,
        "operator_peak_rss_mib": peak / 2**20,
        "operator_cpu_seconds": operator_cpu,
        # Over the whole session: start-up watches and the latency runs included.
        "operator_api_requests_per_run": requests / target,
        "reconcile_interval_seconds": args.interval,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
