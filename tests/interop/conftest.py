"""Fixtures of the interop suite: one master per test, driven by the real
Python client (slapos.slap) and the real `slapos` CLI of the reference venv.

Target selection:
  --target=reference  (default; or env INTEROP_TARGET) runs
                      `<venv>/bin/slapos proxy start --cfg FILE`
  --target=ours       runs `$SLAPOS_BIN proxy start --cfg FILE`

Tests marked @pytest.mark.reference_bug("why") encode the correct behaviour
where the reference proxy is known to be wrong: they are strict xfails
against the reference and ordinary tests against ours.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
import requests

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
REF_VENV = pathlib.Path(os.environ.get("SLAPOS_REF_VENV", REPO_ROOT / ".venv-ref"))
REF_SLAPOS = REF_VENV / "bin" / "slapos"
DEFAULT_OURS_BIN = REPO_ROOT / "target" / "release" / "slapos"

# test modules import interop_helpers whatever the rootdir
sys.path.insert(0, str(HERE))

# The configured default computer of every master (the proxy's computer_id).
DEFAULT_COMPUTER = "slaprunner"
DEMO_ALIAS_URL = "https://lab.example.invalid/software/demo/software.cfg"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Keep every HTTP access local: the master is reached directly; anything else
# (public IP lookup of `node format`, software.cfg.json schema download of
# `slapos request`) hits a closed local port and fails at once, so that the
# suite never depends on the network.
_DEAD_PROXY = "http://127.0.0.1:9"
_NO_PROXY = "127.0.0.1,localhost,::1"
for _name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[_name] = _DEAD_PROXY
os.environ["no_proxy"] = os.environ["NO_PROXY"] = _NO_PROXY
# Set by slapgrid while it runs buildout; would make the client write
# transaction files.
os.environ.pop("SLAPGRID_INSTANCE_ROOT", None)


def pytest_addoption(parser):
    parser.addoption(
        "--target",
        choices=("reference", "ours"),
        default=os.environ.get("INTEROP_TARGET") or "reference",
        help="master under test: the reference `slapos proxy` (default) or "
        "our binary ($SLAPOS_BIN)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "reference_bug(reason): the reference proxy is known to get this "
        "wrong; strict xfail with --target=reference, normal test with "
        "--target=ours",
    )
    config.addinivalue_line(
        "markers",
        "master_config(slapproxy='', sections=''): extra lines appended to "
        "the [slapproxy] section / extra sections of the master's slapos.cfg",
    )


def pytest_report_header(config):
    target = config.getoption("--target")
    if target == "ours":
        return "interop target: ours (%s)" % ours_binary()
    return "interop target: reference (%s)" % REF_SLAPOS


def pytest_collection_modifyitems(config, items):
    if config.getoption("--target") != "reference":
        return
    for item in items:
        marker = item.get_closest_marker("reference_bug")
        if marker is None:
            continue
        reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
        item.add_marker(
            pytest.mark.xfail(reason="reference bug: %s" % reason, strict=True)
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("call", "setup") or not report.failed:
        return
    factory = getattr(item, "funcargs", {}).get("master_factory")
    for server in getattr(factory, "masters", ()):
        report.sections.append(("master log (%s)" % server.log_path, server.read_log()))


def ours_binary():
    return pathlib.Path(os.environ.get("SLAPOS_BIN") or DEFAULT_OURS_BIN)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MasterStartError(RuntimeError):
    pass


class Master:
    """A master (reference proxy or our binary) running in its own tmp dir."""

    def __init__(self, target, workdir, slapproxy_extra="", extra_sections=""):
        self.target = target
        self.workdir = pathlib.Path(workdir)
        self.slapproxy_extra = slapproxy_extra
        self.extra_sections = extra_sections
        self.computer_id = DEFAULT_COMPUTER
        self.cfg_path = self.workdir / "slapos.cfg"
        self.log_path = self.workdir / "master.log"
        self.db_path = self.workdir / "proxy.db"
        self.process = None
        self.port = None
        self.url = None
        self._log_file = None

    # -- configuration -------------------------------------------------
    def write_config(self):
        text = (
            "[slapos]\n"
            "master_url = {url}\n"
            "computer_id = {computer_id}\n"
            "software_root = {workdir}/soft\n"
            "instance_root = {workdir}/inst\n"
            "[slapproxy]\n"
            "host = 127.0.0.1\n"
            "port = {port}\n"
            "database_uri = {db}\n"
            "{slapproxy_extra}"
            "[slapconsole]\n"
            "alias =\n"
            "  demo {alias}\n"
            "{extra_sections}"
        ).format(
            url=self.url,
            computer_id=self.computer_id,
            workdir=self.workdir,
            port=self.port,
            db=self.db_path,
            alias=DEMO_ALIAS_URL,
            slapproxy_extra=_block(self.slapproxy_extra),
            extra_sections=_block(self.extra_sections),
        )
        self.cfg_path.write_text(text)

    def command(self):
        if self.target == "ours":
            return [str(ours_binary()), "proxy", "start", "--cfg", str(self.cfg_path)]
        return [str(REF_SLAPOS), "proxy", "start", "--cfg", str(self.cfg_path)]

    # -- life cycle ----------------------------------------------------
    def start(self, attempts=3):
        last_error = None
        for _ in range(attempts):
            self.port = free_port()
            self.url = "http://127.0.0.1:%d" % self.port
            self.write_config()
            try:
                self._start_once()
                return
            except MasterStartError as error:
                last_error = error
                self.stop()
        raise last_error

    def _start_once(self):
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("### %s\n" % " ".join(self.command())).encode())
        self._log_file.flush()
        self.process = subprocess.Popen(
            self.command(),
            cwd=str(self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MasterStartError(
                    "master exited with code %s before answering:\n%s"
                    % (self.process.returncode, self.read_log())
                )
            try:
                answer = requests.get(self.url + "/getRunId", timeout=2)
                if answer.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise MasterStartError(
            "master did not answer GET /getRunId within %ss:\n%s"
            % (START_TIMEOUT, self.read_log())
        )

    def stop(self):
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def read_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as error:
            return "(no log: %s)" % error

    # -- clients -------------------------------------------------------
    def slap(self):
        """A new, initialised slapos.slap connection to this master."""
        import slapos.slap

        connection = slapos.slap.slap()
        connection.initializeConnection(self.url)
        return connection

    def cli_env(self, extra=None):
        env = dict(os.environ)
        env["SLAPOS_CLIENT_CONFIGURATION"] = str(self.cfg_path)
        env["SLAPOS_CONFIGURATION"] = str(self.cfg_path)
        env.pop("SLAPGRID_INSTANCE_ROOT", None)
        env["PYTHONIOENCODING"] = "utf-8"
        if extra:
            env.update(extra)
        return env

    def cli(self, *args, timeout=120, env=None):
        """Run the real `slapos` CLI of the reference venv against this
        master; returns the CompletedProcess (stdout and stderr merged into
        .output)."""
        command = [str(REF_SLAPOS)] + [str(a) for a in args]
        completed = subprocess.run(
            command,
            cwd=str(self.workdir),
            env=self.cli_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        completed.output = completed.stdout.decode("utf-8", "replace")
        return completed

    def get(self, route, **kw):
        return requests.get(self.url + "/" + route.lstrip("/"), timeout=30, **kw)

    def post(self, route, **kw):
        return requests.post(self.url + "/" + route.lstrip("/"), timeout=30, **kw)


def _block(text):
    text = (text or "").strip("\n")
    return text + "\n" if text else ""


@pytest.fixture(scope="session")
def target(pytestconfig):
    value = pytestconfig.getoption("--target")
    if not REF_SLAPOS.exists():
        pytest.exit(
            "reference venv missing (%s): run scripts/setup-reference.sh" % REF_VENV,
            returncode=2,
        )
    if value == "ours" and not ours_binary().exists():
        pytest.exit(
            "--target=ours but SLAPOS_BIN=%s does not exist" % ours_binary(),
            returncode=2,
        )
    return value


class MasterFactory:
    """Starts masters for one test and stops them all at its end."""

    def __init__(self, target, tmp_path):
        self.target = target
        self.tmp_path = tmp_path
        self.masters = []

    def __call__(self, slapproxy="", sections=""):
        workdir = self.tmp_path / ("master%d" % len(self.masters))
        workdir.mkdir()
        server = Master(self.target, workdir, slapproxy_extra=slapproxy,
                        extra_sections=sections)
        self.masters.append(server)
        try:
            server.start()
        except MasterStartError as error:
            server.stop()
            pytest.fail(str(error), pytrace=False)
        return server

    def stop_all(self):
        for server in self.masters:
            server.stop()


@pytest.fixture
def master_factory(target, tmp_path):
    factory = MasterFactory(target, tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def master(request, master_factory):
    """A fresh master with an empty database, one per test.  Extra
    configuration comes from @pytest.mark.master_config(slapproxy=..., sections=...)."""
    marker = request.node.get_closest_marker("master_config")
    kwargs = dict(marker.kwargs) if marker else {}
    return master_factory(slapproxy=kwargs.get("slapproxy", ""),
                          sections=kwargs.get("sections", ""))


@pytest.fixture
def slap(master):
    """A slapos.slap connection to the test's master."""
    return master.slap()
