"""The configuration space of ``graphprune search`` and the order trials are proposed in.

Rules:
1. A trial's configuration is a JSON object of the existing prune options: ``pass``
   (``filter`` or ``channel``), ``criterion``, ``compensate``, ``target_flops`` (the filter
   pass; the channel pass takes ``ratio = 1 - sqrt(target_flops)``, the per-layer ratio that
   keeps about that share of a conv chain's MACs), ``round_to``, ``units`` and
   ``remove_blocks`` (residual blocks removed by the layer pass first; the target stays a
   share of the original's MACs) and ``sensitivity`` (the filter pass without block removal
   allocates to the target by each group's drop measured on the calibration data, as
   ``prune --sensitivity`` does). A filter pass's target is a budget (``target_at_most``,
   ``prune --target-at-most``): the trial keeps at most that share of the MACs, so a
   ``round_to`` step never carries it past a value the user asked for. Options a pass ignores
   are dropped (the channel pass always refits by lstsq), so two configurations that prune the
   same way have one id.
2. A space lists the values each option may take; ``--space SPACE.json`` replaces the lists
   it names and keeps the defaults for the others (refinement also tries targets between
   listed ones, rule 3). An unknown key or value (a criterion that does not exist, a target
   outside (0, 1)) is an ``InputError`` naming the file.
3. Proposals are deterministic given the seed and the results so far: first a seeded design
   (the README's recipe, filter/l2/lstsq on a 16-channel step, allocated by measured
   sensitivity when the space allows it, at the smallest, middle and largest target; then
   the same without sensitivity; then a balanced random design where every value of every
   option appears about equally), then rounds of refinement around the Pareto front of
   metric against MACs: each front member is moved one step along one option. A target
   moves to a neighbouring listed value or halfway to it, so the front is searched in finer
   steps than the list. A round is proposed only from finished trials, so the trials do not
   depend on the number of workers or the order they finish in.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field

from ..errors import InputError

DESIGN_SIZE = 8  # trials of the seeded design (fixed, so a longer search extends a shorter one)
ROUND_SIZE = 4  # proposals per refinement round
PASSES = ("filter", "channel")
COMPENSATE = ("none", "bias", "lstsq")
UNITS = ("heads", "mlp", "channels", "hidden")

DEFAULTS: dict[str, list] = {
    "pass": ["filter", "channel"],
    "criterion": ["l2", "fpgm", "activation", "fluctuation", "wanda"],
    "compensate": ["lstsq", "bias", "none"],
    "target_flops": [0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75],
    "round_to": [1, 8, 16],
    "units": [[]],
    "remove_blocks": [0, 1, 2],
    "sensitivity": [False, True],
}


@dataclass(frozen=True)
class Space:
    """The values each option may take (rule 2); ``source`` names where it came from."""

    values: dict[str, list] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULTS.items()})
    source: str = "default space"

    def to_json(self) -> dict:
        return {k: self.values[k] for k in DEFAULTS}

    def key(self) -> str:
        """A short hash of the space, kept in the store."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]


def load_space(path: str | os.PathLike | None) -> Space:
    """The default space, with the lists ``path`` (a JSON object) names replacing the defaults."""
    if path is None:
        return Space()
    try:
        data = json.loads(open(path).read())
    except FileNotFoundError:
        raise InputError(f"{path}: no such space file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a JSON space file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(f'{path}: a space is a JSON object of option lists, e.g. {{"criterion": ["l2"]}}')
    values = {k: list(v) for k, v in DEFAULTS.items()}
    for key, given in data.items():
        if key not in DEFAULTS:
            raise InputError(f"{path}: unknown option {key!r}; a space names {', '.join(DEFAULTS)}")
        given = given if isinstance(given, list) else [given]
        if not given:
            raise InputError(f"{path}: {key!r} lists no values")
        values[key] = [_checked(path, key, v) for v in given]
    return Space(values, str(path))


def _checked(path, key: str, v):
    from ..planning.criteria import CRITERIA

    def bad(why: str) -> InputError:
        return InputError(f"{path}: {key} {json.dumps(v)}: {why}")

    if key == "pass" and v not in PASSES:
        raise bad(f"choose from {', '.join(PASSES)}")
    if key == "criterion" and v not in CRITERIA:
        raise bad(f"unknown criterion; choose from {', '.join(sorted(CRITERIA))}")
    if key == "compensate" and v not in COMPENSATE:
        raise bad(f"choose from {', '.join(COMPENSATE)}")
    if key == "target_flops" and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
        raise bad("a fraction of the MACs to keep, between 0 and 1 (exclusive)")
    if key == "round_to" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        raise bad("a positive integer")
    if key == "remove_blocks" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise bad("a count of residual blocks, 0 or more")
    if key == "sensitivity" and not isinstance(v, bool):
        raise bad("true (allocate to the target by measured sensitivity) or false")
    if key == "units":
        if not isinstance(v, list) or any(u not in UNITS for u in v):
            raise bad(f"a list of units from {', '.join(UNITS)} ([] for all but hidden)")
        return sorted(v)
    return v


def normalize(config: dict) -> dict:
    """The configuration as the pass sees it (rule 1): options it ignores dropped."""
    c = {
        "pass": config["pass"],
        "criterion": config["criterion"],
        "compensate": config["compensate"],
        "target_flops": round(float(config["target_flops"]), 4),
        "round_to": int(config["round_to"]),
        "units": sorted(config.get("units") or []),
        "remove_blocks": int(config.get("remove_blocks") or 0),
    }
    # allocation by measured sensitivity: the filter pass alone (its groups are the original's)
    c["sensitivity"] = bool(config.get("sensitivity")) and c["pass"] == "filter" and not c["remove_blocks"]
    if c["pass"] == "channel":
        c["compensate"] = "lstsq"  # the channel pass always refits
        c["ratio"] = round(1.0 - math.sqrt(c["target_flops"]), 4)
    else:
        c["target_at_most"] = True  # the target is a budget (rule 1)
    return c


def trial_id(config: dict) -> str:
    """A stable id of a normalised configuration: equal configurations share it across runs."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def design(space: Space, seed: int) -> list[dict]:
    """The seeded design (rule 3): the README's recipe at a spread of targets, allocated by
    sensitivity first (when the space allows it), then without, then a balanced random
    design; at most :data:`DESIGN_SIZE` distinct configurations."""
    v = space.values
    rng = random.Random(f"design-{seed}")
    out: list[dict] = []
    seen: set[str] = set()

    def add(c: dict) -> None:
        n = normalize(c)
        if trial_id(n) not in seen and len(out) < DESIGN_SIZE:
            seen.add(trial_id(n))
            out.append(n)

    recipe = {
        "pass": _pick(v["pass"], "filter"),
        "criterion": _pick(v["criterion"], "l2"),
        "compensate": _pick(v["compensate"], "lstsq"),
        "round_to": _pick(v["round_to"], 16),
        "units": v["units"][0],
        "remove_blocks": _pick(v["remove_blocks"], 0),
        "sensitivity": _pick(v["sensitivity"], False),
    }
    targets = sorted(v["target_flops"])
    # allocation by measured sensitivity first (usage.md: 99.4% at half the MACs; every member of
    # the digits search's front used it), then the same recipe without it
    for sensitivity in sorted(set(v["sensitivity"]), reverse=True):
        for t in _spread(targets, 3):
            add({**recipe, "target_flops": t, "sensitivity": sensitivity})
    # balanced: each option's values in a shuffled cycle, so every value shows up about equally
    cycles = {k: _cycle(vals, rng) for k, vals in v.items()}
    for _ in range(10 * DESIGN_SIZE):
        if len(out) >= DESIGN_SIZE:
            break
        add({k: next(c) for k, c in cycles.items()})
    return out


def _pick(values: list, preferred):
    return preferred if preferred in values else values[0]


def _spread(values: list, n: int) -> list:
    """Up to ``n`` values of a sorted list, evenly spaced, the ends included."""
    if len(values) <= n:
        return list(values)
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _cycle(values: list, rng: random.Random):
    while True:
        order = list(values)
        rng.shuffle(order)
        yield from order


def refine(
    space: Space, front: list[dict], seen: set[str], seed: int, round_no: int, n: int = ROUND_SIZE
) -> list[dict]:
    """Up to ``n`` new configurations, each a front member (best first) moved one step along
    one option: to a neighbouring value of an ordered option, to another value otherwise."""
    rng = random.Random(f"refine-{seed}-{round_no}")
    out: list[dict] = []
    if not front:
        return out
    options = [k for k, vals in space.values.items() if len(vals) > 1]
    tries = 0
    while len(out) < n and tries < 50 * n and options:
        tries += 1
        base = front[(tries - 1) % len(front)]
        key = rng.choice(options)
        c = dict(base)
        if key == "target_flops":
            c[key] = _finer_step(space.values[key], base[key], rng)
        else:
            c[key] = _step(space.values[key], base.get(key), rng, ordered=key in ("round_to", "remove_blocks"))
        c = normalize(c)
        tid = trial_id(c)
        if tid not in seen:
            seen.add(tid)
            out.append(c)
    return out


def _step(values: list, current, rng: random.Random, *, ordered: bool):
    if ordered:
        vals = sorted(values)
        if current in vals:
            i = vals.index(current)
            near = [vals[j] for j in (i - 1, i + 1) if 0 <= j < len(vals)]
            return rng.choice(near) if near else current
        return min(vals, key=lambda x: abs(x - current))
    others = [x for x in values if x != current]
    return rng.choice(others) if others else current


def _finer_step(values: list, current: float, rng: random.Random) -> float:
    """A target one step from ``current``: the nearest listed value below or above it, or
    halfway to it (rule 3), so refinement closes in on the front between the listed targets."""
    below = [x for x in values if x < current]
    above = [x for x in values if x > current]
    near = []
    if below:
        near += [max(below), round((max(below) + current) / 2, 4)]
    if above:
        near += [round((current + min(above)) / 2, 4), min(above)]
    return rng.choice(near) if near else current
