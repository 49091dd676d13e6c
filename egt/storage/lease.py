"""One runner per stage attempt: a lease object in the store, ``<run>/<stage>/lease.json``.

Two ``egt run`` on the same run and store (or a pod retried while the old one still runs) would
both do the work, and two ``--force`` runs would delete each other's files. Before it touches a
stage's prefix, a runner creates the lease (conditionally: a file link, S3's ``If-None-Match``)
holding its owner and an expiry, renews it from a background thread every third of its lifetime,
and deletes it when done. A second runner that finds a lease:

- renewed while it watches: the holder is alive; it stops, naming the holder;
- not renewed past its expiry: the holder died (SIGKILL, a lost node); it takes the lease over.

So a dead holder costs the next runner at most one lease lifetime (``EGT_LEASE_SECONDS``, default
120). Taking over an expired lease deletes it and creates a new one, which is exclusive where the
store's create is; two runners taking over the same expired lease in the same instant is the one
race this leaves.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from egt.storage.store import ArtifactStore

log = logging.getLogger(__name__)
LEASE_FILE = "lease.json"


class LeaseHeldError(RuntimeError):
    """Another live runner holds the stage's lease."""


def lease_seconds() -> float:
    return float(os.environ.get("EGT_LEASE_SECONDS", "120"))


def _read(store: ArtifactStore, key: str) -> dict | None:
    try:
        return json.loads(store.read_bytes(key))
    except FileNotFoundError:
        return None


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@contextmanager
def hold(store: ArtifactStore, key: str, what: str, seconds: float | None = None) -> Iterator[None]:
    """Hold the lease at ``key`` while the block runs (``what`` names the work in messages)."""
    seconds = seconds or lease_seconds()
    me = {"owner": f"{socket.gethostname()} pid {os.getpid()}", "token": uuid.uuid4().hex}
    since = time.time()

    def body() -> bytes:
        return json.dumps({**me, "since": _stamp(since), "expires": time.time() + seconds}).encode()

    _acquire(store, key, what, body, me["token"], seconds)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                held = _read(store, key)
                if held is None or held.get("token") != me["token"]:
                    owner = (held or {}).get("owner")
                    log.error("%s: lost its lease %s to %s", what, store.uri_for(key), owner)
                    return
                store.write_bytes(key, body())
            except Exception as error:  # the store unreachable for a while: the work decides
                log.warning("%s: could not renew its lease %s: %s", what, store.uri_for(key), error)

    renewer = threading.Thread(target=renew, name="egt-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            held = _read(store, key)
            if held is not None and held.get("token") == me["token"]:
                store.delete(key)
        except Exception as error:  # never hide the work's own outcome: the lease expires anyway
            log.warning(
                "%s: could not release its lease %s (it expires): %s", what, store.uri_for(key), error
            )


def _acquire(store: ArtifactStore, key: str, what: str, body, token: str, seconds: float) -> None:
    watched: dict | None = None
    while True:
        if store.create(key, body()):
            held = _read(store, key)
            if held is not None and held.get("token") == token:
                return
        held = _read(store, key)
        if held is None:
            continue  # released meanwhile: try again
        if watched is not None and held["token"] == watched["token"] and held["expires"] > watched["expires"]:
            raise LeaseHeldError(
                f"{what} is being run by {held['owner']} (since {held['since']}; its lease "
                f"{store.uri_for(key)} is renewed every {seconds / 3:.0f} s). Wait for it to finish, or "
                "stop it; a runner that died releases the stage when its lease expires"
            )
        if time.time() > held["expires"]:
            log.warning(
                "%s: %s held it until %s without renewing (it died): taking over",
                what,
                held["owner"],
                _stamp(held["expires"]),
            )
            store.delete(key)
            watched = None
            continue
        if watched is None or held["token"] != watched["token"]:
            log.info("%s: held by %s; waiting to see whether it is alive", what, held["owner"])
        watched = held
        time.sleep(min(max(held["expires"] - time.time(), 0.0) + 0.05, seconds / 6))
