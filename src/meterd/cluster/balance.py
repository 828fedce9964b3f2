"""How many channels a node should take or give back: pure arithmetic, with hysteresis.

Every node decides for itself, from the same two numbers: the channels of the site and the live
nodes (heartbeat within ``lease_time``).  Its *fair share* is ``ceil(channels / live)``.

- Below its share, a node takes free or expired leases, never one another node holds: a node that
  joins (or comes back) grows only into what nobody polls, so it cannot steal a channel it would
  lose again, and a dead node's channels are shared out by the survivors.
- Above ``share + slack``, a node gives channels back (stopping them first, then releasing the
  lease: a clean hand-over with no overlap), down to ``share + slack``; between ``share`` and
  ``share + slack`` it keeps what it has.  ``slack`` is 1 channel or 10 % of the share, whichever
  is larger, unless configured.  So when a node joins, the others shed only what is clearly
  surplus, the newcomer takes that, and nobody moves again: the band absorbs the rounding.
- Channels pinned to a node (a DTU whose TCP connection it holds: nobody else can reach them) are
  never given back by balancing.

Convergence: a node gives back only while above ``share + slack`` and takes only while below
``share``, and ``n * (share + slack) >= channels``, so after a change of membership every node ends
inside ``[?, share + slack]`` within a few heartbeats, and no channel is handed back and forth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

SLACK_SHARE: Final = 0.10  # default slack: 10 % of the fair share (at least one channel)


def fair_share(channels: int, live_nodes: int) -> int:
    """``ceil(channels / live_nodes)``; every channel when this node thinks it is alone."""
    if channels <= 0:
        return 0
    return math.ceil(channels / max(1, live_nodes))


def slack_for(share: int, slack: int | None = None) -> int:
    """The hysteresis band above the fair share: ``slack`` if configured, else
    max(1, 10 % of the share)."""
    if slack is not None:
        return max(0, slack)
    return max(1, math.ceil(share * SLACK_SHARE))


@dataclass(frozen=True, slots=True)
class Plan:
    share: int
    take: int  # free or expired leases to try to take
    give: int  # held, unpinned channels to stop and give back


def plan(*, held: int, pinned: int, channels: int, live_nodes: int, slack: int | None = None) -> Plan:
    """What a node holding ``held`` channels (``pinned`` of them pinned) does this heartbeat."""
    share = fair_share(channels, live_nodes)
    take = max(0, share - held)
    give = max(0, held - (share + slack_for(share, slack)))
    give = min(give, max(0, held - pinned))
    return Plan(share, take, give)


__all__ = ["Plan", "fair_share", "plan", "slack_for"]
