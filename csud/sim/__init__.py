"""Camera simulator: N RTSP/H.264 cameras on 127.0.0.1 for tests, demos and benchmarks.

:mod:`csud.sim.clip` encodes (once, cached) the looped clip, :mod:`csud.sim.packets` turns it
into ready-to-patch RTP blobs, :mod:`csud.sim.rtsp` parses requests and checks credentials,
and :mod:`csud.sim.server` is the asyncio server (``serve``, ``SimServer``, ``main``).
"""
