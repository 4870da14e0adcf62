"""GStreamer's RTSP server as a camera, for csud's interop tests.

Runs under Debian's /usr/bin/python3 with the system's gi (python3-gi, gir1.2-gst-rtsp-server-1.0),
never under the project's virtualenv. One mount per case, from a JSON spec given with --spec:

    {"port": 0,                      # 0: any free port (the bound one is printed)
     "session_timeout": 4,           # seconds; 0 keeps GStreamer's default (60)
     "auth": {"method": "digest", "user": "csud", "password": "..."},   # or null
     "mounts": [{"path": "/cam", "codec": "h264", "width": 1280, "height": 720, "fps": 25,
                 "num_buffers": 250, "key_int": 25, "config_interval": 0, "sdp_sprop": true,
                 "bframes": 0}]}          # > 0: x264enc with that many B-frames (profile main)

``config_interval`` is rtph264pay/rtph265pay's: 0 sends parameter sets in the SDP only (x264enc
is held to stream-format=avc with repeat-headers=0: SPS/PPS only in codec_data), -1 inserts
them before every IDR. ``sdp_sprop: false`` removes the sprop-* parameters from the SDP, so
that the parameter sets are only in-band.

Prints "READY <port>" on stdout once listening, then one line per event ("REQUEST <method>
<monotonic>", "CLIENT <monotonic>", "SESSION_REMOVED <monotonic>"); exits 0 on SIGTERM/SIGINT.
"""

import argparse
import json
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer, GstSdp  # noqa: E402

Gst.init(None)  # before any subclass of a GStreamer type is registered

ROLE = "user"
SPROP_PREFIXES = ("sprop-parameter-sets=", "sprop-vps=", "sprop-sps=", "sprop-pps=")


def emit(*words):
    print(*words, flush=True)


def launch_line(mount):
    codec = mount.get("codec", "h264")
    width, height = mount.get("width", 1280), mount.get("height", 720)
    fps = mount.get("fps", 25)
    key_int = mount.get("key_int", fps)
    config_interval = mount.get("config_interval", -1)
    bitrate = mount.get("bitrate_kbps", 2000)
    pt = mount.get("pt", 96)
    source = "videotestsrc is-live=true pattern=ball"
    if mount.get("num_buffers"):
        source += f" num-buffers={mount['num_buffers']}"
    raw = f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1"
    bframes = mount.get("bframes", 0)
    if codec == "h264" and bframes:
        # B-frames only without tune=zerolatency, and with a profile that has them (main).
        encoder = (
            f"x264enc speed-preset=ultrafast bframes={bframes} b-adapt=false "
            f"key-int-max={key_int} bitrate={bitrate} option-string=repeat-headers=0 "
            "! video/x-h264,profile=main,stream-format=avc,alignment=au"
        )
    elif codec == "h264":
        encoder = (
            "x264enc tune=zerolatency speed-preset=ultrafast bframes=0 "
            f"key-int-max={key_int} bitrate={bitrate} option-string=repeat-headers=0 "
            "! video/x-h264,stream-format=avc,alignment=au"
        )
    elif codec == "h265":
        repeat = 1 if config_interval else 0
        encoder = (
            f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} bitrate={bitrate} "
            f'option-string="bframes=0:repeat-headers={repeat}"'
        )
    else:
        raise SystemExit(f"unknown codec {codec!r}")
    payloader = f"rtp{codec}pay name=pay0 pt={pt} config-interval={config_interval}"
    return f"( {source} ! {raw} ! {encoder} ! {payloader} )"


class Media(GstRtspServer.RTSPMedia):
    """A media whose SDP can lose its sprop-* parameters (parameter sets only in-band)."""

    strip_sprop = False

    def do_setup_sdp(self, sdp, info):
        if not GstRtspServer.RTSPMedia.do_setup_sdp(self, sdp, info):
            return False
        if self.strip_sprop:
            for i in range(sdp.medias_len()):
                media = sdp.get_media(i)
                for j in range(media.attributes_len()):
                    attr = media.get_attribute(j)
                    if attr.key != "fmtp":
                        continue
                    pt, _, params = attr.value.partition(" ")
                    kept = [p for p in params.split(";") if not p.strip().startswith(SPROP_PREFIXES)]
                    media.replace_attribute(j, attr_with(attr.key, pt + " " + ";".join(kept)))
        return True


class StrippedMedia(Media):
    strip_sprop = True


def attr_with(key, value):
    attr = GstSdp.SDPAttribute()
    attr.set(key, value)
    return attr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON spec (see the module doc)")
    spec = json.loads(parser.parse_args().spec)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(spec.get("port", 0)))
    timeout = spec.get("session_timeout", 0)

    auth_spec = spec.get("auth")
    if auth_spec:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken.new()
        token.set_string("media.factory.role", ROLE)
        if auth_spec["method"] == "digest":
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(auth_spec["user"], auth_spec["password"], token)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(auth_spec["user"], auth_spec["password"]), token)
        server.set_auth(auth)

    mounts = server.get_mount_points()
    for mount in spec["mounts"]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(mount))
        factory.set_shared(False)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
        if not mount.get("sdp_sprop", True):
            factory.set_media_gtype(StrippedMedia)
        if auth_spec:
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    f"{ROLE}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )
            )
        mounts.add_factory(mount["path"], factory)

    def on_request(method):
        def handler(_client, _context):
            emit("REQUEST", method, f"{time.monotonic():.3f}")

        return handler

    def on_session(_client, session):
        if timeout:
            session.set_timeout(timeout)

    def on_client(_server, client):
        emit("CLIENT", f"{time.monotonic():.3f}")
        client.connect("new-session", on_session)
        for signal_name, method in (
            ("options-request", "OPTIONS"),
            ("describe-request", "DESCRIBE"),
            ("setup-request", "SETUP"),
            ("play-request", "PLAY"),
            ("get-parameter-request", "GET_PARAMETER"),
            ("set-parameter-request", "SET_PARAMETER"),
            ("teardown-request", "TEARDOWN"),
        ):
            client.connect(signal_name, on_request(method))

    server.connect("client-connected", on_client)
    pool = server.get_session_pool()
    pool.connect(
        "session-removed", lambda _pool, _session: emit("SESSION_REMOVED", f"{time.monotonic():.3f}")
    )

    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{spec.get('port', 0)}")

    def cleanup():
        pool.cleanup()  # expires sessions whose timeout passed
        return True

    GLib.timeout_add(250, cleanup)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    emit("READY", server.get_bound_port())
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
