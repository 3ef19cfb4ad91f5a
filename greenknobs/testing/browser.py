"""Headless Chromium for page tests: the rendered DOM (after scripts ran) and screenshots.

Offline means *no network at all*: the browser runs in a network namespace of its own
(``unshare -n``) where the machine allows it, and otherwise behind a dead proxy with every host
name unresolvable, so a page that needs the network cannot quietly fetch it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars"]
BLOCK_NETWORK = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _command(args: list[str], offline: bool) -> tuple[list[str], str]:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    if offline and _can_unshare():
        return ["unshare", "-n", browser, *FLAGS, *args], "network namespace without interfaces (unshare -n)"
    if offline:
        return [browser, *FLAGS, *BLOCK_NETWORK, *args], "dead proxy and no name resolution"
    return [browser, *FLAGS, *args], "network allowed"


def dump_dom(url: str, offline: bool = False, budget_ms: int = 15000, timeout_s: float = 120) -> tuple[str, str]:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time, and how it was isolated."""
    with tempfile.TemporaryDirectory(prefix="gk-chromium-") as profile:
        cmd, how = _command([f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                            offline)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout, how


def screenshot(url: str, path: Path, offline: bool = False, size: tuple[int, int] = (1280, 2400),
               budget_ms: int = 15000, timeout_s: float = 120) -> Path:
    with tempfile.TemporaryDirectory(prefix="gk-chromium-") as profile:
        cmd, _ = _command([f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           f"--window-size={size[0]},{size[1]}", f"--screenshot={path}", url], offline)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium made no screenshot ({out.returncode}): {out.stderr[-2000:]}")
    return path


def distinct_colours(path: Path) -> int:
    """How many different colours a screenshot holds (a blank page has one or two)."""
    from PIL import Image

    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours else 1 << 20


def visible_text(dom: str) -> str:
    import re

    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
