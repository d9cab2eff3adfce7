"""Couplings of ops that move, cut, join or reshape axes.

Rules:
1. Concat: input ``k`` is the segment of the output axis that starts after the inputs
   before it; other axes pass through.
2. Split: the inverse of Concat; the split sizes are rewritten after removal.
3. Slice with constant bounds and step 1: the output is a segment of the input axis; the
   bounds are rewritten (shifted by the entries removed before them). Other steps block.
4. Flatten and Reshape (constant shape): axes are matched by running products; where one
   axis becomes several (``[B, S, H*D] -> [B, S, H, D]``) or several become one
   (``[N, C, H, W] -> [N, C*H*W]``) the major axis owns a block of the single axis.
   The Reshape shape constant is rewritten.
4b. A Reshape shape computed at run time from the input's own sizes and constants
   (``Concat(Shape(x)[0:2], [12, 64])``, as exporters write dynamic axes) is read element
   by element: sizes read by Shape follow the input, constants are rewritten where the
   Concat holds them; a shape that cannot be traced this way blocks.
5. Transpose, Squeeze, Unsqueeze renumber axes.
6. Pad and Resize: axes that are not padded or resized pass through; a Resize ``sizes``
   constant is rewritten (sizes computed at run time are read as in 4b).
7. Shape only reads sizes: the runtime value follows the pruned tensor, so it does not
   block; ops that build tensors from such values have no rule and block on their own.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..ir.shapefold import monomial_mul as _mul
from ..ir.shapefold import monomial_product as _product
from ..ir.shapefold import monomial_quotient as _quotient
from ..ir.shapefold import shape_elements
from . import RuleContext, SurgeryContext, rewriter, rule


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@rule("Concat")
def concat(node: onnx.NodeProto, ctx: RuleContext) -> None:
    y = node.output[0]
    ys = ctx.shape(y)
    if ys is None:
        return
    axis = _axis(ctx.attr("axis"), len(ys))
    parts = [(x, ctx.shape(x)) for x in node.input]
    if any(xs is None or xs[axis] is None for _, xs in parts):
        # Without every segment's size the output's entries cannot all be traced; the other axes
        # still pass through (a KV cache: Concat(past, new) on the symbolic sequence axis keeps
        # the heads axis, which then meets the cache's graph input and output)
        ctx.forbid(ctx.dim(y, axis), "Concat with an input of unknown size")
        for x, xs in parts:
            if xs is not None and len(xs) == len(ys):
                for ax in range(len(ys)):
                    if ax != axis:
                        ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
        return
    offset = 0
    for x, xs in parts:
        for ax in range(len(ys)):
            if ax == axis:
                ctx.segment(ctx.dim(x, ax), ctx.dim(y, ax), offset)
            else:
                ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
        offset += xs[axis]


@rule("Split")
def split(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    axis = _axis(ctx.attr("axis", 0), len(xs))
    parts = [(y, ctx.shape(y)) for y in node.output]
    if any(ys is None or ys[axis] is None for _, ys in parts):
        ctx.forbid(ctx.dim(x, axis), "Split with an output of unknown size")
        return
    offset = 0
    for y, ys in parts:
        for ax in range(len(xs)):
            if ax == axis:
                ctx.segment(ctx.dim(y, ax), ctx.dim(x, ax), offset)
            else:
                ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
        offset += ys[axis]


@rewriter("Split")
def rewrite_split(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    xs = ctx.old_shape(node.input[0])
    if xs is None:
        return  # the rule declared nothing on a tensor of unknown shape: no member lost entries
    axis = _axis(next((a.i for a in node.attribute if a.name == "axis"), 0), len(xs))
    old = [ctx.old_shape(y)[axis] for y in node.output]
    new = [ctx.new_shape(y)[axis] for y in node.output]
    if old == new:
        return
    has_attr = any(a.name == "split" for a in node.attribute)
    if has_attr or ctx.view.opset < 13:
        ctx.set_attr(node, "split", new)
    else:
        # An equal split (no sizes, or num_outputs in opset 18) may no longer be equal:
        # always give explicit sizes.
        for i, a in enumerate(node.attribute):
            if a.name == "num_outputs":
                del node.attribute[i]
                break
        ctx.set_constant_input(node, 1, np.array(new, dtype=np.int64))


def _slice_params(node: onnx.NodeProto, ctx) -> tuple[list, list, list, list] | None:
    """(starts, ends, axes, steps) as lists, or None when they are not constants."""
    if ctx.view.opset < 10:
        starts, ends = _attr_list(node, "starts"), _attr_list(node, "ends")
        axes = _attr_list(node, "axes")
        steps = None
    else:
        vals = []
        for pos in range(1, 5):
            if pos < len(node.input) and node.input[pos]:
                v = ctx.view.value(node.input[pos])
                if v is None:
                    return None
                vals.append([int(a) for a in v.ravel()])
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _attr_list(node, name):
    a = next((a for a in node.attribute if a.name == name), None)
    return list(a.ints) if a is not None else None


def _clamp(v: int, size: int) -> int:
    v = v + size if v < 0 else v
    return max(0, min(v, size))


@rule("Slice")
def slice_(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    params = _slice_params(node, ctx)
    if xs is None or params is None:
        return
    starts, ends, axes, steps = params
    sliced = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        sliced[_axis(a, len(xs))] = (s, e, st)
    for ax in range(len(xs)):
        if ax not in sliced:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
            continue
        s, e, st = sliced[ax]
        if st != 1 or xs[ax] is None:
            continue  # strided or reversed slices are not handled: the axis blocks
        ctx.segment(ctx.dim(y, ax), ctx.dim(x, ax), _clamp(s, xs[ax]))


@rewriter("Slice")
def rewrite_slice(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    x = node.input[0]
    xs = ctx.old_shape(x)
    params = _slice_params(node, ctx)
    if params is None or xs is None:
        return  # the rule declared nothing here, so no member lost entries
    starts, ends, axes, steps = params
    changed = False
    for i, a in enumerate(axes):
        ax = _axis(a, len(xs))
        removed = ctx.removed(x, ax)
        if len(removed) == 0:
            continue
        s, e = _clamp(starts[i], xs[ax]), _clamp(ends[i], xs[ax])
        starts[i] = s - int(np.sum(removed < s))
        ends[i] = e - int(np.sum(removed < e))
        changed = True
    if not changed:
        return
    if ctx.view.opset < 10:
        ctx.set_attr(node, "starts", starts)
        ctx.set_attr(node, "ends", ends)
    else:
        ctx.set_constant_input(node, 1, np.array(starts, dtype=np.int64))
        ctx.set_constant_input(node, 2, np.array(ends, dtype=np.int64))


@rule("Flatten")
def flatten(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    axis = _axis(ctx.attr("axis", 1), len(xs))
    for out_ax, (lo, hi) in enumerate(((0, axis), (axis, len(xs)))):
        if lo >= hi:
            continue
        _major_block(ctx, x, lo, hi, y, out_ax, xs)


def _major_block(ctx: RuleContext, x: str, lo: int, hi: int, y: str, out_ax: int, xs) -> None:
    """Axes ``lo:hi`` of x merge into axis ``out_ax`` of y: the major axis owns blocks."""
    rest = xs[lo + 1 : hi]
    if any(s is None for s in rest):
        return
    ctx.block(ctx.dim(x, lo), ctx.dim(y, out_ax), int(np.prod(rest, dtype=np.int64)))


@rule("Reshape")
def reshape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    static = ctx.view.value(node.input[1]) is not None and None not in (xs or (None,)) + (ys or (None,))
    if not static:
        _symbolic_reshape(node, ctx)
        return
    for (i0, i1), (j0, j1) in _matched_segments(xs, ys):
        ins = [i for i in range(i0, i1) if xs[i] != 1]
        outs = [j for j in range(j0, j1) if ys[j] != 1]
        if len(ins) == 1 and len(outs) == 1:
            ctx.identity(ctx.dim(x, ins[0]), ctx.dim(y, outs[0]))
        elif len(ins) == 1 and len(outs) > 1:  # one axis split into several
            _unit(ctx, y, ys, outs, x, ins[0], selectors=True)
        elif len(outs) == 1 and len(ins) > 1:  # several axes merged into one
            _unit(ctx, x, xs, ins, y, outs[0], selectors=False)
    for ax, size in enumerate(ys):  # size-1 axes (unsqueezed batch) carry nothing
        if size == 1:
            ctx.dim(y, ax)
    for ax, size in enumerate(xs):
        if size == 1:
            ctx.dim(x, ax)


def _symbolic_reshape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """A Reshape whose shape or sizes are partly known only at run time (rule 4b).

    Sizes are monomials: an integer times symbols for unknown dims. An input dim is its own
    symbol (or its ``dim_param``); an element of the target read by Shape from the input (or
    from a tensor whose dim has the same ``dim_param``) is that symbol, a constant is a number,
    ``0`` copies the input dim and ``-1`` is what is left. Axes are then matched as in the
    static case, by running products that divide each other. An output axis whose size is a
    constant that surgery cannot rewrite in place (computed, or shared with another tensor)
    blocks.
    """
    mv = ctx.view
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    index = mv.producer[y]
    elements = shape_elements(mv, node.input[1], (index, 1)) if len(node.input) > 1 else None
    if xs is None or elements is None:
        why = "of a tensor of unknown shape" if xs is None else "with a shape computed at run time"
        _forbid_all(ctx, node, f"Reshape {why}")
        return
    xm = [_symbol(mv, x, k, xs[k]) for k in range(len(xs))]
    allowzero = ctx.attr("allowzero", 0)
    ym: list = []
    for j, el in enumerate(elements):
        if el.source is not None and el.source[0] == x:
            ym.append(xm[el.source[1]])
        elif el.source is not None:
            # the size of another tensor: neither it nor this axis may change alone
            t, k = el.source
            ctx.forbid(ctx.dim(t, k), f"Reshape reads its size at run time for another tensor {x!r}")
            ctx.forbid(ctx.dim(y, j), f"Reshape takes the size of axis {j} from another tensor {t!r}")
            ym.append(_symbol(mv, t, k, el.value))
        elif el.value == 0 and not allowzero and j < len(xm):
            ym.append(xm[j])
        elif el.value is None or el.value < 0:
            ym.append(None)
        else:
            ym.append((el.value, ()))
        if not (el.source is not None or el.value in (0, -1) or el.where is not None):
            why = "computed at run time" if el.value is None else "held where other nodes read it too, or computed"
            ctx.forbid(ctx.dim(y, j), f"Reshape with a size at axis {j} {why}: it cannot be rewritten")
    rest = _quotient(_product(xm), _product([m for m in ym if m is not None]))
    if ym.count(None) == 1 and rest is not None:
        ym[ym.index(None)] = rest
    if None in ym:
        _forbid_all(ctx, node, "Reshape with a shape computed at run time")
        return
    one = (1, ())
    ints_x = [m[0] if not m[1] else None for m in xm]
    ints_y = [m[0] if not m[1] else None for m in ym]
    for (i0, i1), (j0, j1) in _matched_segments(xm, ym, mul=_mul, divides=_divides):
        ins = [i for i in range(i0, i1) if xm[i] != one]
        outs = [j for j in range(j0, j1) if ym[j] != one]
        if len(ins) == 1 and len(outs) == 1:
            ctx.identity(ctx.dim(x, ins[0]), ctx.dim(y, outs[0]))
        elif len(ins) == 1 and len(outs) > 1 and None not in [ints_y[j] for j in outs]:
            _unit(ctx, y, ints_y, outs, x, ins[0], selectors=True)
        elif len(outs) == 1 and len(ins) > 1 and None not in [ints_x[i] for i in ins]:
            _unit(ctx, x, ints_x, ins, y, outs[0], selectors=False)
    for t, ms in ((y, ym), (x, xm)):
        for ax, m in enumerate(ms):
            if m == one:
                ctx.dim(t, ax)


def _symbol(mv, tensor: str, axis: int, size: int | None):
    """A dim's size as a monomial ``(integer, sorted symbols)``: its value, or a symbol (its
    ``dim_param`` name when it has one, so that two tensors' batch dims meet)."""
    if size is not None:
        return (int(size), ())
    names = mv.dim_params.get(tensor) or ()
    name = names[axis] if axis < len(names) else None
    return (1, (name if name and name != "?" else f"{tensor}[{axis}]",))


def _divides(a, b) -> bool:
    return a != b and _quotient(b, a) is not None


def _unit(ctx: RuleContext, many: str, shape, axes: list[int], one: str, axis: int, *, selectors: bool) -> None:
    """Couple the single ``axis`` of ``one`` with the unit axis among ``axes`` of ``many``.

    The unit is the major axis: ``[HD] -> [H, D]`` keeps the heads ``H``, ``[C, H, W] -> [CHW]``
    keeps ``C``, and repeat_kv's merge ``[KV, n_rep] -> [H]`` keeps the key/value heads, so a
    query head goes with the key/value head it reads. In a split (``selectors``), leading axes
    that a Gather or Split later indexes are the q/k/v selector of a packed projection and
    are skipped: ``[3E] -> [3, E]`` keeps ``E``, ``[3HD] -> [3, H, D]`` keeps ``H`` (while
    ``[2D] -> [2, D]`` of two key/value heads keeps the heads). Each unit entry owns a
    strided set of the single axis; the other axes are left alone, so they block if anything
    else needs them.
    """
    pick = 0
    while selectors and pick < len(axes) - 1 and _selected_later(ctx, many, axes[pick]):
        pick += 1
    if selectors:
        # A channel shuffle ([C] -> [g, C/g] -> transpose -> [C/g, g] -> [C]) merges back with
        # another axis as the major one: taking that axis as the unit keeps both reshapes on
        # the same partition (unit c owns channels {c, C/g + c} before and {g*c ...} after).
        merged = [i for i, a in enumerate(axes) if _merged_as_major_later(ctx, many, a)]
        if merged:
            pick = merged[0]
    unit = axes[pick]
    outer = int(np.prod([shape[a] for a in axes[:pick]], dtype=np.int64))
    inner = int(np.prod([shape[a] for a in axes[pick + 1 :]], dtype=np.int64))
    coarse = ctx.dim(many, unit)
    ctx.strided(coarse, ctx.dim(one, axis), outer, inner)
    if inner > 1 and unit == axes[-2] and len(ctx.shape(one) or ()) - 1 == axis:
        ctx.tag(coarse, "heads", inner)  # [.., H*D] <-> [.., H, D] on the last axis: attention heads


_AXIS_MOVERS = ("Transpose", "Unsqueeze", "Squeeze", "Identity")


def _selected_later(ctx: RuleContext, tensor: str, axis: int, depth: int = 0) -> bool:
    """True if, following Transpose/Unsqueeze/Squeeze, a Gather or Split picks entries of
    ``axis``: the q/k/v selector of a packed projection, not a unit to prune."""
    mv = ctx.view
    rank = len(mv.shapes.get(tensor) or ())
    for i, pos in mv.consumers.get(tensor, []):
        node = mv.nodes[i]
        if pos != 0 or depth > 6:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Gather", "Split") and _axis(attrs.get("axis", 0), rank) == axis:
            return True
        if node.op_type == "Slice" and _slices_axis(node, ctx, rank, axis):
            return True  # paddle2onnx selects q, k and v with Slice
        if node.op_type not in _AXIS_MOVERS:
            continue
        moved = _moved_axis(node, attrs, mv, rank, axis)
        if moved is not None and _selected_later(ctx, node.output[0], moved, depth + 1):
            return True
    return False


def _slices_axis(node: onnx.NodeProto, ctx: RuleContext, rank: int, axis: int) -> bool:
    """True if a Slice with constant bounds cuts ``axis`` short (keeps fewer entries than it has)."""
    params = _slice_params(node, ctx)
    size = (ctx.view.shapes.get(node.input[0]) or (None,) * rank)[axis] if rank else None
    if params is None or size is None:
        return False
    starts, ends, axes, steps = params
    for s, e, a, st in zip(starts, ends, axes, steps):
        if _axis(a, rank) == axis and st == 1 and _clamp(e, size) - _clamp(s, size) < size:
            return True
    return False


def _merged_as_major_later(ctx: RuleContext, tensor: str, axis: int, depth: int = 0) -> bool:
    """True if, following Transpose/Unsqueeze/Squeeze, a Reshape merges ``axis`` with the
    axes after it into one, as the major axis of the merge."""
    mv = ctx.view
    shape = mv.shapes.get(tensor) or ()
    for i, pos in mv.consumers.get(tensor, []):
        node = mv.nodes[i]
        if pos != 0 or depth > 6:
            continue
        if node.op_type == "Reshape" and depth > 0:
            ys = mv.shapes.get(node.output[0])
            if ys is None or None in ys or None in shape:
                continue
            for (i0, i1), (j0, j1) in _matched_segments(shape, ys):
                ins = [a for a in range(i0, i1) if shape[a] != 1]
                outs = [b for b in range(j0, j1) if ys[b] != 1]
                if len(ins) > 1 and len(outs) == 1 and ins[0] == axis:
                    return True
            continue
        if node.op_type not in _AXIS_MOVERS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        moved = _moved_axis(node, attrs, mv, len(shape), axis)
        if moved is not None and _merged_as_major_later(ctx, node.output[0], moved, depth + 1):
            return True
    return False


def _moved_axis(node: onnx.NodeProto, attrs: dict, mv, rank: int, axis: int) -> int | None:
    """Where ``axis`` of a Transpose/Unsqueeze/Squeeze input lands in its output."""
    if node.op_type == "Identity":
        return axis
    if node.op_type == "Transpose":
        perm = list(attrs.get("perm", list(reversed(range(rank)))))
        return perm.index(axis) if axis in perm else None
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = mv.value(node.input[1])
        axes = None if value is None else [int(a) for a in value.ravel()]
    if axes is None:
        return None
    if node.op_type == "Unsqueeze":
        out_rank = rank + len(axes)
        inserted = sorted(_axis(a, out_rank) for a in axes)
        kept = [a for a in range(out_rank) if a not in inserted]
        return kept[axis]
    gone = {_axis(a, rank) for a in axes}
    if axis in gone:
        return None
    return axis - sum(1 for g in gone if g < axis)


def _matched_segments(xs, ys, mul=lambda a, b: a * b, divides=lambda a, b: a < b):
    """Pairs of axis ranges with equal size products, in order (sizes are integers, or
    monomials with their own ``mul`` and ``divides``)."""
    i = j = 0
    out = []
    while i < len(xs) and j < len(ys):
        i0, j0 = i, j
        pi, pj = xs[i], ys[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if divides(pi, pj) and i < len(xs):
                pi = mul(pi, xs[i])
                i += 1
            elif divides(pj, pi) and j < len(ys):
                pj = mul(pj, ys[j])
                j += 1
            else:
                return out
        out.append(((i0, i), (j0, j)))
    return out


@rewriter("Reshape")
def rewrite_reshape(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    y = node.output[0]
    old, new = ctx.old_shape(y), ctx.new_shape(y)
    if old == new:
        return
    value = ctx.view.value(node.input[1])
    if value is None:
        rewrite_elements(ctx, node.input[1], (ctx.view.producer[y], 1), old, new)
        return
    target = [int(v) for v in value.ravel()]
    for ax, (o, n) in enumerate(zip(old, new)):
        if o != n and target[ax] not in (-1, 0):
            target[ax] = n
    ctx.set_constant_input(node, 1, np.array(target, dtype=np.int64))


@rule("Transpose")
def transpose(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    perm = ctx.attr("perm", list(reversed(range(len(xs)))))
    for out_ax, in_ax in enumerate(perm):
        ctx.identity(ctx.dim(x, in_ax), ctx.dim(y, out_ax))


def _axes_param(node: onnx.NodeProto, ctx: RuleContext) -> list[int] | None:
    axes = ctx.attr("axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = ctx.value(node.input[1])
        return None if v is None else [int(a) for a in v.ravel()]
    return axes


@rule("Squeeze", "Unsqueeze")
def squeeze(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None:
        return
    axes = _axes_param(node, ctx)
    if node.op_type == "Squeeze":
        if axes is None:
            if len(node.input) > 1 and node.input[1]:
                return
            axes = [a for a, s in enumerate(xs) if s == 1]
        gone = {_axis(a, len(xs)) for a in axes}
        kept = [a for a in range(len(xs)) if a not in gone]
        pairs = zip(kept, range(len(ys)))
    else:
        if axes is None:
            return
        new = {_axis(a, len(ys)) for a in axes}
        kept = [a for a in range(len(ys)) if a not in new]
        pairs = zip(range(len(xs)), kept)
    for a, b in pairs:
        ctx.identity(ctx.dim(x, a), ctx.dim(y, b))


@rule("Pad")
def pad(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None:
        return
    rank = len(xs)
    if ctx.view.opset < 11:
        pads = ctx.attr("pads", None)
        axes = list(range(rank))
    else:
        pads_v = ctx.value(node.input[1]) if len(node.input) > 1 else None
        if pads_v is None:
            return
        pads = [int(p) for p in pads_v.ravel()]
        axes = list(range(rank))
        if len(node.input) > 3 and node.input[3]:
            av = ctx.value(node.input[3])
            if av is None:
                return
            axes = [_axis(int(a), rank) for a in av.ravel()]
    if pads is None:
        return
    n = len(axes)
    padded = {ax for k, ax in enumerate(axes) if pads[k] != 0 or pads[k + n] != 0}
    for ax in range(rank):
        if ax not in padded:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))


@rule("Resize", "Upsample")
def resize(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None or len(xs) != len(ys):
        return
    if len(node.input) > 3 and node.input[3] and ctx.value(node.input[3]) is None:
        # F.interpolate(x, size=skip.shape[2:]): Concat(Shape(x)[0:2], Shape(skip)[2:4]). An
        # axis whose size is read from x itself (or is a constant that can be rewritten) passes.
        elements = shape_elements(ctx.view, node.input[3], (ctx.view.producer[y], 3))
        if elements is None or len(elements) != len(xs) or ctx.attr("axes") is not None:
            _forbid_all(ctx, node, f"{node.op_type} with sizes computed at run time")
            return
        for ax, el in enumerate(elements):
            if el.source == (x, ax) or (el.where is not None and xs[ax] is not None and el.value == xs[ax]):
                ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))
        return
    for ax, (a, b) in enumerate(zip(xs, ys)):
        if a is not None and a == b:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))


@rewriter("Resize")
def rewrite_resize(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    if len(node.input) < 4 or not node.input[3]:
        return  # scales, not sizes: nothing to rewrite
    old, new = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
    if old == new:
        return
    value = ctx.view.value(node.input[3])
    if value is None:  # sizes computed at run time: the rule passed only axes it can follow
        rewrite_elements(ctx, node.input[3], (ctx.view.producer[node.output[0]], 3), old, new, keep=())
        return
    sizes = value.astype(np.int64).copy()
    # sizes lists every axis, or (opset 18) only those named by the axes attribute
    listed = next((list(a.ints) for a in node.attribute if a.name == "axes"), list(range(len(old))))
    listed = [a + len(old) if a < 0 else a for a in listed]
    changed = False
    for pos, ax in enumerate(listed):
        if old[ax] != new[ax]:
            sizes[pos] = new[ax]
            changed = True
    if changed:
        ctx.set_constant_input(node, 3, sizes)


def rewrite_elements(ctx: SurgeryContext, shape: str, consumer: tuple[int, int], old, new, keep=(0, -1)) -> None:
    """Rewrite, where they are held, the constant elements of a shape computed at run time
    whose axis changed size (elements read by Shape follow the pruned tensor by themselves, so
    do the values in ``keep``, Reshape's 0 and -1 or Expand's 1; the rule coupled no axis
    whose constant cannot be rewritten in place)."""
    elements = shape_elements(ctx.view, shape, consumer)
    for ax, (o, n) in enumerate(zip(old, new)):
        if o == n:
            continue
        el = elements[ax]
        if el.source is not None or el.value in keep:
            continue
        node_index, pos, k = el.where
        holder = ctx.model.graph.node[node_index]
        arr = np.array(ctx.current_value(holder.input[pos]), copy=True)
        arr.flat[k] = n
        ctx.set_constant_input(holder, pos, arr)


def _forbid_all(ctx: RuleContext, node: onnx.NodeProto, reason: str) -> None:
    """Block every axis of the node's data input and output, with ``reason``."""
    for t in (node.input[0], node.output[0]):
        for ax in range(len(ctx.shape(t) or ())):
            ctx.forbid(ctx.dim(t, ax), reason)


@rule("Gather")
def gather(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Axes other than the gathered one pass through (an embedding's hidden axis, the hidden
    axis after selecting q, k or v); the gathered axis is indexed, so it blocks."""
    data, idx, y = node.input[0], node.input[1], node.output[0]
    ds, is_ = ctx.shape(data), ctx.shape(idx)
    if ds is None or is_ is None:
        return
    axis = _axis(ctx.attr("axis", 0), len(ds))
    for ax in range(len(ds)):
        if ax == axis:
            ctx.forbid(ctx.dim(data, ax), "Gather indexes this axis")
        else:
            ctx.identity(ctx.dim(data, ax), ctx.dim(y, ax if ax < axis else ax + len(is_) - 1))
    if ctx.view.is_weight(data):
        for ax in range(len(ds)):
            if ax != axis:
                ctx.role(ctx.dim(data, ax), "out")  # an embedding table makes the hidden channels


@rule("Expand")
def expand(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Axes that keep their size pass through (repeat_kv's kv-heads axis); broadcast ones do not.
    A target shape computed at run time is read element by element (see ``_symbolic_reshape``):
    an axis passes through where its element is 1, is read by Shape from the same axis of the
    input, or is a constant equal to its size that surgery can rewrite in place."""
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.shape(x), ctx.shape(y)
    if xs is None or ys is None:
        return
    shift = len(ys) - len(xs)
    if ctx.value(node.input[1]) is None:
        elements = shape_elements(ctx.view, node.input[1], (ctx.view.producer[y], 1))
        if elements is None or len(elements) != len(ys):
            return
        for ax, size in enumerate(xs):
            el = elements[ax + shift]
            if (
                el.value == 1
                or el.source == (x, ax)
                or (el.where is not None and size is not None and el.value == size)
            ):
                ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax + shift))
        return
    for ax, size in enumerate(xs):
        if size is not None and size == ys[ax + shift]:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax + shift))


@rewriter("Expand")
def rewrite_expand(node: onnx.NodeProto, ctx: SurgeryContext) -> None:
    old, new = ctx.old_shape(node.output[0]), ctx.new_shape(node.output[0])
    if old == new:
        return
    value = ctx.view.value(node.input[1])
    if value is None:  # 1 broadcasts the input's own (pruned) size: only other constants change
        rewrite_elements(ctx, node.input[1], (ctx.view.producer[node.output[0]], 1), old, new, keep=(1,))
        return
    target = [int(v) for v in value.ravel()]
    shift = len(old) - len(target)
    for ax in range(len(target)):
        if target[ax] != 1 and old[ax + shift] != new[ax + shift]:
            target[ax] = new[ax + shift]
    ctx.set_constant_input(node, 1, np.array(target, dtype=np.int64))


@rule("Shape", "Size")
def shape_read(node: onnx.NodeProto, ctx: RuleContext) -> None:
    xs = ctx.shape(node.input[0])
    for ax in range(len(xs or ())):
        ctx.dim(node.input[0], ax)  # declared: Shape reads the sizes at run time


@rule("Tile")
def tile(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Axes repeated once pass through; the repeats may be computed at run time
    (``Concat(Shape(x)[0], [1], [1])``), an axis passes if its element is the constant 1."""
    x, y = node.input[0], node.output[0]
    xs = ctx.shape(x)
    if xs is None or len(node.input) < 2:
        return
    value = ctx.value(node.input[1])
    if value is not None:
        repeats = [int(r) for r in value.ravel()]
    else:
        elements = shape_elements(ctx.view, node.input[1], (ctx.view.producer[y], 1))
        repeats = [e.value if e.source is None else None for e in elements or ()]
    if len(repeats) != len(xs):
        return
    for ax, r in enumerate(repeats):
        if r == 1:
            ctx.identity(ctx.dim(x, ax), ctx.dim(y, ax))


@rule("ConstantOfShape")
def constant_of_shape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """An axis whose size is read by Shape from another tensor's axis at run time follows that
    axis: its entries are all the same constant, so removing some keeps the rest as they were."""
    y = node.output[0]
    elements = shape_elements(ctx.view, node.input[0], (ctx.view.producer[y], 0)) or ()
    for j, el in enumerate(elements):
        if el.source is not None:
            ctx.identity(ctx.dim(*el.source), ctx.dim(y, j))
