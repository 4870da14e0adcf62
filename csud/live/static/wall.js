// The wall: login, the operator's cameras, Media Source Extensions playback from the WebSocket
// of each camera (an init segment, then one fMP4 fragment per frame), reconnection on its own.
// No build step, no dependency: this file is served as is by csud (csud/live/web.py).
"use strict";

const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 15000;
const LIVE_EDGE_MAX_S = 1.5;   // further behind than this: jump to the live edge
const CATCH_UP_ABOVE_S = 0.25;  // further behind than this: play 10 % faster until within...
const CATCH_UP_UNTIL_S = 0.1;   // ...this (a new viewer starts at the last keyframe, up to a GOP back)
const CATCH_UP_RATE = 1.1;
const KEEP_BUFFER_S = 20;       // older video is removed from the buffer
const REORDER_MAX_S = 1.0;      // cap of the B-frame hold-back (a clock step is not a B-frame)
const $ = (id) => document.getElementById(id);

// ISO BMFF boxes, enough to read a fragment's presentation time (csud/live/fmp4.py writes them).
function boxes(bytes, start, end) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = {};
  for (let pos = start; pos + 8 <= end;) {
    const size = dv.getUint32(pos);
    if (size < 8 || pos + size > end) break;
    out[String.fromCharCode(...bytes.subarray(pos + 4, pos + 8))] = [pos, pos + size];
    pos += size;
  }
  return out;
}

function child(bytes, range, ...path) {  // the box at path inside range (a box), or null
  for (const kind of path) {
    range = range && boxes(bytes, range[0] + 8, range[1])[kind];
  }
  return range || null;
}

// The media timescale of an init segment (moov/trak/mdia/mdhd), or 0.
function timescaleOf(init) {
  const mdhd = child(init, boxes(init, 0, init.length).moov, "trak", "mdia", "mdhd");
  if (!mdhd) return 0;
  const dv = new DataView(init.buffer, init.byteOffset, init.byteLength);
  return dv.getUint32(mdhd[0] + (init[mdhd[0] + 8] === 1 ? 28 : 20));
}

// [pts, end] in timescale units of a fragment's first sample (tfdt + composition offset, + its
// duration), or null.
function timesOf(frag) {
  const traf = child(frag, boxes(frag, 0, frag.length).moof, "traf");
  const tfdt = child(frag, traf, "tfdt"), trun = child(frag, traf, "trun");
  if (!tfdt || !trun) return null;
  const dv = new DataView(frag.buffer, frag.byteOffset, frag.byteLength);
  const dts = frag[tfdt[0] + 8] === 1 ? Number(dv.getBigUint64(tfdt[0] + 12)) : dv.getUint32(tfdt[0] + 12);
  const version = frag[trun[0] + 8], flags = dv.getUint32(trun[0] + 8) & 0xffffff;
  let pos = trun[0] + 16 + (flags & 0x1 ? 4 : 0) + (flags & 0x4 ? 4 : 0);
  let duration = 0, offset = 0;
  if (flags & 0x100) { duration = dv.getUint32(pos); pos += 4; }
  if (flags & 0x200) pos += 4;
  if (flags & 0x400) pos += 4;
  if (flags & 0x800) offset = version === 1 ? dv.getInt32(pos) : dv.getUint32(pos);
  return [dts + offset, dts + offset + duration];
}

class Tile {
  constructor(cam) {
    this.cam = cam;
    this.el = document.createElement("div");
    this.el.className = "tile" + (cam.up ? " up" : "");
    this.el.dataset.camera = cam.id;
    this.video = document.createElement("video");
    this.video.muted = true;
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.message = document.createElement("div");
    this.message.className = "message";
    const label = document.createElement("div");
    label.className = "label";
    this.dot = document.createElement("span");
    this.dot.className = "dot";
    const name = document.createElement("span");
    name.textContent = cam.name;
    const commune = document.createElement("span");
    commune.className = "commune";
    commune.textContent = cam.commune;
    this.note = document.createElement("span");
    this.note.className = "note";
    label.append(this.dot, name, commune, this.note);
    this.el.append(this.video, this.message, label);
    this.el.addEventListener("click", () => this.el.classList.toggle("big"));
    this.delay = RECONNECT_MIN_MS;
    this.stopped = false;
    this.connect();
  }

  say(text) { this.message.textContent = text; }

  setUp(up) { this.el.classList.toggle("up", up); }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/live/${encodeURIComponent(this.cam.id)}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.pendingInit = null;
    this.queue = [];
    this.codec = null;
    // B-frames arrive after frames presented later: how far before the buffered end a frame may
    // still arrive (seconds). The live-edge targets keep that much more behind, or such frames
    // would come too late to be shown (Chromium drops them). 0 without B-frames.
    this.reorder = 0;
    this.newestEnd = null;
    ws.onopen = () => { this.delay = RECONNECT_MIN_MS; };
    ws.onmessage = (msg) => this.onMessage(msg.data);
    ws.onclose = (ev) => {
      if (this.stopped) return;
      if (ev.code === 4403) {  // a right was withdrawn, the session ended: no retry
        this.say("Vision directe interrompue : " + (ev.reason || "droit retiré"));
        this.setUp(false);
        if (ev.reason === "session_expired" || ev.reason === "password_changed") showLogin();
        return;
      }
      this.say("Connexion perdue, nouvelle tentative…");
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
    };
  }

  onMessage(data) {
    if (typeof data === "string") {
      const ev = JSON.parse(data);
      if (ev.type === "init") this.startCodec(ev.codec);
      else if (ev.type === "camera") { this.setUp(ev.up); this.say(ev.up ? "" : "Caméra hors service"); }
      else if (ev.type === "skipped") this.note.textContent = `${ev.frames} images sautées (réseau lent)`;
      else if (ev.type === "closed") this.say("Vision directe interrompue : " + ev.reason);
      return;
    }
    const bytes = new Uint8Array(data);
    const isInit = bytes.length > 8 && String.fromCharCode(...bytes.subarray(4, 8)) === "ftyp";
    if (isInit) {  // appended once its "init" event names the codec
      this.pendingInit = bytes;
      this.timescale = timescaleOf(bytes);
      return;
    }
    this.learnReorder(bytes);
    this.append(bytes);
  }

  startCodec(codec) {
    const mime = `video/mp4; codecs="${codec}"`;
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
      const hevc = codec.startsWith("hvc1") || codec.startsWith("hev1");
      this.say(hevc
        ? "Flux H.265 : ce navigateur ne sait pas le lire (pas de décodeur H.265). La caméra est enregistrée normalement."
        : `Format ${codec} non pris en charge par ce navigateur.`);
      this.unsupported = true;
      return;
    }
    this.unsupported = false;
    const init = this.pendingInit;
    this.pendingInit = null;
    if (this.sb && this.codec === codec) { this.append(init); return; }  // same codec: new parameters
    this.codec = codec;
    this.queue = [init];
    const ms = new MediaSource();
    this.ms = ms;
    this.sb = null;
    if (this.video.src) URL.revokeObjectURL(this.video.src);
    this.video.src = URL.createObjectURL(ms);
    ms.addEventListener("sourceopen", () => {
      if (this.ms !== ms) return;
      this.sb = ms.addSourceBuffer(mime);
      this.sb.mode = "segments";
      this.sb.addEventListener("updateend", () => this.pump());
      this.pump();
    }, { once: true });
  }

  learnReorder(frag) {
    const times = this.timescale ? timesOf(frag) : null;
    if (!times) return;
    const [pts, end] = times.map((t) => t / this.timescale);
    if (this.newestEnd !== null) {
      this.reorder = Math.min(REORDER_MAX_S, Math.max(this.reorder, this.newestEnd - pts));
    }
    this.newestEnd = this.newestEnd === null ? end : Math.max(this.newestEnd, end);
  }

  append(bytes) {
    if (this.unsupported || !bytes) return;
    this.queue.push(bytes);
    // Far behind (a tab asleep): dropping fragments would leave frames whose references are gone,
    // so start again from a new connection, at the latest keyframe.
    if (this.queue.length > 300) { this.queue = []; this.ws.close(); return; }
    this.pump();
  }

  pump() {
    const sb = this.sb;
    if (!sb || sb.updating || this.ms.readyState !== "open") return;
    const v = this.video;
    if (v.buffered.length) {
      const start = v.buffered.start(0), end = v.buffered.end(v.buffered.length - 1);
      if (end - start > KEEP_BUFFER_S * 1.5 && v.currentTime - start > KEEP_BUFFER_S) {
        sb.remove(start, v.currentTime - KEEP_BUFFER_S / 2);
        return;
      }
      const behind = end - this.reorder - v.currentTime;  // behind the newest frame sure to be shown
      if (v.currentTime < start || behind > LIVE_EDGE_MAX_S) {
        v.currentTime = Math.max(start, end - this.reorder - 0.3);
      }
      else if (behind > CATCH_UP_ABOVE_S) v.playbackRate = CATCH_UP_RATE;
      else if (behind < CATCH_UP_UNTIL_S) v.playbackRate = 1;
      if (v.paused) v.play().catch(() => {});
      if (this.message.textContent && v.readyState >= 2) this.say("");
    }
    const next = this.queue.shift();
    if (!next) return;
    try {
      sb.appendBuffer(next);
    } catch (e) {  // QuotaExceeded or a decode error: start over from a fresh connection
      this.ws.close();
    }
  }

  stop() { this.stopped = true; if (this.ws) this.ws.close(); }
}

let tiles = [];

function showLogin(error) {
  tiles.forEach((t) => t.stop());
  tiles = [];
  $("wall").replaceChildren();
  $("bar").hidden = true;
  $("empty").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
}

async function showWall() {
  const res = await fetch("/api/cameras", { credentials: "same-origin" });
  if (res.status === 401) { showLogin(); return; }
  const cams = await res.json();
  $("login").hidden = true;
  $("bar").hidden = false;
  $("empty").hidden = cams.length > 0;
  tiles = cams.map((cam) => new Tile(cam));
  $("wall").replaceChildren(...tiles.map((t) => t.el));
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = new URLSearchParams(new FormData($("login")));
  const res = await fetch("/login", { method: "POST", body, credentials: "same-origin" });
  if (res.ok) { $("login").reset(); showWall(); return; }
  showLogin(res.status === 429 ? "Trop de tentatives : patientez une minute." : "Identifiant ou mot de passe incorrect.");
});

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") document.querySelectorAll(".tile.big").forEach((t) => t.classList.remove("big"));
});

setInterval(() => { $("clock").textContent = new Date().toLocaleTimeString("fr-FR"); }, 1000);
// Camera up/down for tiles whose stream is not open (refreshes the list's "up").
setInterval(async () => {
  if ($("bar").hidden) return;
  const res = await fetch("/api/cameras", { credentials: "same-origin" });
  if (res.status === 401) { showLogin(); return; }
  const byId = new Map((await res.json()).map((c) => [c.id, c]));
  tiles.forEach((t) => { const c = byId.get(t.cam.id); if (c) t.setUp(c.up); });
}, 10000);
showWall();
