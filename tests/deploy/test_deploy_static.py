"""Static checks of the deployment files (fast; no Docker engine, no network).

* docker-compose.yml (and the deploy/compose.expose.yml override) against the Compose specification schema
  (check-jsonschema's bundled vendor.compose-spec), plus the federation's own rules (certificate job, SANs,
  per-client certificates and data, health checks, depends_on conditions, restart policies, volumes).
* Every `slperf ...` command line the deployment files run (compose services, the certificate job's shell script,
  health checks, the Dockerfile, systemd units, Kubernetes manifests, the deployment guide's examples) is
  resolved against the real CLI's click command tree: an unknown command or option, a missing required option or
  an ill-typed value fails the test.
* deploy/Dockerfile linted with hadolint (deploy/hadolint.yaml: fails on error-level findings).

check-jsonschema and hadolint come from deploy/requirements-deploy-test.txt; where they are not installed the two
checks that need them skip locally and fail under CI (CI=true), so a missing install step cannot pass silently.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from slperf.cli import main as slperf_main
from slperf.healthcheck import health as health_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
EXPOSE = ROOT / "deploy" / "compose.expose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS_DOCKERFILE = ROOT / "deploy" / "prometheus" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
SYSTEMD = ROOT / "deploy" / "systemd"
GUIDE = ROOT / "deploy" / "README.md"
CLIENTS = ("c1", "c2", "c3")


# -- tools -------------------------------------------------------------------------------------------------------
def tool(name: str) -> str:
    """A tool from the venv (next to this interpreter) or PATH; skip locally, fail under CI when missing."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (pip install -r deploy/requirements-deploy-test.txt)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# -- compose interpolation ----------------------------------------------------------------------------------------
_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation: $$ -> $, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR}, $VAR."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group("braced") if m.group("braced") is not None else m.group("plain")
        for sep in (":-", "-", ":?", "?"):
            if sep in expr:
                name, default = expr.split(sep, 1)
                current = env.get(name)
                if sep.startswith(":") and not current:
                    current = None
                if current is None:
                    if "?" in sep:
                        raise AssertionError(f"required variable {name} is unset: {default}")
                    return default
                return current
        return env.get(expr, "")

    return _VAR.sub(sub, value)


def load_compose(path: Path = COMPOSE, env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(path.read_text()), env or {})


# -- command lines -------------------------------------------------------------------------------------------------
def dockerfile_instruction(name: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """The JSON-form arguments of the last NAME instruction (ENTRYPOINT, CMD) of the runtime stage."""
    text = dockerfile.read_text().replace("\\\n", " ")
    found = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert found, f"no {name} in {dockerfile}"
    import json

    return json.loads(found[-1][len(name) + 1 :].strip())


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a POSIX shell script: words split at ; && || | ( ) and newlines, keywords dropped."""
    script = script.replace("\\\n", " ")
    commands: list[list[str]] = []
    for line in script.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token and set(token) <= set(";&|()"):
                if current:
                    commands.append(current)
                current = []
                continue
            current.append(token)
        if current:
            commands.append(current)
    keywords = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "exec"}
    cleaned = []
    for words in commands:
        while words and (words[0] in keywords or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0])):
            words = words[1:]
        if words:
            cleaned.append(words)
    return cleaned


def slperf_invocation(argv: list[str]) -> tuple[str, list[str]] | None:
    """('slperf', args) / ('health', args) when argv runs the CLI or the health check, else None."""
    if not argv:
        return None
    prog = Path(argv[0]).name
    if prog == "slperf":
        return "slperf", argv[1:]
    if re.fullmatch(r"python[0-9.]*", prog) and len(argv) >= 3 and argv[1] == "-m":
        if argv[2] == "slperf.cli":
            return "slperf", argv[3:]
        if argv[2] == "slperf.healthcheck":
            return "health", argv[3:]
    return None


def _stub(command: click.Command, calls: list, path: tuple[str, ...] = ()) -> click.Command:
    """A copy of the command tree whose callbacks only record the resolved command and parameters."""
    clone = copy.copy(command)
    here = (*path, command.name or "")

    def record(*_args, **params):
        calls.append((here, params))

    clone.callback = record
    if isinstance(command, click.Group):
        # Plain click.Group: the CLI's own group maps known errors to messages, importing the daemons (and torch)
        # to do so; parsing needs none of that.
        clone.__class__ = click.Group
        clone.commands = {name: _stub(sub, calls, here) for name, sub in command.commands.items()}
    return clone


def resolve(kind: str, args: list[str]) -> tuple[tuple[str, ...], dict]:
    """Parses args with the real click tree (callbacks stubbed out); raises AssertionError naming the problem."""
    calls: list = []
    root = _stub(slperf_main if kind == "slperf" else health_command, calls)
    try:
        root.main(args=list(args), prog_name=kind, standalone_mode=False)
    except click.exceptions.ClickException as exc:
        raise AssertionError(f"`{kind} {' '.join(args)}` does not resolve: {exc.format_message()}") from None
    assert calls, f"`{kind} {' '.join(args)}` runs no command"
    if kind == "slperf":
        # The group's own callback is recorded first; the leaf command must have been reached.
        leaf = calls[-1][0]
        assert isinstance(_walk(leaf), click.Command) and not isinstance(_walk(leaf), click.Group), (
            f"`slperf {' '.join(args)}` stops at the group {' '.join(leaf)}"
        )
    return calls[-1]


def _walk(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = slperf_main
    for name in path[1:]:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def compose_service_commands(compose: dict) -> list[tuple[str, str, list[str]]]:
    """(service, where, argv) for every command a compose service runs: its command/entrypoint and health check."""
    entrypoint_default = dockerfile_instruction("ENTRYPOINT")
    cmd_default = dockerfile_instruction("CMD")
    found = []
    slperf_image = compose["services"]["server"]["image"]
    for name, svc in compose["services"].items():
        if svc.get("image") != slperf_image:  # another program's image (Prometheus): not slperf's commands
            continue
        entrypoint = svc.get("entrypoint", entrypoint_default)
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        command = svc.get("command", cmd_default if "entrypoint" not in svc else [])
        command = shlex.split(command) if isinstance(command, str) else list(command)
        argv = entrypoint + command
        if Path(argv[0]).name in ("sh", "bash") and any(a.startswith("-") and "c" in a for a in argv[1:2]):
            for words in shell_commands(argv[2]):
                found.append((name, "script", words))
        else:
            found.append((name, "command", argv))
        test = (svc.get("healthcheck") or {}).get("test")
        if test and not (svc.get("healthcheck") or {}).get("disable"):
            if test[0] == "CMD":
                found.append((name, "healthcheck", list(test[1:])))
            elif test[0] == "CMD-SHELL":
                found.extend((name, "healthcheck", words) for words in shell_commands(test[1]))
    return found


# -- compose: schema -----------------------------------------------------------------------------------------------
def test_compose_files_match_the_compose_specification(tmp_path):
    checker = tool("check-jsonschema")
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(EXPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The validator is really looking: a misspelt key in a copy is refused.
    # The copy is edited as data, not as text, so a reworded comment or a reordered key cannot make it a no-op.
    spec = yaml.safe_load(COMPOSE.read_text())
    server = spec["services"]["server"]
    server["restartz"] = server.pop("restart")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "restartz" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.mark.slow  # starts a Python process of its own
def test_docker_compose_accepts_the_files_when_installed():
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip(
            "docker-compose is not installed (deploy/ci-docker-setup.sh installs it); the schema test covers the files"
        )
    for files in ([COMPOSE], [COMPOSE, EXPOSE]):
        args = [a for f in files for a in ("-f", str(f))]
        proc = subprocess.run([exe, *args, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr


# -- compose: every slperf command resolves --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env",
    [{}, {"SLPERF_RUN_CONFIG": "compose-smoke.yaml", "SLPERF_TORCH_THREADS": "2"}],
    ids=["defaults", "overridden"],
)
def test_every_slperf_command_in_compose_resolves(env):
    compose = load_compose(env=env)
    resolved = []
    for service, where, argv in compose_service_commands(compose):
        invocation = slperf_invocation(argv)
        if invocation is None:
            continue
        path, params = resolve(*invocation)
        resolved.append((service, where, path, params))
    by_service = {}
    for service, where, path, params in resolved:
        by_service.setdefault(service, []).append((where, path[1:], params))
    # What each service must run.
    certs = [p for w, p, _ in by_service["certs"]]
    assert ("certs", "init") in certs and ("certs", "add-client") in certs, by_service["certs"]
    assert [p for w, p, _ in by_service["server"] if w == "command"] == [("server",)]
    assert [p for w, p, _ in by_service["operator"] if w == "command"] == [("run",)]
    for cid in CLIENTS:
        (params,) = [p for w, path, p in by_service[cid] if w == "command" and path == ("client",)]
        assert params["client_id"] == cid and params["address"] == "server:50051"
        assert all(params[k] is not None for k in ("ca", "cert", "key")), params  # mutual TLS, not --insecure
        assert not params["insecure"]
        assert [w for w, path, _ in by_service[cid] if w == "healthcheck"], f"{cid} has no health check"
    assert [w for w, _, _ in by_service["server"] if w == "healthcheck"]
    # The operator's run config: the documented default, and the override.
    (run_params,) = [p for w, path, p in by_service["operator"] if path == ("run",)]
    expected = env.get("SLPERF_RUN_CONFIG", "mnist_splitfed_v1.yaml")
    assert str(run_params["config_path"]) == f"/var/lib/slperf/configs/{expected}"
    assert (ROOT / "configs" / "mnist_splitfed_v1.yaml").exists()
    assert (ROOT / "deploy" / "configs" / "compose-smoke.yaml").exists()


def test_the_resolver_rejects_what_the_cli_rejects():
    with pytest.raises(AssertionError, match="No such command"):
        resolve("slperf", ["serve", "--address", "x"])
    with pytest.raises(AssertionError, match="No such option"):
        resolve("slperf", ["client", "--server", "s:1", "--id", "c1", "--certs", "d"])
    with pytest.raises(AssertionError, match="Missing option"):
        resolve("slperf", ["client", "--server", "s:1"])
    with pytest.raises(AssertionError, match="not a valid integer"):
        resolve("slperf", ["server", "--torch-threads", "many"])
    with pytest.raises(AssertionError, match="does not resolve: Usage: slperf certs"):
        resolve("slperf", ["certs"])  # a group without its command
    with pytest.raises(AssertionError, match="No such option"):
        resolve("health", ["--server", "s:1", "--bogus"])
    assert resolve("slperf", ["certs", "add-client", "c9", "--dir", "d"])[0][1:] == ("certs", "add-client")
    script = (
        'if [ ! -f "$pki/ca.pem" ]; then\n  slperf certs init --dir "$pki" && echo ok || exit 1\nfi\n'
        'for id in $ids; do [ -f x ] || slperf certs add-client "$id" --dir "$pki"; done'
    )
    cmds = [c for c in shell_commands(script) if c[0] == "slperf"]
    assert cmds == [
        ["slperf", "certs", "init", "--dir", "$pki"],
        ["slperf", "certs", "add-client", "$id", "--dir", "$pki"],
    ]


# -- compose: the federation's own rules -----------------------------------------------------------------------------
def test_compose_topology():
    compose = load_compose()
    services = compose["services"]
    assert set(services) >= {"certs", "server", "operator", *CLIENTS}
    # The certificate job: one-shot, no network, SAN includes the service name the clients dial.
    certs = services["certs"]
    assert certs["restart"] == "no" and certs.get("network_mode") == "none"
    script = " ".join(certs["command"]) if isinstance(certs["command"], list) else certs["command"]
    (init,) = [c for c in shell_commands(script) if c[:3] == ["slperf", "certs", "init"]]
    _, params = resolve("slperf", init[1:])
    assert "server" in params["server_names"]
    # Server: waits for the certificates, is health-checked, restarts, keeps runs on a volume, certs read-only.
    server = services["server"]
    assert server["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert server["restart"] == "unless-stopped"
    assert "runs:/var/lib/slperf/runs" in server["volumes"]
    assert "server-certs:/var/lib/slperf/certs:ro" in server["volumes"]
    seen_volumes = set()
    for cid in CLIENTS:
        svc = services[cid]
        assert svc["depends_on"]["server"]["condition"] == "service_healthy"
        assert svc["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        assert svc["restart"] == "unless-stopped"
        own = {v.split(":")[0] for v in svc["volumes"]}
        # its own certificate, its own data, and its own training state (kept across restarts of the container)
        assert own == {f"{cid}-certs", f"{cid}-cache", f"{cid}-state"}, svc["volumes"]
        assert f"{cid}-state:/var/lib/slperf/state" in svc["volumes"]
        assert f"{cid}-certs:/var/lib/slperf/certs:ro" in svc["volumes"]
        seen_volumes |= own
        # The certificate job fills exactly this client's certificate volume.
        assert f"{cid}-certs:/export/{cid}" in certs["volumes"]
        assert cid in certs["environment"]["SLPERF_CLIENTS"].split()
    assert len(seen_volumes) == 3 * len(CLIENTS)
    # Only the certificate job sees the CA.
    for name, svc in services.items():
        if name != "certs":
            assert not any(str(v).startswith("pki:") for v in svc.get("volumes", [])), name
    operator = services["operator"]
    assert operator["profiles"] == ["operator"] and operator["restart"] == "no"
    assert all(dep["condition"] == "service_healthy" for dep in operator["depends_on"].values())
    assert set(operator["depends_on"]) == {"server", *CLIENTS}
    # The metrics profile: Prometheus, off by default, on the internal network, scraping what the server serves.
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"] and prometheus["networks"] == ["federation"]
    assert prometheus["depends_on"]["server"]["condition"] == "service_healthy"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    scrape = yaml.safe_load((ROOT / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    (target,) = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    metrics_address = server["command"][server["command"].index("--metrics-address") + 1]
    assert target == f"server:{metrics_address.rpartition(':')[2]}"
    assert all("profiles" in svc for name, svc in services.items() if name in ("prometheus", "operator"))
    # Its default image is the offline one deploy/ci-docker-setup.sh builds; SLPERF_PROMETHEUS_IMAGE overrides it.
    assert prometheus["image"] == "slperf/prometheus:bookworm"
    upstream = load_compose(env={"SLPERF_PROMETHEUS_IMAGE": "prom/prometheus:v2.53.0"})["services"]["prometheus"]
    assert upstream["image"] == "prom/prometheus:v2.53.0"
    assert "/prometheus" in {v.split(":")[1] for v in prometheus["volumes"]}
    # Only the server listens and nothing is published from the base file; the network is internal.
    assert not any("ports" in svc for svc in services.values())
    assert compose["networks"]["federation"]["internal"] is True
    expose = load_compose(EXPOSE)
    assert expose["services"]["server"]["ports"] and set(expose["services"]) == {"server"}


# -- Dockerfile ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", [DOCKERFILE, PROMETHEUS_DOCKERFILE], ids=["slperf", "prometheus"])
def test_dockerfile_lints_clean(dockerfile):
    hadolint = tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / "deploy" / "hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_dockerfile():
    """The offline Prometheus image takes what prom/prometheus takes: Prometheus's flags as its command (compose
    passes them), its data in /prometheus, as nobody; built on the offline base from the setup script's context."""
    text = PROMETHEUS_DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=slperf/base:bookworm$", text, re.M)
    assert re.search(r"^COPY bin/prometheus bin/promtool /usr/local/bin/$", text, re.M)
    assert re.search(r"^USER 65534:65534$", text, re.M)
    assert dockerfile_instruction("ENTRYPOINT", PROMETHEUS_DOCKERFILE) == ["/usr/local/bin/prometheus"]
    command = load_compose()["services"]["prometheus"]["command"]
    assert dockerfile_instruction("CMD", PROMETHEUS_DOCKERFILE) == command
    assert dockerfile_instruction("VOLUME", PROMETHEUS_DOCKERFILE) == ["/prometheus"]
    setup = (ROOT / "deploy" / "ci-docker-setup.sh").read_text()
    assert "step_prometheus" in setup and "apt-get download prometheus" in setup and "dpkg-deb -x" in setup
    assert "deploy/prometheus/Dockerfile" in setup and "slperf/prometheus:bookworm" in setup


def test_dockerfile_rules():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M), (
        "the default base is the public python:3.11-slim"
    )
    assert "ARG PIP_SOURCE=index" in text and "--no-index --find-links /wheelhouse" in text
    assert re.search(r"^USER \$\{SLPERF_UID\}:\$\{SLPERF_GID\}$", text, re.M)
    assert dockerfile_instruction("ENTRYPOINT") == ["slperf"]
    assert dockerfile_instruction("CMD") == ["--help"]
    healthcheck = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("HEALTHCHECK")]
    assert len(healthcheck) == 1
    import json

    argv = json.loads(healthcheck[0].split("CMD", 1)[1].strip())
    assert slperf_invocation(argv)[0] == "health"
    resolve(*slperf_invocation(argv))
    # Dependencies before code: the dependency install comes before the first COPY of the source.
    assert text.index("-r /src/requirements.txt") < text.index("COPY slperf /src/slperf")
    # No secrets baked in: nothing certificate-like is copied from the context, and the context leaves them out.
    for line in text.splitlines():
        if line.startswith(("COPY", "ADD")) and "--from=" not in line:
            assert not re.search(r"\.pem|\.key|certs|pki", line), line
    ignore = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "*", "the build context is an allow-list"
    assert not any(ln.startswith("!") and re.search(r"cert|pki|\.venv|runs", ln) for ln in ignore), ignore


def test_the_image_gets_every_package_folder():
    """pip builds the wheel inside the image from what was copied there, so a mapped folder that is not copied (the
    fed server's was missed once) only fails when an image is built. Both the COPY and the context allow-list."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = sorted({folder.split("/")[0] for folder in mapping.values()})
    assert "fedserver" in folders and "slserver" in folders, folders
    copied = set(re.findall(r"^COPY (\S+) /src/\1$", DOCKERFILE.read_text(), re.M))
    allowed = {ln[1:] for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.startswith("!")}
    assert not set(folders) - copied, f"not copied into the build stage: {sorted(set(folders) - copied)}"
    assert not set(folders) - allowed, f"left out of the build context: {sorted(set(folders) - allowed)}"


# -- systemd, Kubernetes, the guide ------------------------------------------------------------------------------------
def _systemd_exec_lines(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]


@pytest.mark.parametrize("unit", ["slperf-client.service", "slperf-server.service"])
def test_systemd_units(unit, tmp_path):
    path = SYSTEMD / unit
    env_file = SYSTEMD / f"{unit.split('-')[1].split('.')[0]}.env.example"
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))
    (exec_start,) = _systemd_exec_lines(path)
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in shlex.split(exec_start)]
    path_, params = resolve(*slperf_invocation(argv))
    assert path_[1:] == (("client",) if "client" in unit else ("server",))
    if "client" in unit:
        assert params["ca"] and params["cert"] and params["key"] and not params["insecure"]
    assert re.search(r"^User=slperf$", path.read_text(), re.M)
    assert "RestartPreventExitStatus=2" in path.read_text()
    analyze = shutil.which("systemd-analyze")
    if analyze:  # the unit as systemd reads it: no unknown keys or bad values (warnings fail too)
        copy_ = tmp_path / unit
        copy_.write_text(
            path.read_text()
            .replace("/opt/slperf/bin/slperf", str(Path(sys.executable).parent / "slperf"))
            .replace("EnvironmentFile=/etc/slperf/", f"EnvironmentFile={SYSTEMD}/")
            .replace(".env\n", ".env.example\n")
        )
        proc = subprocess.run([analyze, "verify", str(copy_)], capture_output=True, text=True, timeout=60)
        problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if str(copy_) in ln or unit in ln]
        assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def _k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests():
    entrypoint = dockerfile_instruction("ENTRYPOINT")
    kinds = {}
    secrets = set()
    for name, doc in _k8s_documents():
        assert doc.get("apiVersion") and doc.get("kind"), name
        kinds.setdefault(doc["kind"], []).append(doc.get("metadata", {}).get("name"))
        assert doc["kind"] != "Secret", f"{name}: certificates are created as Secrets from files, never committed"
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod.get("automountServiceAccountToken") is False
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                secrets.add(volume["secret"]["secretName"])
        for container in pod["containers"]:
            argv = list(container.get("command", entrypoint)) + list(container.get("args", []))
            invocation = slperf_invocation(argv)
            assert invocation, f"{name}: {container['name']} does not run slperf"
            resolve(*invocation)
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    resolve(*slperf_invocation(container[probe]["exec"]["command"]))
    assert kinds["Deployment"] == ["slperf-client", "slperf-server"]
    assert "Service" in kinds and "Job" in kinds and "NetworkPolicy" in kinds
    assert secrets == {"slperf-server-certs", "slperf-client-certs", "slperf-operator-certs"}
    guide = GUIDE.read_text()
    for secret in secrets:  # the guide says how to create each of them
        assert re.search(rf"create secret generic {secret}\b", guide), secret
    kubectl = shutil.which("kubectl")
    if kubectl:  # the kustomization renders (offline)
        proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def _guide_commands() -> list[list[str]]:
    """Shell lines of the guide's ```sh blocks, as simple commands."""
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", GUIDE.read_text(), re.S)
    commands = []
    for block in blocks:
        commands += shell_commands(block)
    return commands


_RUN_VALUE_OPTIONS = {
    "-e",
    "--entrypoint",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "-v",
    "--volume",
    "-p",
    "--publish",
    "--name",
    "-l",
    "--label",
}


def compose_run_argv(words: list[str], compose: dict) -> list[str] | None:
    """The argv that `docker-compose [...] run [options] SERVICE [ARGS]` runs in the service's container."""
    if words[:1] != ["docker-compose"] or "run" not in words:
        return None
    i = words.index("run") + 1
    entrypoint = None
    while i < len(words) and words[i].startswith("-"):
        if words[i] in _RUN_VALUE_OPTIONS:
            if words[i] == "--entrypoint":
                entrypoint = shlex.split(words[i + 1])
            i += 2
        else:
            i += 1
    service, args = words[i], words[i + 1 :]
    svc = compose["services"][service]
    if entrypoint is None:
        entrypoint = svc.get("entrypoint", dockerfile_instruction("ENTRYPOINT"))
    if not args:
        args = svc.get("command", [])
    return list(entrypoint) + list(args)


def test_every_slperf_command_in_the_guide_resolves():
    compose = load_compose()
    checked = compose_runs = 0
    for words in _guide_commands():
        words = [w for w in words if w != "sudo"]
        run_argv = compose_run_argv(words, compose)
        if run_argv is not None:
            compose_runs += 1
            words = run_argv
        invocation = slperf_invocation(words)
        if invocation is None:
            continue
        resolve(*invocation)
        checked += 1
    assert compose_runs >= 5, compose_runs
    assert checked >= 12, f"only {checked} slperf commands found in {GUIDE}"
