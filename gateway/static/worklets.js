// AudioWorklet processors of the page (loaded with audioWorklet.addModule).
//
// inzwa-capture: the microphone, low-passed and resampled to 16 kHz, cut into 20 ms PCM16 frames
//   posted to the page with their level (dBFS) and the audio clock time of their end.
// inzwa-player:  the WebSocket reply audio: a jitter buffer (a ring of 16 kHz samples) that starts
//   after a short prebuffer, resamples to the context rate, and is emptied at once on "flush".
// inzwa-meter:   counts what a stream (the WebRTC reply track) actually plays.
// The player and the meter report what really left the graph (voiced time, first voiced block
// after "arm"), so the page's "played" figures and latency are measured, not inferred.

const VOICED_RMS = 0.003; // about -50 dBFS: the gateway's comfort noise (~-63 dBFS) is not speech

function rms(block) {
  let sum = 0;
  for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
  return block.length ? Math.sqrt(sum / block.length) : 0;
}

// A windowed-sinc low-pass (Blackman), so decimating 48 kHz to 16 kHz does not fold
// 8-24 kHz noise into the band the ASR hears.
function lowPassTaps(cutoffHz, rate, count) {
  const taps = new Float32Array(count);
  const fc = cutoffHz / rate;
  const mid = (count - 1) / 2;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (count - 1))
      + 0.08 * Math.cos((4 * Math.PI * i) / (count - 1));
    taps[i] = sinc * window;
    total += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= total;
  return taps;
}

// Reports the first voiced block after the page arms it (one reply's first audible sound),
// and running totals, in audio-clock seconds.
class PlayMeter {
  constructor(port) {
    this.port = port;
    this.armedId = null;
    this.voicedS = 0;
    this.lastReport = 0;
  }

  arm(id) { this.armedId = id; }

  block(samples, seconds, extra) {
    if (rms(samples) > VOICED_RMS) {
      this.voicedS += seconds;
      if (this.armedId !== null) {
        this.port.postMessage({ type: 'first', id: this.armedId, t: currentTime });
        this.armedId = null;
      }
    }
    if (currentTime - this.lastReport >= 0.1) {
      this.lastReport = currentTime;
      this.port.postMessage({ type: 'stats', voiced_s: this.voicedS, t: currentTime, ...extra() });
    }
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.outRate = opts.targetRate || 16000;
    this.frameSize = Math.round(this.outRate * (opts.frameMs || 20) / 1000);
    this.step = sampleRate / this.outRate; // input samples per output sample
    this.taps = sampleRate > this.outRate ? lowPassTaps(this.outRate * 0.45, sampleRate, 63) : null;
    const keep = this.taps ? this.taps.length : 1;
    this.history = new Float32Array(keep); // the last filtered-input window
    this.hpos = 0;
    this.prevFiltered = 0;
    this.lastFiltered = 0;
    this.phase = 0; // position of the next output sample, in input samples from the last one
    this.frame = new Int16Array(this.frameSize);
    this.filled = 0;
    this.sumSquares = 0;
  }

  filter(x) {
    if (!this.taps) return x;
    const n = this.taps.length;
    this.history[this.hpos] = x;
    this.hpos = (this.hpos + 1) % n;
    let acc = 0;
    for (let i = 0; i < n; i++) acc += this.taps[i] * this.history[(this.hpos + i) % n];
    return acc;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    this.sumSquares += clipped * clipped;
    if (this.filled === this.frameSize) {
      const level = 10 * Math.log10(this.sumSquares / this.frameSize + 1e-10);
      const pcm = this.frame.buffer;
      this.port.postMessage({ type: 'frame', pcm, level, t: currentTime }, [pcm]);
      this.frame = new Int16Array(this.frameSize);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.prevFiltered = this.lastFiltered;
      this.lastFiltered = this.filter(channel[i]);
      // Output samples that fall between the previous and this input sample: interpolate.
      while (this.phase <= 1) {
        this.emit(this.prevFiltered + (this.lastFiltered - this.prevFiltered) * this.phase);
        this.phase += this.step;
      }
      this.phase -= 1;
    }
    return true;
  }
}

class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.ring = new Float32Array(48000 * 60); // 60 s at up to 48 kHz: far beyond the gateway's lead
    this.write = 0; // samples written (absolute)
    this.read = 0; // fractional read position (absolute)
    this.inRate = opts.inputRate || 16000;
    this.prebuffer = (opts.prebufferMs || 80) / 1000;
    this.playing = false;
    this.waitedS = 0;
    this.receivedSamples = 0;
    this.playedSamples = 0;
    this.drains = 0; // times the buffer ran dry (each reply end, and any mid-reply starvation)
    this.meter = new PlayMeter(this.port);
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === 'push') this.push(msg.samples);
    else if (msg.type === 'flush') this.flush();
    else if (msg.type === 'arm') this.meter.arm(msg.id);
    else if (msg.type === 'rate') this.inRate = msg.rate;
  }

  push(samples) {
    for (let i = 0; i < samples.length; i++) this.ring[(this.write + i) % this.ring.length] = samples[i];
    this.write += samples.length;
    this.receivedSamples += samples.length;
    if (this.write - this.read > this.ring.length) this.read = this.write - this.ring.length; // overrun
  }

  flush() {
    const droppedMs = 1000 * this.buffered() / this.inRate;
    this.read = this.write;
    this.playing = false;
    this.waitedS = 0;
    this.port.postMessage({ type: 'flushed', t: currentTime, dropped_ms: droppedMs, voiced_s: this.meter.voicedS });
  }

  buffered() { return this.write - Math.floor(this.read); }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const quantum = out.length / sampleRate;
    const available = this.buffered();
    if (!this.playing && available > 0) {
      // Prebuffer: start once there is enough to ride out network jitter, or after waiting that
      // long anyway (a reply shorter than the prebuffer must still play).
      this.waitedS += quantum;
      this.playing = available / this.inRate >= this.prebuffer || this.waitedS >= this.prebuffer;
    }
    out.fill(0);
    if (this.playing) this.render(out);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.meter.block(out, quantum, () => ({
      received_s: this.receivedSamples / this.inRate,
      played_s: this.playedSamples / this.inRate,
      buffered_ms: 1000 * this.buffered() / this.inRate,
      drains: this.drains,
    }));
    return true;
  }

  render(out) {
    const step = this.inRate / sampleRate;
    const size = this.ring.length;
    for (let i = 0; i < out.length; i++) {
      if (this.write - this.read < 2) {
        this.playing = false;
        this.waitedS = 0;
        if (this.write - this.read > 0) this.read = this.write;
        this.drains += 1;
        this.port.postMessage({ type: 'drained', t: currentTime });
        return;
      }
      const index = Math.floor(this.read);
      const frac = this.read - index;
      const a = this.ring[index % size];
      const b = this.ring[(index + 1) % size];
      out[i] = a + (b - a) * frac;
      const before = Math.floor(this.read);
      this.read += step;
      this.playedSamples += Math.floor(this.read) - before;
    }
  }
}

class MeterProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.meter = new PlayMeter(this.port);
    this.port.onmessage = (event) => { if (event.data.type === 'arm') this.meter.arm(event.data.id); };
    this.seconds = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const quantum = channel.length / sampleRate;
    this.seconds += quantum;
    this.meter.block(channel, quantum, () => ({ metered_s: this.seconds }));
    return true;
  }
}

registerProcessor('inzwa-capture', CaptureProcessor);
registerProcessor('inzwa-player', PlayerProcessor);
registerProcessor('inzwa-meter', MeterProcessor);
