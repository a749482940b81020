// The conversation page: microphone -> Opus (WebCodecs) -> Ogg -> websocket -> server, and back:
// websocket -> Ogg pages -> Opus packets -> AudioDecoder -> scheduled playback, text shown live.
import { OggOpusReader, OggOpusWriter } from "./ogg.js";

const SAMPLE_RATE = 24000;
const OPUS_FRAME = 480; // 20 ms packets, as the official web client records
const PACKETS_PER_PAGE = 2;
const PLAYBACK_LEAD_S = 0.08; // wait for 80 ms of audio before starting, as the official client
const KIND = { handshake: 0, audio: 1, text: 2, control: 3, metadata: 4, error: 5 };

// Everything the page did, for people (the stats line) and for the browser test.
const stats = (window.duplexStats = {
  state: "idle",
  pagesSent: 0,
  audioMessages: 0,
  samplesDecoded: 0,
  samplesScheduled: 0,
  replySeconds: 0,
  replyPeak: 0,
  text: "",
  error: null,
  droppedFrames: 0, // user frames the server said it dropped (it was overloaded, or we sent too fast)
});

const $ = (id) => document.getElementById(id);
let session = null;

function showWarning(text) {
  $("warning").textContent = text;
  $("warning").hidden = !text;
}

function setState(state, detail = "") {
  stats.state = state;
  $("status").textContent = detail ? `${state}: ${detail}` : state;
  $("toggle").textContent = state === "idle" || state === "closed" || state === "error" ? "Start" : "Stop";
}

function chatUrl() {
  const page = new URLSearchParams(location.search);
  const params = new URLSearchParams({
    pad_mult: "0",
    repetition_penalty_context: "64",
    repetition_penalty: "1.0",
    text_seed: String(Math.floor(Math.random() * 1e6)),
    audio_seed: String(Math.floor(Math.random() * 1e6)),
  });
  const token = page.get("auth_token");
  if (token) params.set("auth_token", token);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/chat?${params}`;
}

class Session {
  async start() {
    if (!("AudioEncoder" in window) || !("AudioDecoder" in window)) {
      throw new Error("this browser has no WebCodecs audio support");
    }
    this.context = new AudioContext({ sampleRate: SAMPLE_RATE });
    await this.context.resume();
    this.microphone = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    await this.context.audioWorklet.addModule("capture-worklet.js");

    this.writer = new OggOpusWriter(SAMPLE_RATE);
    this.reader = new OggOpusReader();
    this.pendingPackets = [];
    this.captured = new Float32Array(0);
    this.captureTime = 0;
    this.playAt = 0;
    this.decodeTime = 0;

    this.encoder = new AudioEncoder({
      output: (chunk) => this.onEncoded(chunk),
      error: (e) => this.fail(`encoder: ${e.message}`),
    });
    this.encoder.configure({
      codec: "opus",
      sampleRate: SAMPLE_RATE,
      numberOfChannels: 1,
      bitrate: 32000,
      opus: { frameDuration: (OPUS_FRAME / SAMPLE_RATE) * 1e6, application: "audio", complexity: 0 },
    });
    this.decoder = new AudioDecoder({
      output: (data) => this.play(data),
      error: (e) => this.fail(`decoder: ${e.message}`),
    });
    this.decoder.configure({ codec: "opus", sampleRate: SAMPLE_RATE, numberOfChannels: 1 });

    this.socket = new WebSocket(chatUrl());
    this.socket.binaryType = "arraybuffer";
    this.socket.onmessage = (event) => this.onMessage(new Uint8Array(event.data));
    this.socket.onclose = (event) => {
      if (stats.state !== "error") setState("closed", event.reason || `code ${event.code}`);
      this.stopAudio();
    };
    this.socket.onerror = () => this.fail("websocket error");
    setState("connecting");
  }

  startCapture() {
    const source = this.context.createMediaStreamSource(this.microphone);
    this.capture = new AudioWorkletNode(this.context, "duplex-capture");
    this.capture.port.onmessage = (event) => this.onCaptured(event.data);
    source.connect(this.capture);
  }

  onCaptured(samples) {
    const merged = new Float32Array(this.captured.length + samples.length);
    merged.set(this.captured);
    merged.set(samples, this.captured.length);
    let offset = 0;
    while (merged.length - offset >= OPUS_FRAME) {
      const frame = merged.slice(offset, offset + OPUS_FRAME);
      offset += OPUS_FRAME;
      const data = new AudioData({
        format: "f32",
        sampleRate: SAMPLE_RATE,
        numberOfFrames: OPUS_FRAME,
        numberOfChannels: 1,
        timestamp: Math.round((this.captureTime * 1e6) / SAMPLE_RATE),
        data: frame,
      });
      this.captureTime += OPUS_FRAME;
      this.encoder.encode(data);
      data.close();
    }
    this.captured = merged.slice(offset);
  }

  onEncoded(chunk) {
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    this.pendingPackets.push(packet);
    if (this.pendingPackets.length < PACKETS_PER_PAGE) return;
    const page = this.writer.write(this.pendingPackets, this.pendingPackets.length * OPUS_FRAME);
    this.pendingPackets = [];
    if (this.socket.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(page.length + 1);
    message[0] = KIND.audio;
    message.set(page, 1);
    this.socket.send(message);
    stats.pagesSent += 1;
  }

  onMessage(message) {
    if (message.length === 0) return;
    const payload = message.subarray(1);
    switch (message[0]) {
      case KIND.handshake:
        setState("live", "talk, the reply plays as it comes");
        this.startCapture();
        break;
      case KIND.audio:
        stats.audioMessages += 1;
        for (const packet of this.reader.push(payload)) {
          this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: this.decodeTime, data: packet }));
          this.decodeTime += 20000;
        }
        break;
      case KIND.text: {
        const piece = new TextDecoder().decode(payload);
        stats.text += piece;
        $("transcript").textContent += piece;
        break;
      }
      case KIND.error:
        this.fail(new TextDecoder().decode(payload));
        break;
      case KIND.metadata:
        this.onMetadata(payload);
        break;
      default:
        break; // anything newer: nothing to show
    }
  }

  onMetadata(payload) {
    let fields;
    try {
      fields = JSON.parse(new TextDecoder().decode(payload));
    } catch {
      return; // not ours to read
    }
    if (!fields || !fields.dropping_audio) return;
    const dropped = Object.values(fields.frames_dropped || {}).reduce((sum, n) => sum + Number(n || 0), 0);
    stats.droppedFrames = dropped;
    const why = fields.overloaded ? "the server is overloaded" : "audio arrived faster than it is used";
    showWarning(`the server is dropping your audio (${dropped.toFixed(0)} frames so far): ${why}`);
  }

  play(data) {
    const frames = data.numberOfFrames;
    const samples = new Float32Array(frames);
    data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
    const buffer = this.context.createBuffer(1, frames, data.sampleRate);
    buffer.copyToChannel(samples, 0);
    data.close();
    stats.samplesDecoded += frames;
    for (const x of samples) stats.replyPeak = Math.max(stats.replyPeak, Math.abs(x));
    const now = this.context.currentTime;
    if (this.playAt < now) this.playAt = now + PLAYBACK_LEAD_S; // start, or recover from an underrun
    const node = this.context.createBufferSource();
    node.buffer = buffer;
    node.connect(this.context.destination);
    node.start(this.playAt);
    this.playAt += buffer.duration;
    stats.samplesScheduled += frames;
    stats.replySeconds += buffer.duration;
  }

  fail(reason) {
    stats.error = reason;
    setState("error", reason);
    this.close();
  }

  stopAudio() {
    this.microphone?.getTracks().forEach((track) => track.stop());
    this.capture?.disconnect();
  }

  close() {
    this.stopAudio();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close();
  }
}

$("toggle").addEventListener("click", async () => {
  if (session && (stats.state === "live" || stats.state === "connecting")) {
    session.close();
    session = null;
    return;
  }
  $("transcript").textContent = "";
  showWarning("");
  stats.droppedFrames = 0;
  stats.text = "";
  stats.error = null;
  session = new Session();
  try {
    await session.start();
  } catch (e) {
    session.fail(e.message || String(e));
  }
});
setState("idle");
