// The page's audio graph: one AudioContext holding the microphone capture, the WebSocket reply
// player and the WebRTC reply meter, so every time the page measures is on one clock.

const WORKLETS_URL = new URL('./worklets.js', import.meta.url);

export const MIC_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
};

// A friendly reason for a getUserMedia failure (the DOMException name says which).
export function micErrorMessage(error) {
  switch (error && error.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was denied. Allow the microphone for this site (the icon left of '
        + 'the address) and press Start again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Plug one in, or pick another in the microphone list.';
    case 'NotReadableError':
      return 'The microphone is in use by another program or could not be opened.';
    default:
      return `The microphone could not be opened: ${error && error.message ? error.message : error}`;
  }
}

export class AudioEngine {
  constructor() {
    this.ctx = null;
    this.sink = null; // a silent output that keeps meters and capture rendering
  }

  // Must run inside a user gesture (Start): browsers keep an AudioContext suspended otherwise.
  async open() {
    if (!this.ctx) {
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
      await this.ctx.audioWorklet.addModule(WORKLETS_URL);
      this.sink = new GainNode(this.ctx, { gain: 0 });
      this.sink.connect(this.ctx.destination);
    }
    if (this.ctx.state !== 'running') await this.ctx.resume();
    return this.ctx;
  }

  now() { return this.ctx ? this.ctx.currentTime : 0; }

  // Seconds the device adds after the graph (where the browser reports it).
  outputLatency() {
    const value = this.ctx && (this.ctx.outputLatency || this.ctx.baseLatency);
    return Number.isFinite(value) ? value : 0;
  }
}

// Open the microphone. Where the browser can cancel ALL of its own playout (not only audio from
// a peer connection), ask for that: then the WebSocket reply audio is cancelled too.
export async function openMicrophone(deviceId) {
  const audio = { ...MIC_CONSTRAINTS };
  if (deviceId) audio.deviceId = { exact: deviceId };
  const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
  const track = stream.getAudioTracks()[0];
  const caps = typeof track.getCapabilities === 'function' ? track.getCapabilities() : {};
  const modes = Array.isArray(caps.echoCancellation) ? caps.echoCancellation : [];
  if (modes.includes('all')) {
    try {
      await track.applyConstraints({ ...audio, echoCancellation: 'all' });
    } catch (_) {
      // keep the default echo canceller: the page then protects WebSocket playback itself
    }
  }
  const settings = track.getSettings();
  return { stream, track, cancelsAllPlayout: settings.echoCancellation === 'all' };
}

export async function listMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === 'audioinput');
}

// The microphone through the capture worklet: 20 ms PCM16 frames at 16 kHz and their levels.
export class Capture {
  constructor(engine, stream, onFrame) {
    const ctx = engine.ctx;
    this.source = new MediaStreamAudioSourceNode(ctx, { mediaStream: stream });
    this.node = new AudioWorkletNode(ctx, 'inzwa-capture', {
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRate: 16000, frameMs: 20 },
    });
    this.node.port.onmessage = (event) => onFrame(event.data);
    this.source.connect(this.node);
    this.node.connect(engine.sink);
  }

  close() {
    this.node.port.onmessage = null;
    this.source.disconnect();
    this.node.disconnect();
  }
}

// Shared by the player and the meter: running figures and "first audible block" reports.
class Measured {
  constructor(node, onReport) {
    this.node = node;
    this.stats = {};
    node.port.onmessage = (event) => {
      if (event.data.type === 'stats') this.stats = event.data;
      onReport(event.data);
    };
  }

  // The next audible block reports {type:"first", id, t}: one reply's first sound.
  arm(id) { this.node.port.postMessage({ type: 'arm', id }); }

  close() {
    this.node.port.onmessage = null;
    this.node.disconnect();
  }
}

// WebSocket reply audio: PCM16 in, through the player worklet's jitter buffer, to the speakers.
export class PcmPlayer extends Measured {
  constructor(engine, inputRate, onReport) {
    const node = new AudioWorkletNode(engine.ctx, 'inzwa-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { inputRate, prebufferMs: 80 },
    });
    super(node, onReport);
    node.connect(engine.ctx.destination);
  }

  setRate(rate) { this.node.port.postMessage({ type: 'rate', rate }); }

  push(arrayBuffer) {
    const pcm = new Int16Array(arrayBuffer);
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    this.node.port.postMessage({ type: 'push', samples }, [samples.buffer]);
  }

  // tts.cancel: drop everything not yet played, now.
  flush() { this.node.port.postMessage({ type: 'flush' }); }
}

// WebRTC reply audio plays through an <audio> element (Chromium feeds a remote track to Web Audio
// only while a media element plays it); this meter listens to the same track.
export class StreamMeter extends Measured {
  constructor(engine, stream, onReport) {
    const node = new AudioWorkletNode(engine.ctx, 'inzwa-meter', { numberOfOutputs: 1 });
    super(node, onReport);
    this.source = new MediaStreamAudioSourceNode(engine.ctx, { mediaStream: stream });
    this.source.connect(node);
    node.connect(engine.sink);
  }

  close() {
    super.close();
    this.source.disconnect();
  }
}
