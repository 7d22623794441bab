"""A real Kubernetes control plane on 127.0.0.1, for the tests and for ``make cluster``.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the Kubernetes
sources (``tests/cluster/build.sh``, cached under ``~/.cache/mlrollout/kube/<version>/bin``),
plus kwok, which plays the kubelet of a few fake nodes so that scheduled pods become Running
and Ready and the real Deployment controller reports real Deployment status. No container
ever runs.

- TLS everywhere the API server is reached: a throw-away CA made here signs the serving
  certificate and the client certificates (admin in ``system:masters``, the controller
  manager, the scheduler, kwok); etcd listens on loopback only.
- Authorization is ``Node,RBAC``; service-account tokens are signed with a key made here
  and handed out through the TokenRequest API (``sa_kubeconfig``).
- Free ports, one temporary directory, every process in its own process group. Processes
  are stopped by ``stop()``, at interpreter exit (atexit), on SIGTERM/SIGHUP, and die with
  their parent (PR_SET_PDEATHSIG) when the Python process is killed outright.

Use::

    with ControlPlane() as cp:           # start() + wait_ready(); stop() on exit
        cp.kubectl("get", "nodes")
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
        kubeconfig = cp.sa_kubeconfig("x", "default")

``python tests/cluster/controlplane.py`` (``make cluster``) starts one and waits for Ctrl-C.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.2")
CACHE_ROOT = Path(
    os.environ.get("MLROLLOUT_KUBE_CACHE", Path.home() / ".cache" / "mlrollout" / "kube")
)
BIN_DIR = CACHE_ROOT / f"v{KUBE_VERSION}" / "bin"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
BUILD_SCRIPT = Path(__file__).with_name("build.sh")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    """A component did not start or did not become ready (the message ends with its log)."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``str()`` includes what it printed on stderr."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd[1:])} exited {self.returncode}: {self.stderr.strip()}"


def missing_binaries(bin_dir: Path = BIN_DIR) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


# --- certificates -------------------------------------------------------------------------


class _CA:
    """A throw-away certificate authority (ECDSA P-256, valid one day)."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlrollout-test-ca")])
        self.cert = (
            self._builder(name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: Any, public_key: Any) -> Any:
        x509 = self._x509
        now = dt.datetime.now(dt.UTC)
        issuer = subject if not hasattr(self, "cert") else self.cert.subject
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def issue(
        self,
        common_name: str,
        organizations: Iterable[str] = (),
        *,
        server_names: Iterable[str] = (),
        server_ips: Iterable[str] = (),
    ) -> tuple[bytes, bytes]:
        """A leaf certificate and its key, both PEM. With names/IPs it is a serving cert."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID

        x509, oid = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        attrs = [x509.NameAttribute(oid.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(oid.COMMON_NAME, common_name))
        names = [x509.DNSName(n) for n in server_names]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips]
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if names else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            self._builder(x509.Name(attrs), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, self._hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _service_account_keys() -> tuple[bytes, bytes]:
    """RSA key pair that signs service-account tokens (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_document(
    server: str,
    ca_pem: bytes,
    user: str,
    *,
    cert: tuple[bytes, bytes] | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    credentials: dict[str, str] = {}
    if cert is not None:
        credentials = {
            "client-certificate-data": _b64(cert[0]),
            "client-key-data": _b64(cert[1]),
        }
    if token is not None:
        credentials = {"token": token}
    context: dict[str, str] = {"cluster": "mlrollout-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "mlrollout-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }


# --- processes ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent dies (Linux only).

    SIGKILL, not SIGTERM: a kube-apiserver told to stop after etcd went away waits for
    etcd indefinitely. Only the temp dir is left then; the next start removes it."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Process:
    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stopped as a whole
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


OWNER_FILE = "owner.pid"
WORKDIR_PREFIX = "mlrollout-kube-"


def _remove_orphaned_workdirs() -> None:
    """Temp dirs of control planes whose Python process was killed outright (SIGKILL: no
    atexit ran; PDEATHSIG stopped the components but nothing removed their files)."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


_RUNNING: set[ControlPlane] = set()
_HOOKS_INSTALLED = False


def _stop_all() -> None:
    for cp in list(_RUNNING):
        cp.stop()


def _install_exit_hooks() -> None:
    """atexit, and SIGTERM/SIGHUP handlers that stop every control plane, then chain."""
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            _stop_all()
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # die of the signal, as without this handler
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


# --- the control plane --------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        bin_dir: Path = BIN_DIR,
        nodes: int = 2,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.nodes = nodes
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self._log = log or (lambda _msg: None)
        self._processes: dict[str, _Process] = {}
        self._sa_kubeconfigs: dict[tuple[str, str], Path] = {}
        self.port = 0
        self.server = ""
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self.audit_log = self.workdir / "logs" / "audit.jsonl"
        self.timings: dict[str, float] = {}
        self.startup_seconds = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> ControlPlane:
        """Start every component and return once the cluster is ready to use."""
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"missing {', '.join(missing)} in {self.bin_dir}: run `make kube-bins`"
            )
        _install_exit_hooks()
        _remove_orphaned_workdirs()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        _RUNNING.add(self)
        t0 = time.monotonic()
        try:
            for attempt in (1, 2):
                try:
                    self._start_once(t0, timeout)
                    break
                except ControlPlaneError as exc:
                    # A port picked free was taken before the component bound it (another
                    # process's connection): once more on fresh ports; anything else fails.
                    if attempt == 2 or "address already in use" not in str(exc):
                        raise
                    self._log(f"[control-plane] a port was taken, retrying: {exc}")
                    for name in reversed(list(self._processes)):
                        self._processes.pop(name).stop()
                    shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
                    self.kubeconfig.unlink(missing_ok=True)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_once(self, t0: float, timeout: float) -> None:
        self._pki()
        self._mark("certificates", t0)
        self._start_etcd()
        self._start_apiserver()
        self._wait_apiserver(timeout)
        self._mark("kube-apiserver ready", t0)
        self._start_controllers()
        self._create_nodes()
        deadline = time.monotonic() + timeout
        self._until(deadline, "fake nodes Ready", self._nodes_ready)
        self._mark("kwok nodes Ready", t0)
        self._until(deadline, "ServiceAccount default/default", self._default_sa)
        self._mark("ready", t0)

    def stop(self) -> None:
        """Stop every process (reverse start order); remove the temp dir if we made it."""
        for name in reversed(list(self._processes)):
            self._processes[name].stop()
        self._processes.clear()
        _RUNNING.discard(self)
        if self._own_workdir and os.environ.get("MLROLLOUT_KEEP_LOGS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def idle_usage(self, seconds: float) -> dict[str, dict[str, float]]:
        """CPU (% of one core) and RSS (MB) of each component over ``seconds`` (Linux)."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        before = {n: cpu(p.popen.pid) for n, p in self._processes.items()}
        time.sleep(seconds)
        out = {}
        for name, proc in self._processes.items():
            status = Path(f"/proc/{proc.popen.pid}/status").read_text()
            rss_kb = next(
                int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS")
            )
            used = cpu(proc.popen.pid) - before[name]
            out[name] = {"cpu_percent": round(100 * used / seconds, 1), "rss_mb": rss_kb // 1024}
        return out

    def logs(self) -> dict[str, Path]:
        return {name: p.log for name, p in self._processes.items()}

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """``os.environ`` with ``KUBECONFIG`` pointing at this cluster (admin by default)."""
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}

    # --- helpers for tests --------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built with this control plane (admin unless ``kubeconfig``)."""
        cmd = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            *args,
        ]
        out = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and out.returncode != 0:
            raise KubectlError(out.returncode, cmd, out.stdout, out.stderr)
        return out

    def apply(
        self,
        obj: Mapping[str, Any] | Iterable[Mapping[str, Any]] | str,
        *,
        kubeconfig: Path | None = None,
        check: bool = True,
        args: Iterable[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of one object, several objects, or YAML/JSON text."""
        if isinstance(obj, str):
            text = obj
        elif isinstance(obj, Mapping):
            text = json.dumps(obj)
        else:
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(obj)})
        return self.kubectl(
            "apply", "-f", "-", *args, input=text, check=check, kubeconfig=kubeconfig
        )

    def get_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def sa_kubeconfig(self, namespace: str, serviceaccount: str, duration: str = "12h") -> Path:
        """A kubeconfig authenticating as a ServiceAccount (token from the TokenRequest API)."""
        token = self.kubectl(
            "create", "token", serviceaccount, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = self.workdir / f"sa-{namespace}-{serviceaccount}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{serviceaccount}"
        doc = kubeconfig_document(
            self.server, self.ca_file.read_bytes(), user, token=token, namespace=namespace
        )
        path.write_text(json.dumps(doc, indent=1))
        path.chmod(0o600)
        return path

    def wait_ready(self, timeout: float = 120.0) -> None:
        """API server ready, every fake node Ready, the default ServiceAccount created."""
        deadline = time.monotonic() + timeout
        self._wait_apiserver(timeout)
        self._until(deadline, "fake nodes Ready", self._nodes_ready)
        self._until(deadline, "ServiceAccount default/default", self._default_sa)

    # --- internals ----------------------------------------------------------------------

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)
        self._log(f"[control-plane] {what} after {self.timings[what]:.1f} s")

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = _CA()
        self._ca = ca
        files = {"ca.crt": ca.cert_pem(), "ca.key": ca.key_pem()}
        cert, key = ca.issue(
            "kube-apiserver",
            server_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
        )
        files |= {"apiserver.crt": cert, "apiserver.key": key}
        # The aggregation layer's front proxy (what kubeadm sets up): without it the
        # controllers' delegated authentication logs a missing CA bundle every 20 s.
        cert, key = ca.issue("front-proxy-client")
        files |= {"front-proxy-client.crt": cert, "front-proxy-client.key": key}
        sa_private, sa_public = _service_account_keys()
        files |= {"sa.key": sa_private, "sa.pub": sa_public}
        for name, data in files.items():
            (pki / name).write_bytes(data)
            (pki / name).chmod(0o600)
        self._client_certs = {
            "admin": ca.issue("kubernetes-admin", ["system:masters"]),
            "controller-manager": ca.issue("system:kube-controller-manager"),
            "scheduler": ca.issue("system:kube-scheduler"),
            "kwok": ca.issue("kwok", ["system:masters"]),
        }

    def _write_kubeconfig(self, path: Path, user: str) -> Path:
        doc = kubeconfig_document(
            self.server, self._ca.cert_pem(), user, cert=self._client_certs[user]
        )
        path.write_text(json.dumps(doc, indent=1))
        path.chmod(0o600)
        return path

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        proc = _Process(name, argv, logs / f"{name}.log")
        self._processes[name] = proc
        return proc

    def _start_etcd(self) -> None:
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # throw-away data: no fsync on a shared test machine
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self.port = _free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-issuer={ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The `kubernetes` Service cannot point at a loopback address; nothing here
                # reaches the API server through it.
                "--endpoint-reconciler-type=none",
                # Requests made with service-account tokens (not the controllers' own) are
                # written to an audit log: tests read what the operator really called.
                f"--audit-policy-file={self._audit_policy()}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=200",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _audit_policy(self) -> Path:
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                {"level": "None"},
            ],
        }
        path = self.workdir / "audit-policy.json"
        path.write_text(json.dumps(policy))
        return path

    def audit(self, user: str | None = None) -> list[dict[str, Any]]:
        """Audit events (stage ResponseComplete) of service-account requests, optionally of one
        user (``system:serviceaccount:NS:NAME``): verb, objectRef, responseStatus.code..."""
        events = []
        with contextlib.suppress(FileNotFoundError), open(self.audit_log) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written
                stage = event.get("stage")
                # A watch is logged when it starts; it completes only when it is closed.
                if stage != "ResponseComplete" and not (
                    stage == "ResponseStarted" and event.get("verb") == "watch"
                ):
                    continue
                if user is None or event.get("user", {}).get("username") == user:
                    events.append(event)
        return events

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.workdir / "pki"
        cert, key = self._client_certs["admin"]
        (pki / "admin.crt").write_bytes(cert)
        (pki / "admin.key").write_bytes(key)
        (pki / "admin.key").chmod(0o600)
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def _wait_apiserver(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ctx = self._ssl_context()
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        if not self.kubeconfig.exists():
                            self._write_kubeconfig(self.kubeconfig, "admin")
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise ControlPlaneError(
            f"kube-apiserver not ready within {timeout:.0f} s ({last})\n"
            + self._processes["kube-apiserver"].tail()
        )

    def _start_controllers(self) -> None:
        pki = self.workdir / "pki"
        cm = self._write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", "controller-manager"
        )
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--v=1",
            ],
        )
        sched = self._write_kubeconfig(self.workdir / "scheduler.kubeconfig", "scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={_free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        kwok = self._write_kubeconfig(self.workdir / "kwok.kubeconfig", "kwok")
        stages = self.workdir / "kwok-stages.yaml"
        stages.write_text(KWOK_STAGES)
        self._spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={kwok}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={'='.join(KWOK_ANNOTATION)}",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{_free_port()}",
                "--node-lease-duration-seconds=40",
            ],
        )

    def _create_nodes(self) -> None:
        nodes = [fake_node(f"kwok-node-{i}") for i in range(self.nodes)]
        self.apply(nodes)

    def _nodes_ready(self) -> bool:
        items = self.get_json("nodes")["items"]
        ready = [
            n
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= self.nodes

    def _default_sa(self) -> bool:
        out = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return out.returncode == 0

    def _until(self, deadline: float, what: str, probe: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            if probe():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"control plane: {what} not reached in time\n{self._all_tails()}")

    def _check_alive(self) -> None:
        for name, proc in self._processes.items():
            if not proc.alive():
                raise ControlPlaneError(
                    f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                )

    def _all_tails(self) -> str:
        return "\n".join(f"--- {n}\n{p.tail(10)}" for n, p in self._processes.items())


# kwok's behaviour, as kwok "Stages" (resource selectors + Go templates of the new status):
# a fake node turns Ready with addresses and node info; a pod bound to one turns Running
# and Ready with an IP from --cidr; a pod being deleted goes away (no kubelet to confirm).
KWOK_STAGES = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: mlrollout-node-up}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}
  next:
    statusTemplate: |
      {{ $t := Now }}
      conditions:
      {{ range NodeConditions }}
      - {type: {{ .type | Quote }}, status: {{ .status | Quote }}, reason: {{ .reason | Quote }}, message: {{ .message | Quote }}, lastHeartbeatTime: {{ $t | Quote }}, lastTransitionTime: {{ $t | Quote }}}
      {{ end }}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      - {type: Hostname, address: {{ NodeName | Quote }}}
      allocatable: {{ .status.allocatable | toJson }}
      capacity: {{ .status.capacity | toJson }}
      nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: fake, containerRuntimeVersion: fake, kernelVersion: fake, kubeProxyVersion: fake, osImage: fake, machineID: "", systemUUID: "", bootID: ""}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: mlrollout-node-heartbeat}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: In, values: ['True']}
  delay: {durationMilliseconds: 60000, jitterDurationMilliseconds: 70000}
  next:
    statusTemplate: |
      {{ $t := Now }}
      conditions:
      {{ range NodeConditions }}
      - {type: {{ .type | Quote }}, status: {{ .status | Quote }}, reason: {{ .reason | Quote }}, message: {{ .message | Quote }}, lastHeartbeatTime: {{ $t | Quote }}, lastTransitionTime: {{ $t | Quote }}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: mlrollout-pod-running}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: DoesNotExist}
    - {key: .status.phase, operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $t := Now }}
      phase: Running
      startTime: {{ $t | Quote }}
      conditions:
      - {type: PodScheduled, status: "True", lastTransitionTime: {{ $t | Quote }}}
      - {type: Initialized, status: "True", lastTransitionTime: {{ $t | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $t | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $t | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, started: true, restartCount: 0, state: {running: {startedAt: {{ $t | Quote }}}}}
      {{ end }}
      {{ with NodeIPsWith .spec.nodeName }}
      hostIP: {{ index . 0 | Quote }}
      {{ end }}
      {{ with PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
      podIP: {{ index . 0 | Quote }}
      podIPs:
      {{ range . }}
      - {ip: {{ . | Quote }}}
      {{ end }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: mlrollout-pod-gone}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: .metadata.deletionTimestamp, operator: Exists}
  next:
    delete: true
"""


def fake_node(name: str) -> dict[str, Any]:
    """A Node that kwok adopts (by annotation) and keeps Ready; schedulable by any pod."""
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1],
            },
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: start one, print how to use it, stop on Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--time", action="store_true", help="start, print start-up timings as JSON, stop"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --time: also measure CPU and RSS of each component while idle",
    )
    args = parser.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"missing {', '.join(missing)} in {BIN_DIR}: run `make kube-bins`", file=sys.stderr)
        return 2
    cp = ControlPlane(nodes=args.nodes, log=None if args.time else print)
    try:
        cp.start()
        if args.time:
            report: dict[str, Any] = {"startup_seconds": round(cp.startup_seconds, 2)}
            report |= cp.timings
            if args.idle:
                report["idle"] = cp.idle_usage(args.idle)
            print(json.dumps(report))
            return 0
        here = Path(__file__).resolve().parents[2]
        print(
            f"""
Kubernetes v{KUBE_VERSION} is up at {cp.server} ({cp.startup_seconds:.1f} s), {args.nodes} kwok nodes.

  export KUBECONFIG={cp.kubeconfig}
  export PATH={cp.bin_dir}:$PATH
  kubectl get nodes
  kubectl apply -f {here / "crds"}
  kubectl apply -k {here / "manifests"}      # the operator's RBAC and Deployment (its pod never runs)
  {here / ".venv/bin/kopf"} run -m mlrollout.operator.main --all-namespaces   # the operator, here
  kubectl apply -f {here / "examples/first-deployment.yaml"}
  kubectl get md

Logs: {cp.workdir / "logs"}   Pods never run containers (kwok marks them Ready).
Ctrl-C stops everything and deletes {cp.workdir}.
""",
            flush=True,
        )
        while True:
            for name, proc in cp._processes.items():
                if not proc.alive():
                    print(f"{name} exited:\n{proc.tail()}", file=sys.stderr)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping the control plane")
        return 0
    finally:
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
