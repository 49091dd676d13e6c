"""Runs that would compute the same stage: one computes it, the others wait, then reuse its outputs.

Two runs whose stage has the same identity (config, inputs, store) produce the same outputs; the
store lets the second reuse the first's once they are there (egt.storage.manifest.reuse). While
the first is still computing, the second waits instead of starting a copy of the work: this is
what makes a sweep train and probe once. Who computes what is read from the children themselves
(their ``egt.dev/identity`` annotation, through the watch-fed index) and, for a child this operator
has just created and the watch has not delivered yet, from a claim it made when creating it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from egt_operator.reconcile import IDENTITY_ANNOTATION, child_phase

# How long a claim stands without its child in view (the watch usually delivers it in well under a
# second); past that the child is taken to have been never created or deleted.
CLAIM_SECONDS = 60.0


def identity_of(child: Mapping[str, Any]) -> str | None:
    return ((child.get("metadata") or {}).get("annotations") or {}).get(IDENTITY_ANNOTATION)


@dataclass
class Claims:
    """The runs computing each stage identity; one per operator process, shared by its passes."""

    _made: dict[str, tuple[str, float]] = field(default_factory=dict)  # identity -> (run key, when)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def owner(
        self,
        identity: str,
        run: str,
        children: Iterable[tuple[str, Mapping[str, Any]]],
        now: float | None = None,
    ) -> str | None:
        """The other run computing ``identity`` now; None, after claiming it for ``run``, when none is.

        ``run`` and the first element of each ``children`` pair are "namespace/name" keys; the
        children are every run's, as last observed.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            visible = {}
            for key, child in children:
                if identity_of(child) == identity:
                    visible[key] = child_phase(child)[0] == "Running" or visible.get(key, False)
            computing = sorted(key for key, running in visible.items() if running and key != run)
            if computing:
                return computing[0]
            claimant, when = self._made.get(identity, (None, 0.0))
            if claimant not in (None, run) and claimant not in visible and now - when < CLAIM_SECONDS:
                return claimant
            self._made[identity] = (run, now)
            return None
