"""The browser tests' fixtures: GStreamer's RTSP server as a camera (tests/interop/conftest.py)."""

from tests.interop.conftest import gst_server, gstreamer

__all__ = ["gst_server", "gstreamer"]
