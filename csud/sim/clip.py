"""The simulator's video: one short H.264 clip, encoded once with libx264 and cached on disk.

The clip is a moving test pattern (scrolling gradient, moving bars, per-frame noise) so that
the encoder has real work to do and the stream's bitrate is the requested one, not a trickle
of skip blocks. It is a whole number of GOPs, every GOP opens on an IDR, and there are no
B-frames, so looping it gives a valid endless stream (RTP timestamps are continued by the
server, not by the clip).

Invariants of a :class:`Clip`:
- ``frames[0]`` is a keyframe, and a frame is a keyframe exactly when its index is a multiple
  of ``params.gop_frames``;
- with in-band parameter sets, each keyframe's NAL units start with SPS then PPS; without
  them, no frame holds an SPS or PPS (the SDP's sprop-parameter-sets carry them);
- access unit delimiters are not part of the frames (they only delimit frames in the cache).

Encoding 1280x720 takes a second or two, and tests start simulators many times, so the
encoded Annex B stream is cached under ``$XDG_CACHE_HOME/csud-sim/`` (``~/.cache/csud-sim/``),
keyed by a hash of every parameter that changes the bytes, and written atomically (temp
file then rename): concurrent test processes may race to write it, never to read half of it.
``CSUD_SIM_CACHE_DIR`` overrides the directory; an unwritable cache only costs time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from csud.media.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS, NAL_TYPE_MASK, split_annexb

CLIP_FORMAT_VERSION = 1  # bump when the pattern or the encoder settings change the bytes
CACHE_DIR_ENV = "CSUD_SIM_CACHE_DIR"
# Rate control of a few seconds of video overshoots or undershoots a little; the encoder is
# re-run with a corrected target until the mean bitrate is this close to the request.
BITRATE_TOLERANCE = 0.05
MAX_ENCODE_ATTEMPTS = 3
NOISE_AMPLITUDE = 8  # luma noise, 0..N per pixel per frame: texture that costs bits


@dataclass(frozen=True, slots=True)
class ClipParams:
    """Everything that changes the encoded bytes (and so the cache key)."""

    width: int = 1280
    height: int = 720
    fps: int = 25
    bitrate: int = 4_000_000  # bit/s, mean over the clip
    gop_seconds: float = 1.0
    min_clip_seconds: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"bad clip size {self.width}x{self.height}: even, at least 16x16")
        if not 1 <= self.fps <= 240:
            raise ValueError(f"bad fps {self.fps}")
        if self.bitrate < 10_000:
            raise ValueError(f"bitrate {self.bitrate} too low")
        if self.gop_seconds <= 0:
            raise ValueError(f"bad gop_seconds {self.gop_seconds}")

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_seconds * self.fps))

    @property
    def n_frames(self) -> int:
        """A whole number of GOPs, at least two and at least ``min_clip_seconds``."""
        gops = max(2, math.ceil(self.min_clip_seconds * self.fps / self.gop_frames))
        return gops * self.gop_frames

    def cache_key(self) -> str:
        import av  # the encoder version changes the bytes

        fields = {
            "v": CLIP_FORMAT_VERSION,
            "av": av.__version__,
            "w": self.width,
            "h": self.height,
            "fps": self.fps,
            "br": self.bitrate,
            "gop": self.gop_frames,
            "n": self.n_frames,
            "seed": self.seed,
        }
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class ClipFrame:
    """One access unit: NAL units without start codes, in decoding order."""

    nals: tuple[bytes, ...]
    keyframe: bool

    @property
    def size(self) -> int:
        return sum(len(nal) for nal in self.nals)


@dataclass(frozen=True, slots=True)
class Clip:
    params: ClipParams
    frames: tuple[ClipFrame, ...]
    sps: bytes
    pps: bytes
    inband_parameter_sets: bool = True

    @property
    def duration_seconds(self) -> float:
        return len(self.frames) / self.params.fps

    @property
    def mean_bitrate(self) -> float:
        """Bit/s of NAL unit payload (what RTP carries), over the clip."""
        return sum(frame.size for frame in self.frames) * 8 / self.duration_seconds

    @property
    def profile_level_id(self) -> str:
        """The SDP's profile-level-id: profile_idc, constraint flags, level_idc of the SPS."""
        return self.sps[1:4].hex().upper()

    def without_parameter_sets(self) -> Clip:
        frames = tuple(
            ClipFrame(tuple(n for n in f.nals if n[0] & NAL_TYPE_MASK not in (NAL_SPS, NAL_PPS)), f.keyframe)
            for f in self.frames
        )
        return replace(self, frames=frames, inband_parameter_sets=False)

    def annexb(self) -> bytes:
        """The clip as an Annex B elementary stream (parameter sets in-band or not, as the frames)."""
        return b"".join(b"\x00\x00\x00\x01" + nal for frame in self.frames for nal in frame.nals)


def _pattern_frames(params: ClipParams) -> list[np.ndarray]:
    """yuv420p frames as (height * 3 / 2, width) uint8 arrays: gradient, bars, noise, a colour wash."""
    w, h = params.width, params.height
    rng = np.random.default_rng(params.seed)
    x = np.arange(w, dtype=np.int32)
    y = np.arange(h, dtype=np.int32)[:, None]
    bar_width = max(8, w // 20)
    chroma_x = np.arange(w // 2, dtype=np.int32)
    frames = []
    for i in range(params.n_frames):
        luma = ((x[None, :] + y // 2 + 6 * i) % 220 + 16).astype(np.uint8)
        bars = ((x - 11 * i) // bar_width) % 5 == 0
        luma[:, bars] = 235
        # A block that moves on its own diagonal, so motion is not one global pan.
        bx, by = (17 * i) % max(1, w - w // 8), (9 * i) % max(1, h - h // 8)
        luma[by : by + h // 8, bx : bx + w // 8] = 40
        luma += rng.integers(0, NOISE_AMPLITUDE + 1, size=(h, w), dtype=np.uint8)
        u = ((chroma_x + 3 * i) % 128 + 64).astype(np.uint8)[None, :].repeat(h // 2, 0)
        v = ((chroma_x[::-1] + 2 * i) % 128 + 64).astype(np.uint8)[None, :].repeat(h // 2, 0)
        # PyAV's yuv420p array: the three planes back to back, as (height * 3 / 2, width).
        frames.append(np.concatenate([luma.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w))
    return frames


def _encode_once(params: ClipParams, frames: list[np.ndarray], target_bitrate: int) -> bytes:
    import av

    codec = av.CodecContext.create("libx264", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width = params.width
    codec.height = params.height
    codec.pix_fmt = "yuv420p"
    codec.time_base = Fraction(1, params.fps)
    codec.framerate = Fraction(params.fps, 1)
    codec.bit_rate = target_bitrate
    kbps = max(1, target_bitrate // 1000)
    gop = params.gop_frames
    x264_params = ":".join(
        [
            f"keyint={gop}",
            f"min-keyint={gop}",
            "scenecut=0",
            "open-gop=0",
            "bframes=0",
            "repeat-headers=1",  # SPS/PPS before every IDR
            "aud=1",  # frame delimiters for the cache; stripped from the frames
            f"vbv-maxrate={kbps}",
            f"vbv-bufsize={kbps}",
            "nal-hrd=cbr",  # filler NAL units when the picture is too easy
            "force-cfr=1",
        ]
    )
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": x264_params}
    out = bytearray()
    for index, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(array, format="yuv420p")
        frame.pts = index
        for packet in codec.encode(frame):
            out += bytes(packet)
    for packet in codec.encode(None):
        out += bytes(packet)
    return bytes(out)


def encode_annexb(params: ClipParams) -> bytes:
    """Encode the pattern; the Annex B stream has an AUD before every frame and SPS/PPS before IDRs."""
    frames = _pattern_frames(params)
    target = params.bitrate
    data = b""
    for _ in range(MAX_ENCODE_ATTEMPTS):
        data = _encode_once(params, frames, target)
        ratio = len(data) * 8 * params.fps / params.n_frames / params.bitrate
        if abs(ratio - 1) <= BITRATE_TOLERANCE:
            break
        target = max(10_000, round(target / ratio))
    return data


def parse_annexb(params: ClipParams, data: bytes) -> Clip:
    """Split an AUD-delimited Annex B stream into frames; checks the invariants in the module doc."""
    frames: list[ClipFrame] = []
    current: list[bytes] | None = None
    for nal in split_annexb(data):
        if not nal:
            continue
        if nal[0] & NAL_TYPE_MASK == NAL_AUD:
            if current is not None:
                frames.append(_make_frame(current))
            current = []
        elif current is None:
            raise ValueError("clip does not start with an access unit delimiter")
        else:
            current.append(nal)
    if current is not None:
        frames.append(_make_frame(current))
    if len(frames) != params.n_frames:
        raise ValueError(f"clip has {len(frames)} frames, expected {params.n_frames}")
    sps = pps = b""
    for index, frame in enumerate(frames):
        if frame.keyframe != (index % params.gop_frames == 0):
            raise ValueError(f"frame {index}: keyframe={frame.keyframe} breaks the GOP structure")
        if frame.keyframe:
            types = [n[0] & NAL_TYPE_MASK for n in frame.nals]
            if types[:2] != [NAL_SPS, NAL_PPS]:
                raise ValueError(f"keyframe {index} does not start with SPS, PPS (NAL types {types})")
            sps, pps = sps or frame.nals[0], pps or frame.nals[1]
    return Clip(params=params, frames=tuple(frames), sps=sps, pps=pps)


def _make_frame(nals: list[bytes]) -> ClipFrame:
    keyframe = any(n[0] & NAL_TYPE_MASK == NAL_IDR for n in nals)
    return ClipFrame(tuple(nals), keyframe)


def default_cache_dir() -> Path:
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "csud-sim"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_clip(
    params: ClipParams,
    *,
    inband_parameter_sets: bool = True,
    cache_dir: Path | None = None,
    use_cache: bool = True,
) -> Clip:
    """The clip for ``params``: from the cache when there, else encoded (seconds) and cached.

    Blocking (CPU-bound); from asyncio code, run it in a thread.
    """
    path = (cache_dir or default_cache_dir()) / f"{params.cache_key()}.h264"
    clip: Clip | None = None
    if use_cache:
        try:
            clip = parse_annexb(params, path.read_bytes())
        except (OSError, ValueError):
            clip = None  # absent, unreadable or stale: encode again
    if clip is None:
        data = encode_annexb(params)
        clip = parse_annexb(params, data)
        if use_cache:
            with contextlib.suppress(OSError):
                _write_atomic(path, data)
    return clip if inband_parameter_sets else clip.without_parameter_sets()
