"""The paper's two mesh-oblivious baselines on WSE-2 (`--strategy t10|ladder`): what one shift, broadcast or
allreduce of the engine's programs costs when it is placed the way T10 or Ladder would place it.

Both return (cycles, hops, stages) like noc.record_cost; noc.py charges them. The mechanisms (docs/cost-model.md,
"Baselines"):

t10 (SOSP'24): compute-shift over sub-tensors partitioned by core id, built for the IPU's crossbar: every pair of
  cores is one constant-latency hop apart and every step is a bulk-synchronous exchange. On the mesh:
  - a shift's ring follows core ids, not interleaved: its wrap-around edge crosses the line (n - 1 hops);
  - the step's exchange is a fresh set of pair routes (core-id partners exceed the router's 32 routes, so no
    plan keeps them resident): each compute-shift step pays spec.t10_exchange_cycles to set them up and
    synchronise, whatever it carries;
  - collectives have no multicast or pass-through routes: a reduce chain relayed in software at every core,
    then a broadcast back relayed at every core.
ladder (OSDI'24): tensor transformation over a shared-memory view of the distributed SRAM: an operand that
  lives on another core is reached by a collective access over the NoC, never by a neighbour message. On the
  mesh every shift, broadcast and allreduce is one such access: spec.ladder_access_cycles to set it up and
  synchronise the cores it spans, then a gather and a scatter across the line, each hop a store-and-forward
  software relay (a whole message re-sent: message overhead + alpha + beta).
"""

from __future__ import annotations

from waferllm.machine.mesh import Mesh

BASELINES = ("t10", "ladder")


def _transfer(mesh: Mesh, nbytes: float, hops: float) -> float:
    """One message on a configured route (noc.transfer_cycles' formula; noc.py imports this module)."""
    s = mesh.spec
    return s.message_overhead_cycles + s.alpha_cycles_per_hop * hops + nbytes / s.link_bytes_per_cycle


def _t10_relayed(mesh: Mesh, nbytes: float, hops: float, add_elems: int = 0) -> float:
    """A T10 message relayed in software at every one of `hops` cores (no configured route spans them);
    a reduction's relays also add `add_elems` elements each as the stream passes."""
    s = mesh.spec
    stream = max(nbytes / s.link_bytes_per_cycle, add_elems * s.relay_cycles_per_element)
    return s.message_overhead_cycles + s.t10_relay_cycles_per_hop * hops + stream


def _ladder_access(mesh: Mesh, nbytes: float, n: int) -> tuple[float, float, float]:
    """One shared-memory collective access over a line of n cores: set-up and sync, then a gather and a scatter
    across the line, each hop a store-and-forward relay."""
    if n <= 1:
        return 0.0, 0.0, 0.0
    s = mesh.spec
    cyc = s.ladder_access_cycles + 2 * (n - 1) * (s.ladder_relay_cycles_per_hop + nbytes / s.link_bytes_per_cycle)
    return cyc, 2.0 * (n - 1), 2.0 * (n - 1)


def serial(strategy: str) -> bool:
    """Whether a strategy's transfers within one step queue one after another (Ladder's blocking accesses) rather
    than overlap on independent links (T10's exchange)."""
    return strategy == "ladder"


def shift_cost(mesh: Mesh, strategy: str, n: int, nbytes: float) -> tuple[float, float, float]:
    """One compute-shift step along a line of n cores, every core sending `nbytes`."""
    if n <= 1:
        return 0.0, 0.0, 0.0
    if strategy == "t10":  # set up the step's pair routes, then the ring's wrap-around edge: core n-1 to core 0
        return mesh.spec.t10_exchange_cycles + _transfer(mesh, nbytes, n - 1), float(n - 1), 0.0
    return _ladder_access(mesh, nbytes, n)


def broadcast_cost(mesh: Mesh, strategy: str, n: int, root: int, nbytes: float) -> tuple[float, float, float]:
    """The root's tile to every core of a line of n: no multicast route."""
    if n <= 1:
        return 0.0, 0.0, 0.0
    if strategy == "t10":  # relayed along the line from the root to the farther end
        far = max(root, n - 1 - root)
        return _t10_relayed(mesh, nbytes, far), float(far), float(far)
    return _ladder_access(mesh, nbytes, n)


def allreduce_cost(mesh: Mesh, strategy: str, p: int, elems: int, elem_bytes: int) -> tuple[float, float, float]:
    """Allreduce of `elems` elements per core over p cores (a line or a segment of one)."""
    if p <= 1:
        return 0.0, 0.0, 0.0
    if strategy == "t10":  # a reduce chain relayed to one end, then a broadcast relayed back
        nbytes = elems * elem_bytes
        cyc = _t10_relayed(mesh, nbytes, p - 1, elems) + _t10_relayed(mesh, nbytes, p - 1)
        return cyc, 2.0 * (p - 1), 2.0 * (p - 1)
    return _ladder_access(mesh, elems * elem_bytes, p)
