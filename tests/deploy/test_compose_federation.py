"""The compose federation for real: image build, certificate job, server, three client daemons, a run.

The test starts its own Docker engine (dockerd with --bridge=none --iptables=false, in a temporary folder, with its
own socket, data and exec roots), imports the local base image made by deploy/ci-docker-setup.sh, builds the image
with `docker-compose build` (PIP_SOURCE=wheelhouse: no package index in the build) and the offline Prometheus image
(deploy/prometheus/Dockerfile), brings the federation up with its metrics profile
(`docker-compose --profile metrics up -d`), starts the smoke run with the documented operator command
(`docker-compose run --rm operator`), checks the run's summary, the run folder on the runs volume, every service's
health, and, through Prometheus's HTTP API, that it scraped the server (target up, every client's bytes), and tears
everything down, that dockerd included, also on failure.

It installs nothing. Skipped, with the reason, when not root, when dockerd / docker-compose / docker are missing, or
when the base tarball, the Prometheus build context or the wheelhouse are not prepared: deploy/ci-docker-setup.sh
does all three.
Figures (build time, image size, compose-up-to-trained time) are printed (pytest -s) and recorded as properties.

SLPERF_DOCKER_TEST_DATA_ROOT=DIR keeps the engine's data root (images and build cache) in DIR between runs, for
development; by default it is a fresh temporary folder that is deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.dockerd import Dockerd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SLPERF_DOCKER_CACHE", "/var/cache/slperf-docker"))
BASE_TAR = CACHE / "base-bookworm-python3.tar"
BASE_IMAGE = "slperf/base:bookworm"
PROM_CONTEXT = CACHE / "prometheus-bookworm"
PROM_IMAGE = "slperf/prometheus:bookworm"  # docker-compose.yml's default for the prometheus service
PROM_API = "http://localhost:9090"
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
SERVICES = ("server", "c1", "c2", "c3")
SETUP_HINT = "run deploy/ci-docker-setup.sh (as root) first"


def _requirements() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("starting dockerd needs root")
    tools = {name: shutil.which(name) for name in ("dockerd", "docker-compose", "docker")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({SETUP_HINT})")
    if not BASE_TAR.is_file():
        pytest.skip(f"no local base image tarball at {BASE_TAR} ({SETUP_HINT})")
    if not (PROM_CONTEXT / "bin" / "prometheus").is_file() or not (PROM_CONTEXT / "bin" / "promtool").is_file():
        pytest.skip(f"no Prometheus build context at {PROM_CONTEXT} ({SETUP_HINT})")
    if not list(WHEELHOUSE.glob("torch-2.13.0*.whl")):
        pytest.skip(f"the wheelhouse {WHEELHOUSE} has no torch 2.13.0 wheel ({SETUP_HINT})")
    return tools


def _run(argv: list[str], env: dict, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)


def _inspect(docker: str, env: dict, container: str, fmt: str) -> str:
    out = _run([docker, "inspect", "-f", fmt, container], env, 60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _prometheus_query(compose: list[str], env: dict, expr: str) -> list[dict]:
    """The result of an instant query, from Prometheus's HTTP API (``/api/v1/query``) inside its container: its
    ``promtool`` is the client (the upstream image carries it too)."""
    query = ["promtool", "query", "instant", "-o", "json", PROM_API, expr]
    out = _run([*compose, "exec", "-T", "prometheus", *query], env, 120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _scraped(compose: list[str], env: dict) -> tuple[dict[str, float], dict[str, float]]:
    """What Prometheus holds of the server: ``up`` by job, and ``slperf_server_client_bytes_total`` by client
    (direction up)."""
    up = {r["metric"]["job"]: float(r["value"][1]) for r in _prometheus_query(compose, env, "up")}
    sent = _prometheus_query(compose, env, 'slperf_server_client_bytes_total{direction="up"}')
    return up, {r["metric"]["client"]: float(r["value"][1]) for r in sent}


def test_compose_federation_builds_starts_and_trains(record_property):
    tools = _requirements()
    docker, compose_exe = tools["docker"], tools["docker-compose"]
    engine = Dockerd(tools["dockerd"], docker)
    project = f"slpt{secrets.token_hex(3)}"
    image = f"slperf:deploy-test-{project}"
    env = engine.env(SLPERF_IMAGE=image, SLPERF_BASE_IMAGE=BASE_IMAGE, SLPERF_PIP_SOURCE="wheelhouse")
    compose = [compose_exe, "--ansi", "never", "-p", project, "-f", str(ROOT / "docker-compose.yml")]
    figures: dict[str, float] = {}
    try:
        engine.start()
        # The local base: Docker Hub is not reachable from these machines.
        t0 = time.monotonic()
        if _run([docker, "image", "inspect", BASE_IMAGE], env, 60).returncode != 0:
            imported = _run([docker, "import", "--change", 'CMD ["python3"]', str(BASE_TAR), BASE_IMAGE], env, 600)
            assert imported.returncode == 0, imported.stderr
        figures["base_import_s"] = time.monotonic() - t0
        if _run([docker, "image", "inspect", PROM_IMAGE], env, 60).returncode != 0:
            # The offline Prometheus image, as deploy/ci-docker-setup.sh import builds it (compose mounts the
            # repository's prometheus.yml over the one the context holds).
            dockerfile = str(ROOT / "deploy" / "prometheus" / "Dockerfile")
            built = _run([docker, "build", "-q", "-f", dockerfile, "-t", PROM_IMAGE, str(PROM_CONTEXT)], env, 600)
            assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]

        t0 = time.monotonic()
        build = _run([*compose, "build"], env, 2400)
        figures["build_s"] = time.monotonic() - t0
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        figures["image_mb"] = int(_inspect(docker, env, image, "{{.Size}}")) / 1e6

        # Up: the certificate job, the server (healthy), then the three clients and Prometheus (profile metrics).
        t_up = time.monotonic()
        up = _run([*compose, "--profile", "metrics", "up", "-d"], env, 600)
        assert up.returncode == 0, up.stdout + up.stderr
        figures["up_s"] = time.monotonic() - t_up

        # The documented operator command, with the smoke config; it waits for all four services to be healthy.
        run_env = dict(env, SLPERF_CONFIG_DIR="./deploy/configs", SLPERF_RUN_CONFIG="compose-smoke.yaml")
        t_run = time.monotonic()
        run = _run([*compose, "run", "--rm", "-T", "operator"], run_env, 900)
        figures["operator_run_s"] = time.monotonic() - t_run
        figures["up_to_trained_s"] = time.monotonic() - t_up
        if run.returncode != 0:
            logs = _run([*compose, "logs", "--tail", "30"], env, 120).stdout
            pytest.fail(f"operator run failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}\n{logs[-6000:]}")
        summary = json.loads(run.stdout[run.stdout.index("{") :])
        assert summary["paradigm"] == "splitfed_v1" and summary["rounds"] == 2 and summary["clients"] == 3
        assert sorted(summary["per_client"]) == ["c1", "c2", "c3"]
        assert sum(c["samples"] for c in summary["per_client"].values()) == 600 * 2
        assert summary["test_accuracy"] > 0.2, summary  # chance is 0.1
        assert summary["bytes_up"] > 0 and summary["bytes_down"] > 0
        figures["run_wall_s"] = summary["wall_seconds"]

        # Health: the certificate job completed, the four daemons are healthy, and they run as uid 10001.
        ids = {}
        for service in ("certs", *SERVICES):
            ps = _run([*compose, "ps", "-q", service], env, 60)
            ids[service] = ps.stdout.strip()
            assert ids[service], f"no container for {service}: {ps.stderr}"
        assert _inspect(docker, env, ids["certs"], "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
        for service in SERVICES:
            assert _inspect(docker, env, ids[service], "{{.State.Health.Status}}") == "healthy", _inspect(
                docker, env, ids[service], "{{json .State.Health}}"
            )
            assert _inspect(docker, env, ids[service], "{{.Config.User}}") == "10001:10001"
        # The operator's status command: all three clients connected, over the internal network.
        status = _run(
            [
                *compose,
                "run",
                "--rm",
                "-T",
                "operator",
                "status",
                "--server",
                "server:50051",
                "--certs",
                "/var/lib/slperf/certs",
            ],
            env,
            300,
        )
        assert status.returncode == 0 and "3 client(s) connected" in status.stdout, status.stdout + status.stderr
        # The run folder is on the runs volume.
        run_dir = f"/var/lib/slperf/runs/{summary['run_id']}"
        stored = _run([*compose, "exec", "-T", "server", "cat", f"{run_dir}/summary.json"], env, 120)
        assert stored.returncode == 0 and json.loads(stored.stdout)["run_id"] == summary["run_id"], stored.stderr
        listing = _run([*compose, "exec", "-T", "server", "ls", run_dir], env, 120).stdout.split()
        assert {"checkpoint.pt", "metrics.jsonl", "config.yaml"} <= set(listing), listing
        # Each client holds only its own key pair (and the CA certificate).
        for cid in ("c1", "c2", "c3"):
            files = _run([*compose, "exec", "-T", cid, "ls", "/var/lib/slperf/certs"], env, 120).stdout.split()
            assert sorted(files) == ["ca.pem", "client.key", "client.pem"], files

        # Prometheus scraped the server over the internal network: its target is up and it holds every client's
        # bytes from the run. It scrapes every 5 s; the wait is for its next scrape, bounded.
        deadline = time.monotonic() + 90
        while True:
            up, sent = _scraped(compose, env)
            if (up.get("slperf-server") == 1 and set(sent) == {"c1", "c2", "c3"}) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert up == {"slperf-server": 1.0}, up
        assert set(sent) == {"c1", "c2", "c3"} and all(v > 0 for v in sent.values()), sent
        figures["prometheus_client_bytes_up"] = sum(sent.values())

        for key, value in figures.items():
            record_property(key, round(value, 1))
        print("\ncompose federation: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
    finally:
        try:
            if engine.proc is not None and engine.proc.poll() is None:
                down = [*compose, "--profile", "operator", "--profile", "metrics", "down", "-v", "--remove-orphans"]
                _run([*down, "--timeout", "20"], env, 300)
                if not os.environ.get("SLPERF_DOCKER_TEST_DATA_ROOT"):
                    _run([docker, "image", "rm", "-f", image], env, 120)
        finally:
            engine.stop()
