"""Camera simulator: N RTSP/H.264 cameras on 127.0.0.1 for tests, demos and benchmarks.

:mod:`csud.sim.clip` encodes (once, cached) the looped clip, :mod:`csud.sim.packets` turns it
into ready-to-patch RTP blobs, :mod:`csud.sim.rtsp` parses requests and checks credentials,
:mod:`csud.sim.options`, :mod:`csud.sim.session` and :mod:`csud.sim.protocol` are what the
asyncio server (:mod:`csud.sim.server`: ``serve``, ``SimServer``) is made of,
:mod:`csud.sim.faults` makes cameras misbehave, and :mod:`csud.sim.cli` is ``csud simulate``.
"""
