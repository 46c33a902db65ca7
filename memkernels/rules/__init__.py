"""Measured dispatch rules: which backend `backend="auto"` runs, per device kind, op, dtype,
mode and shape.

A rule file, `memkernels/rules/<device kind>.json`, is written by
`python -m benchmarks.dispatch_rule` from a benchmark run on that kind of device (a
pytest-benchmark `ops.json`, or the script's own measurement): for each measured
(op, dtype, mode, shape) it keeps the backends ranked by time. `auto` takes the ranking of
the measured shape nearest to the inputs (distance in log2 of B*H, L, K and D; the first in
the file on a tie), and runs the first backend in it that can run the inputs. Inputs of a
dtype or mode the rule did not measure fall back to `capabilities.AUTO_ORDER`.

Device kinds: "cpu", and "cuda-sm<major><minor>" for a GPU (a rule measured on an H100
serves every sm_90 part). The lookup is a pure function of the shape, so the same shape
always takes the same path; `memkernels.dispatch` caches it per shape.
"""
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

RULES_DIR = Path(__file__).parent
MODES = ("fwd", "fwd_bwd")  # inference, and a training step (forward + backward)


@dataclass(frozen=True)
class Point:
    op: str
    dtype: str
    mode: str
    shape: tuple[int, int, int, int, int]  # B, L, K, H, D
    ranking: tuple[str, ...]                # fastest first
    ms: tuple[float, ...]                   # per call, in ranking's order


@dataclass(frozen=True)
class Rule:
    device_kind: str
    source: dict
    points: tuple[Point, ...]

    def points_for(self, op: str, dtype: str, mode: str) -> tuple[Point, ...]:
        return tuple(p for p in self.points if (p.op, p.dtype, p.mode) == (op, dtype, mode))


def rule_from_json(data: dict) -> Rule:
    points = tuple(Point(p["op"], p["dtype"], p["mode"], tuple(p["shape"]), tuple(p["ranking"]), tuple(p["ms"]))
                   for p in data["points"])
    return Rule(data["device_kind"], data["source"], points)


def rule_to_json(rule: Rule) -> dict:
    return {"device_kind": rule.device_kind, "source": rule.source,
            "points": [{"op": p.op, "dtype": p.dtype, "mode": p.mode, "shape": list(p.shape),
                        "ranking": list(p.ranking), "ms": list(p.ms)} for p in rule.points]}


def path_for(device_kind: str) -> Path:
    return RULES_DIR / f"{device_kind}.json"


@functools.cache
def load(device_kind: str) -> Rule | None:
    """The committed rule for a device kind, or None where none was measured."""
    path = path_for(device_kind)
    if not path.exists():
        return None
    return rule_from_json(json.loads(path.read_text()))


@functools.cache
def device_kind(device_type: str, index: int | None = None) -> str:
    """"cpu", "cuda-sm90", ...; "cuda" when no GPU can be asked (a CUDA device named on a
    machine without one), which no rule covers."""
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "cuda"
        major, minor = torch.cuda.get_device_capability(index if index is not None and index >= 0 else None)
        return f"cuda-sm{major}{minor}"
    return device_type


def _features(shape) -> tuple[float, ...]:
    batch, tokens, slots, heads, head_dim = shape
    return tuple(math.log2(max(1, x)) for x in (batch * heads, tokens, slots, head_dim))


def ranking(device_kind: str, op: str, dtype: torch.dtype, mode: str, shape) -> tuple[str, ...] | None:
    """The backends measured at the shape nearest to `shape` (B, L, K, H, D), fastest first,
    or None where the rule has no measurement of this op, dtype and mode."""
    rule = load(device_kind)
    if rule is None:
        return None
    points = rule.points_for(op, str(dtype).removeprefix("torch."), mode)
    if not points:
        return None
    target = _features(shape)
    nearest = min(points, key=lambda p: sum((a - b) ** 2 for a, b in zip(_features(p.shape), target)))
    return nearest.ranking


def describe(device_kind: str) -> str:
    """One paragraph for `memkernels.info`: where the rule came from and what it picks."""
    rule = load(device_kind)
    if rule is None:
        return (f"no measured rule for {device_kind} (memkernels/rules/{device_kind}.json): "
                "auto follows the default order")
    return describe_rule(rule, f"memkernels/rules/{device_kind}.json")


def describe_rule(rule: Rule, where: str) -> str:
    src = rule.source
    lines = [f"measured rule {where}: {src.get('device', '?')}, {src.get('date', '?')}, "
             f"commit {src.get('commit', '?')}, torch {src.get('torch', '?')}"]
    groups: dict[tuple[str, str, str], dict[str, int]] = {}
    for p in rule.points:
        wins = groups.setdefault((p.op, p.dtype, p.mode), {})
        wins[p.ranking[0]] = wins.get(p.ranking[0], 0) + 1
    for (op, dtype, mode), wins in groups.items():
        total = sum(wins.values())
        picks = ", ".join(f"{backend} at {n}" for backend, n in sorted(wins.items(), key=lambda w: -w[1]))
        lines.append(f"  {op} {dtype} {mode}: fastest {picks} of {total} measured shapes")
    return "\n".join(lines)
