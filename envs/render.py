"""Text render of one map: walls, objects, agents with their facing, and what everyone holds."""

from __future__ import annotations

from envs.grid import GridEnv
from envs.spec import ACTIONS, F, INV0, INVENTORY_ITEMS

SYMBOL = {"empty": ".", "wall": "#", "block": "b", "mine_red": "m", "generator_red": "g", "altar": "a", "cue": "c"}
FACING = "^v<>"
LEGEND = "# wall  b block  m mine  g generator  a altar  c cue  ^v<> agent (facing)"


def _inventory(values) -> str:
    held = [f"{name}={int(v)}" for name, v in zip(INVENTORY_ITEMS, values) if v]
    return " ".join(held) or "-"


def render(env: GridEnv, index: int = 0) -> str:
    """The map `index` as text, with each agent's inventory and each converter's state."""
    if not 0 <= index < env.num_envs:
        raise IndexError(f"map index {index} out of range: the env has {env.num_envs} maps")
    p, kinds = env.pad, env.kinds
    grid = env.grid[index].view(env.Hp, env.Wp)[p:p + env.H, p:p + env.W].tolist()
    obj = env.obj[index].tolist()
    lines = [f"map {index}  step {int(env.steps[index])}/{int(env.limit[index])}  altar takes {int(env.takes[index])}"]
    for row in grid:
        lines.append(" ".join(FACING[obj[r][F["orientation"]]] if kinds[r] == "agent" else SYMBOL[kinds[r]] for r in row))
    last = env.last_action[index].tolist()
    cells = env.pos[index].tolist()
    for i in range(env.agents_per_env):
        r, (row, col) = 3 + i, divmod(cells[i], env.Wp)
        frozen = obj[r][F["frozen"]]
        act = f"{ACTIONS[last[i][0]][0]}({last[i][1]})"
        lines.append(f"agent {i} at ({row - p},{col - p}) {FACING[obj[r][F['orientation']]]} last={act} reward={float(env.last_reward[index, i]):+.2f}"
                     f"{f' frozen={frozen}' if frozen else ''}  {_inventory(obj[r][INV0:])}")
    timers, cooling, decoy = env.timer[index].tolist(), env.cooling[index].tolist(), env.decoy[index].tolist()
    for r in range(env.conv0, env.conv1):
        busy = f" {'cooling' if cooling[r] else 'converting'}({timers[r]})" if timers[r] else ""
        lines.append(f"{kinds[r]:<13} {_inventory(obj[r][INV0:])}{busy}{' (decoy)' if decoy[r] else ''}")
    return "\n".join(lines)


def write_gif(frames: list[str], path: str, seconds_per_frame: float = 0.25) -> None:
    """An animated GIF of text frames (e.g. `render` after every step), in a monospace font, black on white.
    Needs Pillow (with the plots extra: pip install -e ".[plots]")."""
    try:
        from matplotlib import font_manager
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError('writing a GIF needs matplotlib and Pillow: pip install -e ".[plots]"') from None
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans Mono"), 14)  # ships with matplotlib
    width = max(int(font.getlength(line)) for frame in frames for line in frame.splitlines()) + 16
    height = max(len(frame.splitlines()) for frame in frames) * 17 + 16
    images = []
    for frame in frames:
        image = Image.new("L", (width, height), 255)
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(frame.splitlines()):
            draw.text((8, 8 + 17 * i), line, fill=0, font=font)
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(seconds_per_frame * 1000), loop=0)
