// magtkd_stream browser client (protocol v1): subscribes to a session and shows its events live;
// optionally publishes this browser's microphone as 16 kHz PCM16 (tag 0x01 frames).
// No build step and no external resources. The functions above the DOM section are pure, so they
// also run under Node (module.exports) where the project's tests check them against the protocol.
"use strict";

const PROTOCOL_VERSION = 1;
const TARGET_RATE = 16000;
const TAG_AUDIO = 0x01;
const FRAME_MS = 20;
const ACCEPTED_RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000];
const MODALITIES = ["text", "audio", "video"];
const SESSION_RE = /^[A-Za-z0-9_.-]{1,64}$/;

// ------------------------------------------------------------------ messages

// conversation (optional): join it as one participant, sharing one context with its other participants.
function publisherHello(token, session, sampleRate, speaker, conversation) {
  const msg = { type: "hello", version: PROTOCOL_VERSION, token: token, role: "publisher",
                session: session, sample_rate: sampleRate, video: false };
  if (speaker) msg.speaker = speaker;
  if (conversation) msg.conversation = conversation;
  return JSON.stringify(msg);
}

// With a conversation, every participant's events instead of one session's.
function subscriberHello(token, session, lastSeq, conversation) {
  const msg = { type: "hello", version: PROTOCOL_VERSION, token: token, role: "subscriber" };
  if (conversation) {
    msg.conversation = conversation;
  } else {
    msg.session = session;
    if (Number.isInteger(lastSeq) && lastSeq > 0) msg.last_seq = lastSeq;
  }
  return JSON.stringify(msg);
}

function endMessage() {
  return JSON.stringify({ type: "end", version: PROTOCOL_VERSION });
}

function checkInputs(url, token, session, conversation) {
  if (!/^wss?:\/\//.test(url)) return "the URL must start with ws:// or wss://";
  if (!token) return "a token is needed (one of the server's accepted tokens)";
  if (!SESSION_RE.test(session) && session !== "*") return "session: 1-64 characters from A-Z a-z 0-9 _ . - (or * to watch all)";
  if (conversation && !SESSION_RE.test(conversation)) return "conversation: 1-64 characters from A-Z a-z 0-9 _ . - (or empty)";
  return null;
}

// ------------------------------------------------------------------ audio

// Streaming box-filter downsampler: each output sample averages the input samples of its own
// window, which removes most of what would alias; windows carry across chunks so chunk
// boundaries do not click.
class Downsampler {
  constructor(inRate, outRate) {
    if (!(inRate >= outRate)) throw new Error("input rate " + inRate + " Hz is below " + outRate + " Hz");
    this.ratio = inRate / outRate;
    this.edge = this.ratio;
    this.consumed = 0;
    this.acc = 0;
    this.count = 0;
  }
  process(input) {
    const out = new Float32Array(Math.ceil((input.length + 1) / this.ratio) + 1);
    let n = 0;
    for (let i = 0; i < input.length; i++) {
      this.acc += input[i];
      this.count += 1;
      this.consumed += 1;
      if (this.consumed >= this.edge) {
        out[n++] = this.acc / this.count;
        this.acc = 0;
        this.count = 0;
        this.edge += this.ratio;
      }
    }
    return out.subarray(0, n);
  }
}

function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
  }
  return out;
}

// One tagged audio message: 0x01 then PCM16 little-endian.
function audioFrame(pcm16) {
  const buf = new ArrayBuffer(1 + 2 * pcm16.length);
  const view = new DataView(buf);
  view.setUint8(0, TAG_AUDIO);
  for (let i = 0; i < pcm16.length; i++) view.setInt16(1 + 2 * i, pcm16[i], true);
  return buf;
}

// Cuts PCM16 of any chunk sizes into frames of exactly frameSamples.
class Framer {
  constructor(frameSamples) {
    this.frameSamples = frameSamples;
    this.rest = new Int16Array(0);
  }
  push(pcm16) {
    const data = new Int16Array(this.rest.length + pcm16.length);
    data.set(this.rest);
    data.set(pcm16, this.rest.length);
    const frames = [];
    let i = 0;
    for (; i + this.frameSamples <= data.length; i += this.frameSamples) {
      frames.push(audioFrame(data.subarray(i, i + this.frameSamples)));
    }
    this.rest = data.slice(i);
    return frames;
  }
  flush() {
    const frames = this.rest.length ? [audioFrame(this.rest)] : [];
    this.rest = new Int16Array(0);
    return frames;
  }
}

// ------------------------------------------------------------------ events

function initialState() {
  return { status: "not connected", statusKind: "info", label: null, probs: {}, modalities: {}, speaker: null,
           text: "", utterance: null, interim: false, e2e: null, transcript: [], lastSeq: 0, sessions: {},
           utterances: 0, speakers: {} };
}

// Why a websocket closed, in words: 1006 is what a browser reports when no server answered or it went away.
function describeClose(code, reason, url) {
  if (code === 1006) return "cannot reach the server at " + url + " (it is not running, or the address is wrong)";
  if (code === 1000) return "the server closed the connection" + (reason ? ": " + reason : "");
  if (code === 1001) return "the server is shutting down" + (reason ? ": " + reason : "");
  return "connection closed (" + code + ")" + (reason ? ": " + reason : "");
}

// Folds one server message into the view state (returns a new object).
function foldEvent(state, msg) {
  const s = Object.assign({}, state);
  if (Number.isInteger(msg.seq)) s.lastSeq = Math.max(s.lastSeq, msg.seq);
  switch (msg.type) {
    case "welcome":
      s.statusKind = "info";
      s.status = msg.role === "subscriber"
        ? "subscribed to " + (msg.conversation ? "conversation " + msg.conversation : msg.session) +
          ": waiting for it to start (a session that has already ended " +
          "shows its events only while the server remembers it)"
        : "publishing " + msg.session + (msg.conversation ? " in conversation " + msg.conversation : "");
      break;
    case "session_start":
      s.sessions = Object.assign({}, s.sessions, { [msg.session]: "live" });
      s.status = "session " + msg.session + " is live";
      break;
    case "session_end":
      s.sessions = Object.assign({}, s.sessions, { [msg.session]: "ended (" + msg.reason + ")" });
      s.statusKind = "info";
      s.status = "session " + msg.session + " ended (" + msg.reason + ")" +
        (s.utterances === 0 ? " before any utterance was heard" : "");
      break;
    case "transcript":
      s.transcript = s.transcript.concat([{ session: msg.session, speaker: msg.speaker, text: msg.text,
                                            start: msg.start, end: msg.end, utterance: msg.utterance,
                                            label: null }]).slice(-50);
      break;
    case "emotion":
    case "emotion_interim":
      if (msg.type === "emotion_interim" && msg.utterance === s.utterance && !s.interim) break;
      s.label = msg.label;
      s.probs = msg.probs || {};
      s.modalities = msg.modalities || {};
      s.speaker = msg.speaker;
      s.text = msg.text;
      s.utterance = msg.utterance;
      s.interim = msg.type === "emotion_interim";
      s.e2e = msg.timing ? msg.timing.e2e_ms : null;
      if (msg.type === "emotion") {
        s.utterances += 1;
        if (msg.status !== "failed") {  // each speaker's latest emotion, for a conversation of several
          s.speakers = Object.assign({}, s.speakers, { [msg.speaker || msg.session]: msg.label });
        }
        // the history line of this utterance gets its emotion (or "failed")
        s.transcript = s.transcript.map((line) => line.session === msg.session && line.utterance === msg.utterance
          ? Object.assign({}, line, { label: msg.status === "failed" ? "failed" : msg.label }) : line);
      }
      if (msg.status === "failed") {
        s.statusKind = "error";
        s.status = "utterance " + (msg.utterance + 1) + " failed: " + msg.error;
      }
      break;
    case "gap":
      s.statusKind = "error";
      s.status = "missed events " + msg.from_seq + ".." + msg.to_seq + " of " + msg.session;
      break;
    case "dropped":
      s.statusKind = "error";
      s.status = "dropped by the server: " + msg.reason;
      break;
    case "error":
      s.statusKind = "error";
      s.status = "error " + msg.code + ": " + msg.message;
      break;
    default:
      break;
  }
  return s;
}

// "Ana · utterance 8 · answered 548 ms after the end of speech" (utterances counted from 1, as people count).
function whoLine(state) {
  if (state.utterance === null) return state.utterances === 0 ? "no utterance yet" : "";
  const parts = [state.speaker || "unknown speaker", "utterance " + (state.utterance + 1)];
  if (state.e2e !== null) parts.push("answered " + Math.round(state.e2e) + " ms after the end of speech");
  return parts.join(" · ");
}

if (typeof module !== "undefined" && module.exports) {
  module.exports = { PROTOCOL_VERSION, TARGET_RATE, TAG_AUDIO, publisherHello, subscriberHello, endMessage,
                     checkInputs, Downsampler, floatToPcm16, audioFrame, Framer, initialState, foldEvent,
                     describeClose, whoLine };
}

// ------------------------------------------------------------------ page

if (typeof document !== "undefined") {
  const $ = (id) => document.getElementById(id);
  let state = initialState();
  let sub = null;
  let mic = null;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render() {
    $("status").textContent = state.status;
    $("status").className = state.statusKind === "error" ? "error" : "";
    $("label").textContent = state.label ? state.label + (state.interim ? " (interim)" : "") : "-";
    $("label").dataset.label = state.label || "";
    $("who").textContent = whoLine(state);
    $("said").textContent = state.text || "";
    const bars = $("bars");
    bars.replaceChildren();
    for (const [name, p] of Object.entries(state.probs)) {
      const row = el("div", "bar");
      row.append(el("span", "name", name));
      const track = el("span", "track");
      const fill = el("span", "fill");
      fill.style.width = (100 * p).toFixed(1) + "%";
      fill.dataset.label = name;
      track.append(fill);
      row.append(track, el("span", "p", p.toFixed(2)));
      bars.append(row);
    }
    const mods = $("modalities");
    mods.replaceChildren();
    for (const m of MODALITIES) {
      const info = state.modalities[m];
      if (!info) continue;
      const top = info.present && info.probs ? " " + (info.probs[info.label] || 0).toFixed(2) : "";
      mods.append(el("li", info.present ? "present" : "absent", m + ": " + (info.present ? info.label + top : "absent")));
    }
    const people = $("speakers");
    people.replaceChildren();
    for (const [name, label] of Object.entries(state.speakers)) {
      const item = el("li", "", name + ": ");
      const tag = el("span", "tag", label);
      tag.dataset.label = label;
      item.append(tag);
      people.append(item);
    }
    const list = $("transcript");
    list.replaceChildren();
    for (const line of state.transcript.slice(-12).reverse()) {
      const item = el("li");
      item.append(el("span", "time", "[" + Number(line.start).toFixed(1) + "s] "),
                  el("b", "", (line.speaker || line.session) + ": "), el("span", "", line.text));
      if (line.label) {
        const tag = el("span", "tag", line.label);
        tag.dataset.label = line.label;
        item.append(" ", tag);
      }
      list.append(item);
    }
  }

  function inputs() {
    const v = { url: $("url").value.trim(), token: $("token").value.trim(), session: $("session").value.trim(),
                conversation: $("conversation").value.trim() };
    const problem = checkInputs(v.url, v.token, v.session, v.conversation);
    if (problem) throw new Error(problem);
    return v;
  }

  function show(msg) {
    state = foldEvent(state, msg);
    render();
  }

  function subscribe() {
    let v;
    try { v = inputs(); } catch (e) { show({ type: "error", code: "input", message: e.message }); return; }
    if (sub) sub.close();
    const target = v.conversation ? "conversation " + v.conversation : v.session;
    if ($("session").dataset.subscribed !== target) state = initialState();
    const resume = state.lastSeq;  // re-subscribing to the same session resumes after the last event seen
    $("session").dataset.subscribed = target;
    const ws = new WebSocket(v.url);
    sub = ws;
    ws.onopen = () => ws.send(subscriberHello(v.token, v.session, v.session === "*" ? 0 : resume, v.conversation));
    ws.onmessage = (e) => show(JSON.parse(e.data));
    ws.onclose = (e) => {
      if (sub === ws) { sub = null; show({ type: "error", code: "closed", message: describeClose(e.code, e.reason, v.url) }); }
    };
  }

  const TAP_SOURCE =
    "class PcmTap extends AudioWorkletProcessor {" +
    " process(inputs) { const ch = inputs[0] && inputs[0][0]; if (ch) this.port.postMessage(ch.slice(0)); return true; } }" +
    " registerProcessor('pcm-tap', PcmTap);";

  async function startMic() {
    const v = inputs();
    if (v.session === "*") throw new Error("pick one session id to publish to (not *)");
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
    const ctx = new AudioContext();
    const rate = ctx.sampleRate >= TARGET_RATE ? TARGET_RATE : ctx.sampleRate;
    if (!ACCEPTED_RATES.includes(rate)) throw new Error("the browser's audio rate " + ctx.sampleRate + " Hz cannot be sent");
    const down = rate === ctx.sampleRate ? null : new Downsampler(ctx.sampleRate, rate);
    const framer = new Framer(Math.round(rate * FRAME_MS / 1000));
    const pub = { ws: null, ctx: ctx, stream: stream, live: false, nodes: [] };
    const onSamples = (samples) => {
      if (!pub.live) return;
      for (const frame of framer.push(floatToPcm16(down ? down.process(samples) : samples))) pub.ws.send(frame);
    };
    const source = ctx.createMediaStreamSource(stream);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    mute.connect(ctx.destination);
    if (ctx.audioWorklet) {
      const url = URL.createObjectURL(new Blob([TAP_SOURCE], { type: "application/javascript" }));
      await ctx.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      const tap = new AudioWorkletNode(ctx, "pcm-tap");
      tap.port.onmessage = (e) => onSamples(e.data);
      source.connect(tap).connect(mute);
      pub.nodes.push(tap);
    } else {
      const proc = ctx.createScriptProcessor(4096, 1, 1);
      proc.onaudioprocess = (e) => onSamples(e.inputBuffer.getChannelData(0));
      source.connect(proc).connect(mute);
      pub.nodes.push(proc);
    }
    pub.nodes.push(source, mute);
    // The socket is opened after the last await, so no event can fire before its handlers are set.
    const ws = new WebSocket(v.url);
    ws.binaryType = "arraybuffer";
    pub.ws = ws;
    pub.flush = () => { for (const frame of framer.flush()) ws.send(frame); };
    ws.onopen = () => ws.send(publisherHello(v.token, v.session, rate, $("speaker").value.trim(), v.conversation));
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "welcome") { pub.live = true; $("mic").textContent = "Stop microphone"; }
      if (msg.type === "ended") ws.close();
      if (msg.type === "error" || msg.type === "welcome") show(msg);
    };
    ws.onclose = () => stopMic(false);
    return pub;
  }

  function stopMic(sendEnd) {
    if (!mic) return;
    const m = mic;
    mic = null;
    if (sendEnd && m.ws.readyState === WebSocket.OPEN && m.live) {
      m.flush();
      m.ws.send(endMessage());  // the server answers "ended" and closes once the session is flushed
    } else if (m.ws.readyState === WebSocket.OPEN) {
      m.ws.close();
    }
    m.live = false;
    for (const node of m.nodes) node.disconnect();
    for (const track of m.stream.getTracks()) track.stop();
    m.ctx.close();
    $("mic").textContent = "Publish microphone";
  }

  async function toggleMic() {
    if (mic) { stopMic(true); return; }
    try {
      if (!sub) subscribe();
      mic = await startMic();
    } catch (e) {
      show({ type: "error", code: "microphone", message: e.message });
    }
  }

  window.addEventListener("DOMContentLoaded", () => {
    const host = location.hostname || "127.0.0.1";
    $("url").value = (location.protocol === "https:" ? "wss://" : "ws://") + host + ":8765/";
    const params = new URLSearchParams(location.search);
    for (const key of ["url", "token", "session", "conversation"]) if (params.get(key)) $(key).value = params.get(key);
    $("subscribe").addEventListener("click", subscribe);
    $("mic").addEventListener("click", toggleMic);
    render();
  });
}
