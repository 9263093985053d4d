"""Postfix alone, Postfix + Mailward (unix and inet socket) and Postfix + rspamd, interleaved in one run.

Needs root and Postfix (./scripts/setup); rspamd (Debian package ``rspamd``) is compared
when it is installed, run privately as an admin would run it: stock rules, the stock
topology (the proxy worker speaks milter and hands each message to ``--rspamd-workers``
normal workers), Bayes and its other redis modules on a private redis (Debian package
``redis-server``), Bayes taught ``--learn`` spam and ham from the sample directory first.
``rspamd-unix`` puts its milter on a unix socket like ``mailward-unix``; ``rspamd-inet`` on
loopback TCP, where Postfix and rspamd's proxy stall ~40 ms per message on delayed ACKs
(measured: p50 65 ms against 19 on unix at one session), so compare like with like.
Both filters ask a DNS server on loopback that answers NXDOMAIN to everything, so both do
their lookups without the network: a private unbound when it is installed (fast enough for
rspamd's many lookups), else tests/dns_server.py. Sends real
messages from ``--sample`` (a directory, e.g. a corpus unpacked to /tmp/corpus) over
concurrent SMTP sessions; every system gets the same messages, and the systems take turns
within each repetition so a slow minute of the shared machine hits all of them alike.

``empty-unix`` is bench/empty_milter.py on a unix socket: what libmilter and pymilter alone cost
the milter process per message through Postfix, the floor under ``mailward-unix``'s milter figure.

Prints per system and session count: msg/s, ratio to Postfix alone, CPU per message of each
process group (Postfix, milter process, scanning workers, rspamd, its redis), sender latency
p50/p99/max, and PSS of the filter at rest and after the run.

    .venv/bin/python bench/postfix_compare.py --sample /tmp/corpus/spamassassin --messages 2000 \\
        --sessions 1,8,32 --repeats 3 --baseline /work/main --systems \\
        postfix,base-unix,mailward-unix,base-inet,mailward-inet,rspamd-unix
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dns_server import EMPTY_ROOT, DnsServer  # noqa: E402
from harness.milter import unix_listening  # noqa: E402
from harness.postfix import Postfix, free_port  # noqa: E402


def _mail(path: Path) -> bytes:
    """A message file's bytes with CRLF line ends and no mbox separator line."""
    raw = path.read_bytes().replace(b"\r\n", b"\n")
    if raw.startswith(b"From ") and b"\n" in raw:  # mbox separator line
        raw = raw.split(b"\n", 1)[1]
    return raw.replace(b"\n", b"\r\n")


def _message_files(directory: Path) -> list[Path]:
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.stat().st_size < 2_000_000 and not p.name.startswith(("cmds", "Summary"))
    )
    if not files:
        raise SystemExit(f"no messages under {directory}")
    return files


def _picked(files: list[Path], n: int, seed: int = 7) -> list[Path]:
    return random.Random(seed).sample(files, min(n, len(files)))


def sample(directory: Path, n: int) -> list[bytes]:
    """``n`` messages picked at random (fixed seed) from the files under ``directory``, CRLF line ends."""
    return [_mail(p) for p in _picked(_message_files(directory), n)]


def learning_set(directory: Path, n: int, skip: int) -> list[tuple[bytes, bool]]:
    """Up to ``n`` spam and ``n`` ham (labelled by a "spam"/"phish" or "ham" directory in their path)
    among the messages :func:`sample` does not pick for ``skip``, to teach rspamd's Bayes with."""
    files = _message_files(directory)
    picked = set(_picked(files, skip))
    rest = [p for p in files if p not in picked]
    spam = [p for p in rest if any(("spam" in d or "phish" in d) for d in p.relative_to(directory).parts[:-1])]
    ham = [p for p in rest if any("ham" in d for d in p.relative_to(directory).parts[:-1])]
    return [(_mail(p), True) for p in spam[:n]] + [(_mail(p), False) for p in ham[:n]]


# --- processes and their CPU and memory ------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user + system) from /proc, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parent[int(entry.name)] = st[0]
    out = [root]
    for pid in parent:
        p = pid
        while p in parent and p > 1:
            p = parent[p]
            if p == root:
                out.append(pid)
                break
    return out


def cpu(pids: list[int]) -> float:
    return sum(st[1] for pid in pids if (st := _stat(pid)) is not None)


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- SMTP load ---------------------------------------------------------------------------------------------
def _session(args: tuple[int, list[bytes]]) -> list[float]:
    port, batch = args
    latencies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        for raw in batch:
            started = time.perf_counter()
            try:
                smtp.sendmail("bench@example.org", ["user@bench.test"], raw)
            except smtplib.SMTPResponseException:
                smtp.rset()  # rejected or tempfailed: still a message the filter handled
            latencies.append(time.perf_counter() - started)
    return latencies


def blast(pool: Pool, port: int, messages: list[bytes], sessions: int) -> tuple[float, list[float]]:
    batches = [(port, messages[i::sessions]) for i in range(sessions)]
    started = time.perf_counter()
    results = pool.map(_session, batches)
    elapsed = time.perf_counter() - started
    return len(messages) / elapsed, sorted(x for r in results for x in r)


# --- filters -------------------------------------------------------------------------------------------------
@dataclass
class Filter:
    name: str
    milter: str  # Postfix's smtpd_milters value; "" for Postfix alone
    proc: subprocess.Popen | None = None
    groups: dict[str, list[int]] = field(default_factory=dict)  # process group -> pids, refreshed
    helpers: list[Redis] = field(default_factory=list)  # processes the filter needs besides its own tree

    def refresh(self) -> None:
        if self.proc is None:
            return
        pids = tree(self.proc.pid)
        if self.name.startswith(("mailward", "base")):
            self.groups = {"milter": [self.proc.pid], "workers": [p for p in pids if p != self.proc.pid]}
        elif self.name.startswith("empty"):
            self.groups = {"milter": pids}
        else:
            self.groups = {"rspamd": pids}
            if self.helpers:
                self.groups["redis"] = [h.proc.pid for h in self.helpers]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for helper in self.helpers:
            helper.stop()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"filter exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_mailward(run: Path, kind: str, workers: int, dns_port: int, source: Path | None = None) -> Filter:
    """Mailward on a unix or inet socket; ``source``: run that checkout's ``src`` instead (a same-run baseline)."""
    name = f"{'base' if source else 'mailward'}-{kind}"
    home = run / name
    home.mkdir()
    port = free_port()
    address = f"unix:{home / 'sock' / 'milter.sock'}" if kind == "unix" else f"inet:{port}@127.0.0.1"
    (home / "mailward.toml").write_text(
        f'state_dir = "{home / "state"}"\n[milter]\nsocket = "{address}"\nworkers = {workers}\n'
        f'[reputation]\nnameservers = ["127.0.0.1"]\nport = {dns_port}\n[logging]\nfile = "{home / "milter.log"}"\n'
    )
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(source / "src")) if source else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(home / "mailward.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=str(home),
    )
    if kind == "unix":
        while not unix_listening(home / "sock" / "milter.sock"):
            if proc.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError("mailward did not start")
            time.sleep(0.02)
    else:
        _wait_port(port, proc)
    print(f"{name} listening {time.monotonic() - started:.2f} s after start")
    return Filter(name, address if kind == "unix" else f"inet:127.0.0.1:{port}", proc)


def start_empty(run: Path) -> Filter:
    """bench/empty_milter.py on a unix socket: what libmilter and pymilter cost per message through Postfix."""
    home = run / "empty-unix"
    (home / "sock").mkdir(parents=True)
    sock = home / "sock" / "milter.sock"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "empty_milter.py"), f"unix:{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not unix_listening(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the empty milter did not start")
        time.sleep(0.02)
    sock.chmod(0o666)  # Postfix's smtpd connects as the postfix user
    return Filter("empty-unix", f"unix:{sock}", proc)


class Redis:
    """A private redis on a unix socket, nothing saved: rspamd's Bayes and its other redis modules."""

    def __init__(self, home: Path, binary: str):
        home.mkdir()
        self.socket = home / "redis.sock"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "777",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(home),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_rspamd(
    run: Path, dns_port: int, transport: str, workers: int, learn: list[tuple[bytes, bool]], cache: Path
) -> Filter | None:
    """rspamd as an admin would run it: stock rules and the stock topology (the proxy worker speaks
    milter and hands each message to ``workers`` normal workers), Bayes and its other redis modules
    on a private redis, private directories, DNS from the bench's stub.

    ``transport`` "unix" puts the milter on a unix socket like Mailward's unix run; "inet" on
    loopback TCP. ``learn`` (raw message, is spam) is taught to Bayes before the run, so Bayes
    classifies (it needs ``min_learns``, 200 of each class, before it says anything).

    ``cache`` is rspamd's database directory, kept between runs as on a real host: there its
    helper compiles the rules into hyperscan databases, a minute or more of CPU on this
    machine, while the workers match with PCRE (measured: ~8 ms of CPU per message instead
    of ~2, and 40 msg/s). The run starts once rspamd has been quiet for a while.
    """
    binary = shutil.which("rspamd")
    redis_binary = shutil.which("redis-server")
    if binary is None:
        return None
    home = run / f"rspamd-{transport}"
    local = home / "local.d"
    for sub in ("local.d", "run", "log"):
        (home / sub).mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    for path in (cache, home / "run", home / "log"):
        shutil.chown(path, "_rspamd", "_rspamd")
    redis = Redis(home / "redis", redis_binary) if redis_binary else None
    normal_port, controller_port = free_port(), free_port()
    milter_port = free_port()
    sock = home / "run" / "milter.sock"
    bind = f"{sock} mode=0666" if transport == "unix" else f"127.0.0.1:{milter_port}"
    (local / "worker-proxy.inc").write_text(
        f'bind_socket = "{bind}";\nmilter = yes;\ntimeout = 120s;\n'
        f'upstream "local" {{\n  default = yes;\n  hosts = "127.0.0.1:{normal_port}";\n}}\ncount = 1;\n'
    )
    (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal_port}";\ncount = {workers};\n')
    (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller_port}";\n')
    (local / "worker-fuzzy.inc").write_text("enabled = false;\n")
    (local / "options.inc").write_text(
        f'dns {{\n  nameserver = ["127.0.0.1:{dns_port}"];\n}}\npidfile = "{home / "run" / "rspamd.pid"}";\n'
    )
    (local / "logging.inc").write_text(
        f'type = "file";\nfilename = "{home / "log" / "rspamd.log"}";\nlevel = "error";\n'
    )
    if redis is not None:
        (local / "redis.conf").write_text(f'servers = "{redis.socket}";\n')
    else:
        print("redis-server not installed: rspamd runs without Bayes and its other redis modules")
        (local / "redis.conf").write_text("")
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            binary,
            "-f",
            "-u",
            "_rspamd",
            "-g",
            "_rspamd",
            "-c",
            "/etc/rspamd/rspamd.conf",
            "--var",
            f"LOCAL_CONFDIR={home}",
            "--var",
            f"DBDIR={cache}",
            "--var",
            f"RUNDIR={home / 'run'}",
            "--var",
            f"LOGDIR={home / 'log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(normal_port, proc)
        if transport == "unix":
            while not unix_listening(sock):
                if proc.poll() is not None or time.monotonic() - started > 60:
                    raise RuntimeError("no milter socket")
                time.sleep(0.05)
        else:
            _wait_port(milter_port, proc)
    except RuntimeError as exc:
        print(f"rspamd left out: {exc}")
        return None
    print(f"rspamd listening {time.monotonic() - started:.2f} s after start")
    quiet = wait_quiet(proc.pid)
    print(f"rspamd quiet (rules compiled) {time.monotonic() - started:.2f} s after start" if quiet else "rspamd busy")
    if redis is not None and learn:
        taught = teach_bayes(controller_port, learn)
        print(f"rspamd Bayes taught {taught} messages")
    milter = f"unix:{sock}" if transport == "unix" else f"inet:127.0.0.1:{milter_port}"
    return Filter(f"rspamd-{transport}", milter, proc, helpers=[redis] if redis else [])


def wait_quiet(root: int, window: float = 3.0, most: float = 0.15, timeout: float = 600.0) -> bool:
    """Wait until the processes under ``root`` used less than ``most`` of a core over ``window`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu(tree(root))
        time.sleep(window)
        if cpu(tree(root)) - before < most * window:
            return True
    return False


def teach_bayes(controller_port: int, learn: list[tuple[bytes, bool]]) -> int:
    """Teach rspamd's Bayes through its controller (what ``rspamc learn_spam`` does); returns how many it took."""
    taught = 0
    for raw, spam in learn:
        request = urllib.request.Request(
            f"http://127.0.0.1:{controller_port}/{'learnspam' if spam else 'learnham'}", data=raw, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                taught += response.status == 200
        except (OSError, urllib.error.HTTPError):
            pass  # already learnt, or too few tokens: rspamd refuses, the rest still teach
    return taught


class Unbound:
    """A private unbound on a loopback port that answers NXDOMAIN to every name, from C."""

    def __init__(self, run: Path, binary: str):
        self.port = free_port()
        conf = run / "unbound.conf"
        conf.write_text(
            f"server:\n  interface: 127.0.0.1\n  port: {self.port}\n  do-daemonize: no\n"
            f'  username: ""\n  chroot: ""\n  directory: "{run}"\n  pidfile: ""\n  use-syslog: no\n'
            f'  logfile: ""\n  do-ip6: no\n  local-zone: "." static\n'
            f"  access-control: 127.0.0.0/8 allow\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def dns_stub(run: Path) -> Unbound | DnsServer:
    """Unbound if installed, else the test suite's DNS server; either has ``port`` and ``__exit__``."""
    binary = shutil.which("unbound", path="/usr/sbin:/usr/bin:/sbin")
    if binary:
        print("DNS: private unbound answering NXDOMAIN")
        return Unbound(run, binary)
    print("DNS: tests/dns_server.py answering NXDOMAIN (install unbound for a faster stub)")
    return DnsServer({".": EMPTY_ROOT}).__enter__()


def use(pf: Postfix, milter: str) -> None:
    pf._postconf("-e", f"smtpd_milters = {milter}")
    subprocess.run(["postfix", "-c", str(pf.conf), "reload"], check=True, capture_output=True)
    time.sleep(1.0)  # old smtpd processes finish their sessions and exit


def postfix_pids(pf: Postfix) -> list[int]:
    master = int((pf.base / "queue" / "pid" / "master.pid").read_text().split()[0])
    return tree(master)


def _q(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=Path("/tmp/corpus/spamassassin"))
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", default="1,8", help="comma-separated SMTP session counts")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="mailward scanning processes")
    ap.add_argument(
        "--systems",
        default="postfix,mailward-unix,mailward-inet,rspamd-unix",
        help="also base-unix, base-inet: Mailward from the --baseline checkout; "
        "empty-unix: an empty pymilter milter (bench/empty_milter.py), the floor through Postfix",
    )
    ap.add_argument("--rspamd-workers", type=int, default=2, help="rspamd normal workers (its default: one per core)")
    ap.add_argument(
        "--rspamd-cache",
        type=Path,
        default=Path("/var/tmp/mailward-bench-rspamd"),
        help="rspamd's database directory, kept between runs (compiled hyperscan rules)",
    )
    ap.add_argument("--learn", type=int, default=250, help="spam and ham each taught to rspamd's Bayes first")
    ap.add_argument("--baseline", type=Path, help="another Mailward checkout (e.g. main) to compare with")
    args = ap.parse_args()
    wanted = args.systems.split(",")
    sessions = [int(s) for s in args.sessions.split(",")]

    msgs = sample(args.sample, args.messages)
    teach = learning_set(args.sample, args.learn, args.messages) if "rspamd" in args.systems else []
    print(
        f"sample: {len(msgs)} messages, {sum(map(len, msgs)) / 1e6:.1f} MB from {args.sample}; "
        f"sessions {sessions}, {args.repeats} repetitions, {args.workers} mailward workers"
    )
    run = Path(tempfile.mkdtemp(prefix="mailward-compare-", dir="/tmp"))
    run.chmod(0o755)
    pf = Postfix.create(run / "unused.sock")
    pf._postconf(
        "-e",
        "transport_maps = inline:{bench.test=discard:}",
        "relay_domains = bench.test",
        "smtpd_milters =",
        "non_smtpd_milters =",
        "milter_default_action = accept",
        "default_process_limit = 200",
    )
    filters: list[Filter] = []
    if "postfix" in wanted:
        filters.append(Filter("postfix", ""))
    dns = dns_stub(run)
    try:
        pf.start()
        if "empty-unix" in wanted:
            filters.append(start_empty(run))
        for kind in ("unix", "inet"):
            if f"mailward-{kind}" in wanted:
                filters.append(start_mailward(run, kind, args.workers, dns.port))
            if f"base-{kind}" in wanted and args.baseline:
                filters.append(start_mailward(run, kind, args.workers, dns.port, args.baseline))
        for kind in ("unix", "inet"):
            if f"rspamd-{kind}" in wanted:
                rspamd = start_rspamd(run, dns.port, kind, args.rspamd_workers, teach, args.rspamd_cache / kind)
                if rspamd is not None:
                    filters.append(rspamd)
                else:
                    print("rspamd not installed or not starting: compared without it")
        pool = multiprocessing.Pool(max(sessions))
        time.sleep(2)
        for f in filters:
            f.refresh()
        rest = {f.name: {g: pss_mib(p) for g, p in f.groups.items()} for f in filters}
        worker_rss = {f.name: [rss_mib(p) for p in f.groups.get("workers", [])] for f in filters}
        results: dict[tuple[str, int], list[tuple[float, list[float], dict[str, float]]]] = {}
        for rep in range(args.repeats):
            for n in sessions:
                for f in filters:
                    use(pf, f.milter)
                    blast(pool, pf.smtp_port, msgs[:20], min(n, 4))  # warm
                    f.refresh()
                    groups = {"postfix": postfix_pids(pf), **f.groups}
                    before = {g: cpu(p) for g, p in groups.items()}
                    rate, lat = blast(pool, pf.smtp_port, msgs, n)
                    groups = {"postfix": postfix_pids(pf), **f.groups}
                    spent = {g: (cpu(p) - before.get(g, 0.0)) * 1000 / len(msgs) for g, p in groups.items()}
                    results.setdefault((f.name, n), []).append((rate, lat, spent))
                    print(f"  rep {rep + 1} {n:2} sessions {f.name:14} {rate:7.1f} msg/s", flush=True)
        peak = {f.name: {g: pss_mib(p) for g, p in f.groups.items()} for f in filters}
        pool.close()
    finally:
        for f in filters:
            f.stop()
        pf.destroy()
        dns.__exit__(None, None, None)
        shutil.rmtree(run, ignore_errors=True)  # configs and logs of this run only

    for n in sessions:
        print(f"\n{n} SMTP session(s), median of {args.repeats} (latency over all repetitions):")
        print(
            f"  {'system':14} {'msg/s':>7} {'ratio':>6}  CPU ms/msg per process group{'':22} latency p50 / p99 / max ms"
        )
        base = statistics.median(r[0] for r in results.get(("postfix", n), [(0.0, [], {})])) or None
        for f in filters:
            runs = results[(f.name, n)]
            rate = statistics.median(r[0] for r in runs)
            lat = sorted(x for r in runs for x in r[1])
            spent = {g: statistics.median(r[2][g] for r in runs) for g in runs[0][2]}
            filt = sum(v for g, v in spent.items() if g != "postfix")
            parts = " ".join(f"{g} {v:.2f}" for g, v in spent.items())
            print(
                f"  {f.name:14} {rate:7.1f} {rate / base if base else 0:6.3f}  {parts:44} filter {filt:5.2f}"
                f"  {_q(lat, 0.5):6.1f} / {_q(lat, 0.99):6.1f} / {lat[-1] * 1000 if lat else 0:6.1f}"
            )
        for who in ("mailward", "base"):
            if (f"{who}-unix", n) in results and (f"{who}-inet", n) in results:
                u = statistics.median(r[0] for r in results[(f"{who}-unix", n)])
                i = statistics.median(r[0] for r in results[(f"{who}-inet", n)])
                print(f"  {who} inet / unix: {i / u:.3f}")
    print("\nmemory (PSS MiB) at rest -> after the run:")
    for f in filters:
        for g in rest.get(f.name, {}):
            print(f"  {f.name:14} {g:8} {rest[f.name][g]:7.1f} -> {peak[f.name].get(g, 0.0):7.1f}")
        if worker_rss.get(f.name):
            print(f"  {f.name:14} worker RSS at rest: " + ", ".join(f"{r:.0f}" for r in worker_rss[f.name]) + " MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
