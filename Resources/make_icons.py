"""Draw the Mem3DSegment icons: three stacked slices, a painted contour on the middle slice and
the propagated contours above and below it.

Writes each icon as SVG and as PNG (rendered with matplotlib from the same shapes):
    python Resources/make_icons.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Ellipse, FancyArrow, Polygon  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]

SLICE_FILL = "#4a6fa5"
SLICE_EDGE = "#22344f"
PAINTED = "#ff8c1a"  # the contour the user paints
PROPAGATED = "#2bb673"  # contours the network propagates

# Shapes on a 128 x 128 canvas, y pointing down as in SVG. Slices are drawn back to front.
SLICE_CENTRES = (94, 64, 34)  # bottom, middle, top
CONTOURS = {94: (26, 9, PROPAGATED), 64: (30, 10.5, PAINTED), 34: (22, 7.5, PROPAGATED)}


def slice_corners(centre_y: float) -> list[tuple[float, float]]:
    return [(12, centre_y), (64, centre_y - 20), (116, centre_y), (64, centre_y + 20)]


def svg_text() -> str:
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 128 128">']
    for centre_y in SLICE_CENTRES:
        points = " ".join(f"{x},{y}" for x, y in slice_corners(centre_y))
        parts.append(f'  <polygon points="{points}" fill="{SLICE_FILL}" fill-opacity="0.55" '
                     f'stroke="{SLICE_EDGE}" stroke-width="2" stroke-linejoin="round"/>')
        rx, ry, colour = CONTOURS[centre_y]
        dash = "" if colour == PAINTED else ' stroke-dasharray="6 3"'
        width = 5 if colour == PAINTED else 3.5
        parts.append(f'  <ellipse cx="64" cy="{centre_y}" rx="{rx}" ry="{ry}" fill="none" '
                     f'stroke="{colour}" stroke-width="{width}"{dash}/>')
    for start, end in ((52, 40), (76, 88)):
        parts.append(f'  <line x1="64" y1="{start}" x2="64" y2="{end}" stroke="{PROPAGATED}" '
                     'stroke-width="3" stroke-linecap="round"/>')
        tip = -1 if end < start else 1
        parts.append(f'  <polygon points="58,{end} 70,{end} 64,{end + 7 * tip}" fill="{PROPAGATED}"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_png(path: Path, pixels: int) -> None:
    # A 1-inch figure spans the 128-unit canvas, so one canvas unit is 72 / 128 points. Small
    # icons get doubled line widths, or their outlines would fall below one pixel.
    unit = 72 / 128 * (1.0 if pixels >= 64 else 2.0)
    figure = plt.figure(figsize=(1, 1), dpi=pixels)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_xlim(0, 128)
    axes.set_ylim(128, 0)
    axes.axis("off")
    for centre_y in SLICE_CENTRES:
        corners = slice_corners(centre_y)
        axes.add_patch(Polygon(corners, closed=True, facecolor=SLICE_FILL, alpha=0.55, edgecolor="none"))
        axes.add_patch(Polygon(corners, closed=True, fill=False, edgecolor=SLICE_EDGE, linewidth=2 * unit,
                               joinstyle="round"))
        rx, ry, colour = CONTOURS[centre_y]
        painted = colour == PAINTED
        width = 5 if painted else 3.5
        style = "-" if painted or pixels < 64 else (0, (6 / width, 3 / width))
        axes.add_patch(Ellipse((64, centre_y), 2 * rx, 2 * ry, fill=False, edgecolor=colour,
                               linewidth=width * unit, linestyle=style))
    for start, end in ((52, 40), (76, 88)):
        axes.add_patch(FancyArrow(64, start, 0, end - start, width=3, head_width=12, head_length=7,
                                  color=PROPAGATED, linewidth=0))
    figure.savefig(path, dpi=pixels, transparent=True)
    plt.close(figure)


def main() -> None:
    (REPOSITORY / "Resources" / "Mem3DSegment.svg").write_text(svg_text())
    render_png(REPOSITORY / "Resources" / "Mem3DSegment.png", 128)
    render_png(REPOSITORY / "Mem3DSegment" / "Resources" / "Icons" / "Mem3DSegment.png", 128)
    effectIcons = REPOSITORY / "Mem3DSegment" / "SegmentEditorMem3DLib" / "Resources" / "Icons"
    render_png(effectIcons / "Mem3D.png", 32)


if __name__ == "__main__":
    main()
