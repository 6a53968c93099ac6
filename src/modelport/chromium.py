"""Headless Chromium as both browser checks launch it (transformers.js clients, WebLLM for MLC).

One place for the binary and its flags; the harnesses (clients/js/browser_embed.mjs,
targets/mlc/js/chromium_check.mjs) get both in their request instead of keeping copies.
"""

from __future__ import annotations

import os
from pathlib import Path

# Why each group is there:
#   WebGPU on a machine without a GPU: Debian's Chromium gets an adapter only through SwiftShader
#   (Vulkan on the CPU), and only with the "unsafe" switches; no Vulkan surface (headless).
#   A closed network: without the background-networking switches Chromium keeps opening
#   connections that are refused; every host but the harness' own 127.0.0.1 server resolves to
#   nothing, so a page that fetches from the internet fails visibly (off-origin requests are
#   recorded by the harnesses).
FLAGS: tuple[str, ...] = (
    "--headless=new", "--no-sandbox",
    "--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--enable-features=Vulkan",
    "--use-angle=swiftshader", "--use-webgpu-adapter=swiftshader", "--disable-vulkan-surface",
    "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
    "--disable-quic", "--disable-default-apps", "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def path() -> Path:
    """The system Chromium (Debian package); MODELPORT_CHROMIUM overrides it (read at call time)."""
    return Path(os.environ.get("MODELPORT_CHROMIUM", "/usr/bin/chromium"))
