#!/usr/bin/env python3
"""Glass-to-glass latency of live viewing: the simulator's frame time -> the frame shown in Chromium.

Method (every process on 127.0.0.1, every process stopped in a ``finally``):

1. The simulator runs in this process (a thread with its own event loop) with a ``frame_hook``
   that notes, for every frame it sends, its RTP timestamp and the wall time (``time.time_ns``)
   at which its packets are handed to the socket: the simulator's frame time. (A real camera adds
   its capture and encoding delay before that; it is not modelled.)
2. ``csud run`` records it with ``[web]`` on; an operator logs into the wall in headless Chromium
   (selenium and Debian's chromium-driver, as tests/browser/test_wall.py).
3. In the page, ``requestVideoFrameCallback`` on every tile's video notes each presented frame's
   ``mediaTime`` and ``performance.timeOrigin + presentationTime`` (when Chromium handed the
   decoded frame to its compositor, on the wall clock). csud's live fragments carry the RTP
   timestamp as their decode time (csud/live/fanout.py), so ``round(mediaTime * 90000) mod 2^32``
   names the frame; its latency is the presentation time minus the simulator's frame time.
4. Also sampled: how far each video plays behind the end of its buffer (``buffered.end -
   currentTime``: the player's own buffer, part of the latency), and the offset between the
   page's clock (``timeOrigin + performance.now()``) and ``Date.now()`` (the error of step 3's
   clock against the system clock the simulator reads).

Errors: headless Chromium composites without a display, so the scan-out of a real screen (up to one
refresh, 17 ms at 60 Hz, plus the panel's own delay) is not counted; ``Date.now()`` has 1 ms
resolution; the page clock offset is reported. The frame is named exactly (no RTP clock jump
in a run).

    .venv/bin/python scripts/glass_live.py --cameras 1 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from csud.media.rtp import RTP_TS_OFFSET
from csud.rtsp.interleave import INTERLEAVED_HEADER_SIZE
from csud.sim.options import SimOptions
from csud.sim.server import serve
from csud.store.identity import create_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import free_port, wait_port

BIN = Path(sys.executable).parent
CSUD = str(BIN / "csud")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "glass to glass 1"
RTP_WRAP = 1 << 32
TS_AT = INTERLEAVED_HEADER_SIZE + RTP_TS_OFFSET  # in the simulator's first interleaved packet

RECORD = """
window.__g2g = []; window.__lag = [];
const origin = performance.timeOrigin;
for (const v of document.querySelectorAll('.tile video')) {
  const camera = v.closest('.tile').dataset.camera;
  const cb = (now, m) => {
    window.__g2g.push([camera, m.mediaTime, origin + m.presentationTime, origin + m.expectedDisplayTime]);
    v.requestVideoFrameCallback(cb);
  };
  v.requestVideoFrameCallback(cb);
}
window.__lagTimer = setInterval(() => {
  for (const v of document.querySelectorAll('.tile video')) {
    if (v.buffered.length) window.__lag.push(v.buffered.end(v.buffered.length - 1) - v.currentTime);
  }
}, 200);
"""
COLLECT = """
clearInterval(window.__lagTimer);
const clock = [];
for (let i = 0; i < 20; i++) clock.push(Date.now() - (performance.timeOrigin + performance.now()));
return {frames: window.__g2g, lag: window.__lag, clock: clock};
"""


class Simulator(threading.Thread):
    """``csud simulate`` in a thread, noting each frame's RTP timestamp -> wall time sent."""

    def __init__(self, options: SimOptions) -> None:
        super().__init__(daemon=True)
        self.sent_ns: dict[int, int] = {}
        options.frame_hook = self._hook
        self.options = options
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._done = asyncio.Event()

    def _hook(self, session: Any, frame: Any, patched: bytearray) -> bytearray:
        self.sent_ns[int.from_bytes(patched[TS_AT : TS_AT + 4], "big")] = time.time_ns()
        return patched

    def run(self) -> None:
        async def main() -> None:
            server = await serve(self.options)
            self.ready.set()
            try:
                await self._done.wait()
            finally:
                await server.close()

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._done.set)
        self.join(30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def driver(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", "--window-size=1280,800", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5, help="seconds of playing before measuring")
    ap.add_argument("--bitrate", type=int, default=4_000_000)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="csud-glass-"))
    rtsp, web = free_port(), free_port()
    config = tmp / "csud.toml"
    lines = [
        f'[storage]\nroot = "{tmp / "store"}"\nsegment_seconds = 10',
        f'[web]\nlisten = "127.0.0.1:{web}"',
        '[[communes]]\nid = "metz"\nname = "Metz"\nservice = "live"\nretention_days = 15',
    ]
    for i in range(1, args.cameras + 1):
        lines.append(f'[[cameras]]\nid = "cam{i}"\ncommune = "metz"\nurl = "rtsp://127.0.0.1:{rtsp}/cam{i}"')
    config.write_text("\n\n".join(lines) + "\n")
    create_store(tmp / "store")
    (tmp / "pw").write_text(PASSWORD + "\n")
    subprocess.run(
        [CSUD, "operator", "add", "glass", "--name", "Glass", "--communes", "metz",
         "--password-file", str(tmp / "pw"), "--config", str(config)],
        check=True, capture_output=True,
    )  # fmt: skip
    sim = Simulator(
        SimOptions(
            cameras=args.cameras, port=rtsp, bitrate=args.bitrate, width=args.width, height=args.height
        )
    )
    daemon: subprocess.Popen[bytes] | None = None
    browser: Any = None
    profile = tempfile.mkdtemp(prefix="csud-glass-chromium-")
    log = (tmp / "csud.log").open("wb")
    try:
        sim.start()
        sim.ready.wait(120)
        if sim.error is not None:
            raise sim.error
        daemon = subprocess.Popen([CSUD, "run", "--config", str(config)], stdout=log, stderr=log)
        wait_port(web)
        from selenium.webdriver.common.by import By

        browser = driver(profile)
        browser.set_page_load_timeout(30)
        browser.get(f"http://127.0.0.1:{web}/")
        deadline = time.monotonic() + 30
        while not browser.find_element(By.ID, "login").is_displayed():
            if time.monotonic() > deadline:
                raise TimeoutError("no login form")
            time.sleep(0.2)
        browser.find_element(By.NAME, "username").send_keys("glass")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        deadline = time.monotonic() + 60
        while True:
            widths = browser.execute_script(
                "return [...document.querySelectorAll('.tile video')].map(v => v.videoWidth)"
            )
            if len(widths) == args.cameras and all(widths):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the wall did not play: {widths}")
            time.sleep(0.5)
        time.sleep(args.warmup)
        browser.execute_script(RECORD)
        time.sleep(args.seconds)
        got = browser.execute_script(COLLECT)
        sent = dict(sim.sent_ns)
        latencies, unmatched = [], 0
        for _camera, media_time, presented_ms, _expected_ms in got["frames"]:
            rtp = round(media_time * 90_000) % RTP_WRAP
            if rtp not in sent:
                unmatched += 1
                continue
            latencies.append(presented_ms - sent[rtp] / 1e6)
        if not latencies:
            raise RuntimeError(f"no presented frame matched a sent one ({unmatched} presented)")
        result = {
            "cameras": args.cameras,
            "resolution": f"{args.width}x{args.height}",
            "bitrate": args.bitrate,
            "seconds": args.seconds,
            "frames_presented": len(got["frames"]),
            "frames_matched": len(latencies),
            "frames_unmatched": unmatched,
            "glass_to_glass_ms": {
                "min": round(min(latencies), 1),
                "p50": round(percentile(latencies, 0.5), 1),
                "p90": round(percentile(latencies, 0.9), 1),
                "p99": round(percentile(latencies, 0.99), 1),
                "max": round(max(latencies), 1),
                "mean": round(statistics.fmean(latencies), 1),
            },
            "player_buffer_ahead_ms_p50": round(1000 * percentile(got["lag"], 0.5), 1)
            if got["lag"]
            else None,
            "page_clock_minus_date_now_ms": [round(min(got["clock"]), 2), round(max(got["clock"]), 2)],
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if browser is not None:
            browser.quit()
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        sim.stop()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
