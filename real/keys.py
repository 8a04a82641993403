"""CurveZMQ keys for the robot link: creating them with safe permissions, loading them, and the
server's allow-list of client public keys.

    stepwise-robot-server keys init --dir keys --client laptop     # server pair + one admitted client
    stepwise-robot-server keys add-client --dir keys --client lab-pc

A key directory (``--dir``) holds:

- ``server.key`` (public: give it to clients) and ``server.key_secret`` (0600: stays on the robot PC);
- ``allowed/<name>.key``: the public keys of the clients the server admits (its allow-list; a client
  that made its own pair elsewhere is admitted by copying its ``.key`` here, then restarting the server);
- ``clients/<name>.key`` and ``clients/<name>.key_secret`` (0600): pairs made here for clients (copy the
  secret to the client machine, over a channel you trust).

Files use ZeroMQ's certificate format (``zmq.auth.load_certificate`` reads them). A secret file that
others can read is refused, as ssh refuses such keys.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import stat
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KeyFileError(ValueError):
    """A key file or directory is missing, malformed or unsafe (the message names the fix)."""


def _write(path: Path, public: bytes, secret: bytes | None) -> None:
    """One certificate file; a secret one is created 0600 from the start (no window where others could read it)."""
    lines = [f"#   ZeroMQ CURVE {'Secret' if secret else 'Public'} Certificate, made by stepwise-robot-server keys "
             f"on {datetime.datetime.now():%Y-%m-%d %H:%M}", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # a umask cannot loosen it, nor tighten the public one below what clients need


def make_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new key pair ``<folder>/<name>.key`` (public) and ``<name>.key_secret`` (0600); refuses to overwrite."""
    import zmq

    if not NAME.match(name):
        raise KeyFileError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (e.g. laptop)")
    folder.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for p in (public_path, secret_path):
        if p.exists():
            raise KeyFileError(f"{p} exists: keys are never overwritten; delete it first to replace the pair, or pick another name")
    public, secret = zmq.curve_keypair()
    _write(public_path, public, None)
    _write(secret_path, public, secret)
    return public_path, secret_path


def init_keys(folder: str | Path, clients: list[str] | tuple[str, ...] = ("client",)) -> dict[str, Path]:
    """The server's pair, an empty allow-list, and one admitted pair per name in ``clients``."""
    folder = Path(folder)
    if (folder / "server.key_secret").exists():
        raise KeyFileError(f"{folder} already holds a server key: add clients with `stepwise-robot-server keys add-client "
                        f"--dir {folder} --client NAME`, or pick another --dir")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    out = dict(zip(("server_key", "server_secret"), make_pair(folder, "server")))
    (folder / "allowed").mkdir(exist_ok=True)
    for name in clients:
        out[f"client:{name}"] = add_client(folder, name)
    return out


def add_client(folder: str | Path, name: str) -> Path:
    """A client pair under ``clients/`` with its public key admitted to ``allowed/``; returns the secret file."""
    folder = Path(folder)
    if not (folder / "server.key").exists():
        raise KeyFileError(f"{folder} holds no server key: run `stepwise-robot-server keys init --dir {folder}` first")
    public, secret = make_pair(folder / "clients", name)
    admitted = folder / "allowed" / public.name
    admitted.parent.mkdir(exist_ok=True)
    admitted.write_bytes(public.read_bytes())
    return secret


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file, which only its owner may read."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"secret key file {path} not found: create keys with `stepwise-robot-server keys init --dir DIR`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"secret key file {path} is readable by others (mode {mode:o}): `chmod 600 {path}`")
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise KeyFileError(f"{path} holds no secret key: pass the .key_secret file, not the public .key")
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The z85 public key of a ``.key`` (or ``.key_secret``) file."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"public key file {path} not found: copy the server's server.key to this machine")
    try:
        return zmq.auth.load_certificate(path)[0]
    except ValueError as err:
        raise KeyFileError(f"{path} is not a key file ({err})") from None


def load_allowed(folder: str | Path) -> set[bytes]:
    """The public keys in an allow-list directory (every ``*.key`` file); an empty one is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"allow-list directory {folder} not found: create keys with `stepwise-robot-server keys init --dir DIR`")
    keys = {load_public(p) for p in sorted(folder.glob("*.key"))}
    if not keys:
        raise KeyFileError(f"{folder} lists no client keys (*.key): admit one with `stepwise-robot-server keys add-client "
                        f"--dir {folder.parent} --client NAME`, or copy a client's .key there")
    return keys


def keys_cli(argv: list[str]) -> int:
    """``stepwise-robot-server keys init|add-client --dir DIR --client NAME``; returns an exit code."""
    parser = argparse.ArgumentParser(prog="stepwise-robot-server keys", description="CurveZMQ keys for the robot link")
    parser.add_argument("action", choices=("init", "add-client"),
                        help="init: the server's pair, allowed/, and the clients' pairs; add-client: one more admitted client")
    parser.add_argument("--dir", required=True, help="the key directory (serve with keys=<dir>)")
    parser.add_argument("--client", action="append", default=None, help="a client name (repeatable; init default: client)")
    args = parser.parse_args(argv)
    try:
        if args.action == "init":
            made = init_keys(args.dir, args.client or ["client"])
            clients = [str(v) for k, v in made.items() if k.startswith("client:")]
        else:
            if not args.client:
                parser.error("add-client needs --client NAME")
            clients = [str(add_client(args.dir, name)) for name in args.client]
    except (KeyFileError, OSError) as err:
        print(f"stepwise-robot-server keys: {err}")
        return 2
    d = Path(args.dir)
    print(f"server: stepwise-robot-server keys={d} ...   (secret {d / 'server.key_secret'}, allow-list {d / 'allowed'})")
    for secret in clients:
        print(f"client: robot.server_key={d / 'server.key'} robot.client_key={secret}")
    return 0
