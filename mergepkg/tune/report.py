"""What a search shows: figures (trials per hour, build and evaluation shares, trials the
store already held), a text plot for the terminal and a self-contained SVG of the
objective against the trial number with the running best and the best parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from mergepkg.tune.log import Trial

WIDTH, HEIGHT, PAD = 720, 360, 56


@dataclass(frozen=True)
class Figures:
    trials: int
    per_hour: float  # trials per hour of trial time (build + evaluation)
    build_share: float  # of trial time
    eval_share: float
    stored: int  # trials whose key the store held: nothing built
    mean_build_s: float
    mean_eval_s: float


def figures(trials: list[Trial]) -> Figures:
    build = sum(t.build_s for t in trials)
    ev = sum(t.eval_s for t in trials)
    total = build + ev or 1e-9
    n = len(trials) or 1
    return Figures(
        len(trials),
        3600 * len(trials) / total,
        build / total,
        ev / total,
        sum(t.stored for t in trials),
        build / n,
        ev / n,
    )


def running_best(trials: list[Trial]) -> list[float]:
    out: list[float] = []
    for t in trials:
        out.append(max(out[-1], t.objective) if out else t.objective)
    return out


def finite_range(ys: list[float]) -> tuple[float, float]:
    """The lowest and highest objective that is a number (-inf: a trial that scored none)."""
    finite = [y for y in ys if math.isfinite(y)] or [0.0]
    return min(finite), max(finite)


def text_plot(trials: list[Trial], *, width: int = 60, height: int = 10) -> list[str]:
    """Rows of a character plot: `·` each trial's objective, `─` the best so far."""
    if not trials:
        return []
    lo, hi = finite_range([t.objective for t in trials])
    span = hi - lo or 1.0
    cols = min(width, len(trials))
    grid = [[" "] * cols for _ in range(height)]

    def row(y: float) -> int:  # a trial that scored -inf (no number) on the bottom row
        return height - 1 - round((max(y, lo) - lo) / span * (height - 1))

    best = running_best(trials)
    for i, t in enumerate(trials):
        c = i * cols // len(trials)
        grid[row(best[i])][c] = "─" if grid[row(best[i])][c] == " " else grid[row(best[i])][c]
        grid[row(t.objective)][c] = "●" if t.objective == best[i] else "·"
    labels = [f"{hi:.3f}" if r == 0 else f"{lo:.3f}" if r == height - 1 else "" for r in range(height)]
    lines = [f"{lab:>6} │{''.join(g)}" for lab, g in zip(labels, grid)]
    lines.append(f"{'':>6} └{'─' * cols}")
    lines.append(f"{'':>8}trial 0{' ' * max(cols - 12, 1)}{len(trials) - 1}")
    return lines


def svg(trials: list[Trial], title: str, best_lines: list[str]) -> str:
    """A standalone SVG: objective against trial (dots), running best (line), the best parameters."""
    lo, hi = finite_range([t.objective for t in trials])
    span = hi - lo or 1.0
    n = max(len(trials) - 1, 1)
    plot_h = HEIGHT - 2 * PAD

    def xy(i: int, y: float) -> tuple[float, float]:
        return PAD + i / n * (WIDTH - 2 * PAD), PAD + (1 - (max(y, lo) - lo) / span) * plot_h

    dots = "".join(
        '<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="#4477aa"><title>trial {} {:.4f}</title></circle>'.format(
            *xy(t.number, t.objective), t.number, t.objective
        )
        for t in trials
    )
    line = " ".join("{:.1f},{:.1f}".format(*xy(i, b)) for i, b in enumerate(running_best(trials)))
    ticks = "".join(
        f'<text x="{PAD - 8}" y="{xy(0, v)[1] + 4:.1f}" text-anchor="end">{v:.3f}</text>'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{xy(0, v)[1]:.1f}" y2="{xy(0, v)[1]:.1f}" stroke="#ddd"/>'
        for v in (lo, lo + span / 2, hi)
    )
    text = "".join(f'<text x="{PAD}" y="{HEIGHT + 18 * (k + 1)}">{escape(s)}</text>' for k, s in enumerate(best_lines))
    total_h = HEIGHT + 18 * (len(best_lines) + 1)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h}" '
        f'font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="{PAD}" y="24" font-size="15">{escape(title)}</text>{ticks}'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{HEIGHT - PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - PAD + 32}" text-anchor="middle">trial (0 to {len(trials) - 1})</text>'
        f'<polyline points="{line}" fill="none" stroke="#cc6677" stroke-width="2"/>{dots}{text}</svg>\n'
    )
