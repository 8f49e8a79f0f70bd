"""A recipe's DAG as inline SVG, laid out here: no JavaScript, no Graphviz.

The nodes and edges are the `graph` command's (`recipe/plan.py: graph_parts`). Columns
are the longest path from a source (sources left, outputs right, as `graph LR`); within
a column nodes keep the recipe's order, then one pass moves each toward the mean row of
what it reads, so edges cross less. Sources are rounded, steps square with their method
under the name; every text is escaped.
"""

from __future__ import annotations

from html import escape

from mergepkg.recipe.plan import Plan, graph_parts

CHAR = 7.2  # px per character at the 12px monospace the boxes use
PAD, ROW_H, BOX_H, GAP_X, MARGIN = 12, 58, 40, 56, 8


def _label(plan: Plan, node: str) -> tuple[str, str]:
    r = plan.recipe
    if node in r.sources:
        src = r.sources[node]
        return node, (f"{src.dependency}:{src.step}" if src.dependency else src.hf or "")
    return node, r.steps[node].method


def _columns(nodes: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    depth = dict.fromkeys(nodes, 0)
    reads: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        reads[b].append(a)
    for n in nodes:  # `nodes` is in topological order (sources, then the plan's order)
        if reads[n]:
            depth[n] = 1 + max(depth[a] for a in reads[n])
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for n in nodes:
        columns[depth[n]].append(n)
    row = {n: float(i) for col in columns for i, n in enumerate(col)}
    for col in columns[1:]:  # one barycentre pass
        col.sort(key=lambda n: sum(row[a] for a in reads[n]) / len(reads[n]))
        row.update({n: float(i) for i, n in enumerate(col)})
    return columns


def _ordered(plan: Plan, nodes: list[str]) -> list[str]:
    order = {n: i for i, n in enumerate([*plan.recipe.sources, *plan.order])}
    return sorted(nodes, key=lambda n: order.get(n, len(order)))


def dag_svg(plan: Plan) -> str:
    """The plan's DAG as an `<svg>` element sized to its content."""
    nodes, edges = graph_parts(plan)
    nodes = _ordered(plan, nodes)
    columns = _columns(nodes, edges)
    labels = {n: _label(plan, n) for n in nodes}
    widths = [max((max(map(len, labels[n])) * CHAR + 2 * PAD for n in col), default=0) for col in columns]
    tallest = max((len(c) for c in columns), default=0)
    height = tallest * ROW_H - (ROW_H - BOX_H) + 2 * MARGIN
    place: dict[str, tuple[float, float, float]] = {}  # node -> x, y, width
    x = float(MARGIN)
    for col, width in zip(columns, widths):
        top = MARGIN + (tallest - len(col)) * ROW_H / 2
        for i, n in enumerate(col):
            place[n] = (x, top + i * ROW_H, width)
        x += width + GAP_X
    total = x - GAP_X + MARGIN
    out = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{total:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {total:.0f} {height:.0f}" role="img" aria-label="the recipe\'s steps and what they read">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
    ]
    for a, b in edges:
        ax, ay, aw = place[a]
        bx, by, _ = place[b]
        x1, y1, x2, y2 = ax + aw, ay + BOX_H / 2, bx - 1, by + BOX_H / 2
        mid = (x1 + x2) / 2
        out.append(
            f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
            'fill="none" stroke="#666" stroke-width="1.4" marker-end="url(#arrow)"/>'
        )
    for n in nodes:
        nx_, ny, w = place[n]
        name, sub = labels[n]
        source = n in plan.recipe.sources
        kind = "source" if source else ("output" if n in plan.recipe.outputs else "step")
        out.append(
            f'<g class="node {kind}"><title>{escape(name)}{" — " + escape(sub) if sub else ""}</title>'
            f'<rect x="{nx_:.1f}" y="{ny:.1f}" width="{w:.1f}" height="{BOX_H}" rx="{18 if source else 4}"/>'
            f'<text x="{nx_ + w / 2:.1f}" y="{ny + (16 if sub else 24):.1f}" class="name">{escape(name)}</text>'
            + (f'<text x="{nx_ + w / 2:.1f}" y="{ny + 31:.1f}" class="sub">{escape(sub)}</text>' if sub else "")
            + "</g>"
        )
    out.append("</svg>")
    return "".join(out)
