"""The collectives of a compiled program and the bytes each moves per device, read from its
HLO text (`jax.jit(f).lower(...).compile().as_text()`), so that a sharding's communication can
be checked against what it implies without running anything.

Bytes moved are what one device sends (= what it receives) under the usual ring algorithms,
with `n` the size of the op's replica group and `S` the full (unsharded) buffer:

    all-gather          result S          S·(n−1)/n
    reduce-scatter      result S/n        S·(n−1)/n
    all-reduce          result S          2·S·(n−1)/n   (a reduce-scatter, then an all-gather)
    all-to-all          result S          S·(n−1)/n     (keeps 1/n, sends the rest)
    collective-permute  result S          S             (each device sends its buffer once)

An all-reduce whose only users are dynamic-slices of it (the SPMD partitioner's form of a sum
that ends sharded, e.g. FSDP's gradients) counts as the reduce-scatter that the GPU and TPU
compilers make of it (XLA's ReduceScatterCreator; XLA:CPU keeps the all-reduce). An op inside a
loop body counts once per iteration when the loop's trip count is known (`known_trip_count` in
its backend config), else once (and is reported as `in_loop`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_ITEMSIZE = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+(" + "|".join(KINDS) + r")(-start)?\((.*)$"
)
_COMPUTATION = re.compile(r"^\s*(ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$")
_CALLED = re.compile(
    r"\b(body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclass(frozen=True)
class Collective:
    """One collective op of a compiled program."""

    kind: str  # one of KINDS
    name: str  # the HLO instruction's name
    result_bytes: int  # bytes of its result on one device
    group_size: int  # devices in its replica group (n)
    executions: int  # times it runs per program call (its loops' known trip counts)
    in_loop: bool  # inside a while body (whatever its trip count)
    shape: str = ""  # its result's HLO shape
    source: str = ""  # the jax op it came from (`op_name` metadata), where given
    sliced: bool = False  # an all-reduce only sliced afterwards: a reduce-scatter on GPU / TPU

    @property
    def effective_kind(self) -> str:
        """The kind as GPU / TPU compilers emit it: a sliced all-reduce is a reduce-scatter."""
        return "reduce-scatter" if self.sliced else self.kind

    @property
    def bytes_moved(self) -> float:
        """Bytes one device sends per execution (the ring formulas above)."""
        n, size = self.group_size, self.result_bytes
        if n <= 1:
            return 0.0
        if self.kind == "all-gather" or self.sliced:
            return size * (n - 1) / n
        if self.kind == "reduce-scatter":
            return size * (n - 1)
        if self.kind == "all-reduce":
            return 2 * size * (n - 1) / n
        if self.kind == "all-to-all":
            return size * (n - 1) / n
        return float(size)  # collective-permute


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string: `f32[4,64]{1,0}` or a tuple `(f32[4], bf16[2,3])`."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _ITEMSIZE and not dtype.startswith("f8"):
            continue  # token[] and the like
        count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += count * _ITEMSIZE.get(dtype, 1)
    return int(total)


def group_size(attributes: str, num_devices: int) -> int:
    """The replica group size of an op from its attributes: explicit groups
    `replica_groups={{0,1},{2,3}}`, iota groups `replica_groups=[2,2]<=[4]`, mesh groups
    `replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=(...) {'axis_1'}`, or empty groups
    (all `num_devices`)."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attributes)
    if mesh:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        return math.prod(sizes[a] for a in re.findall(r"'([^']+)'", mesh.group(2)))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attributes)
    if iota:
        return int(iota.group(2))
    explicit = re.search(r"replica_groups=\{\{([^}]*)\}", attributes)
    if explicit:
        return len([d for d in explicit.group(1).split(",") if d.strip()])
    return num_devices


def _num_devices(hlo: str) -> int:
    found = re.search(r"num_partitions=(\d+)", hlo)
    replicas = re.search(r"replica_count=(\d+)", hlo)
    return int(found.group(1) if found else 1) * int(replicas.group(1) if replicas else 1)


def collectives(hlo: str) -> list[Collective]:
    """Every collective op in the HLO text of a compiled (SPMD-partitioned) program; `-done`
    halves of async pairs are skipped, a `-start` counts as its op."""
    num_devices = _num_devices(hlo)
    found: list[tuple] = []  # (computation, kind, bytes, group, shape, source)
    names: list[str] = []
    calls: dict[str, list[tuple[str, int, bool]]] = defaultdict(list)  # parent → children
    entry, current = None, None
    for line in hlo.splitlines():
        op = _OP.match(line)
        if op is None:
            computation = _COMPUTATION.match(line)
            if computation and "=" not in line.split("{")[0]:
                current = computation.group(2)
                if computation.group(1):
                    entry = current
                continue
        if current is None:
            continue
        trip = _TRIP.search(line)
        for role, child in _CALLED.findall(line):
            loop = role == "body"
            calls[current].append((child, int(trip.group(1)) if loop and trip else 1, loop))
        for branches in _BRANCHES.findall(line):
            for child in re.findall(r"%?([\w.\-]+)", branches):
                calls[current].append((child, 1, False))
        if op is None:
            continue
        name, shape, kind, is_start, attributes = op.groups()
        result = shape_bytes(shape)
        if is_start and kind in ("all-gather", "collective-permute"):
            # async start: (operands, results, ...) — the results are the second element
            parts = _top_level_elements(shape)
            result = shape_bytes(parts[1]) if len(parts) > 1 else result
        source = re.search(r'op_name="([^"]*)"', attributes)
        names.append(name)
        found.append(
            (current, kind, result, group_size(attributes, num_devices), shape.strip(),
             source.group(1) if source else "")
        )  # fmt: skip
    multiplier, looped = _multipliers(entry, calls)
    sliced = _only_sliced(hlo, {name for name, op in zip(names, found) if op[1] == "all-reduce"})
    return [
        Collective(
            kind,
            name,
            size,
            n,
            multiplier.get(comp, 1),
            looped.get(comp, False),
            *rest,
            sliced=name in sliced,
        )
        for name, (comp, kind, size, n, *rest) in zip(names, found)
    ]


def _only_sliced(hlo: str, candidates: set[str]) -> set[str]:
    """The `candidates` whose every use is as the sliced operand of a dynamic-slice."""
    uses: dict[str, list[bool]] = defaultdict(list)
    for line in hlo.splitlines():
        _, sep, rest = line.partition(" = ")
        if not sep:
            continue
        found = re.search(r"\s([\w\-]+)\((.*)", rest)
        if found is None:
            continue
        opcode, args = found.groups()
        args = re.sub(r"\w+=%[\w.\-]+", "", args)  # to_apply=%add and the like
        for position, operand in enumerate(re.findall(r"%([\w.\-]+)", args)):
            if operand in candidates:
                uses[operand].append(opcode == "dynamic-slice" and position == 0)
    return {name for name in candidates if uses[name] and all(uses[name])}


def _top_level_elements(shape: str) -> list[str]:
    """`(a, (b, c), d)` → `["a", "(b, c)", "d"]`; a non-tuple shape → `[shape]`."""
    shape = shape.strip()
    if not shape.startswith("("):
        return [shape]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
            parts.append(shape[start:i].strip())
            start = i + 1
    return parts


def _multipliers(entry, calls) -> tuple[dict[str, int], dict[str, bool]]:
    """Executions per program call of each computation reachable from `entry`, and whether it
    runs inside a loop body."""
    multiplier: dict[str, int] = {}
    looped: dict[str, bool] = {}
    stack = [(entry, 1, False)] if entry else []
    while stack:
        name, times, in_loop = stack.pop()
        if multiplier.get(name, 0) >= times and (looped.get(name) or not in_loop):
            continue
        multiplier[name] = max(multiplier.get(name, 0), times)
        looped[name] = looped.get(name, False) or in_loop
        for child, trip, loop in calls.get(name, ()):
            stack.append((child, times * trip, in_loop or loop))
    return multiplier, looped


def bytes_by_kind(ops: list[Collective]) -> dict[str, dict]:
    """`{kind: {"ops", "bytes", "in_loop"}}` for every kind in KINDS (each op under its
    `effective_kind`): the ops' count, the bytes one device moves per program call (each op's
    `bytes_moved` × its executions) and how many ops sit in a loop body; reduce-scatter also
    says how many of its ops are sliced all-reduces (`from_all_reduce`)."""
    out = {kind: {"ops": 0, "bytes": 0.0, "in_loop": 0} for kind in KINDS}
    out["reduce-scatter"]["from_all_reduce"] = 0
    for op in ops:
        row = out[op.effective_kind]
        row["ops"] += 1
        if op.sliced:
            row["from_all_reduce"] += 1
        row["bytes"] += op.bytes_moved * op.executions
        row["in_loop"] += op.in_loop
    return out
