// Where the person stopped speaking, from the microphone level the page itself sees: the latency
// the person feels runs from there to the first reply sound played.

const FLOOR_RISE_DB = 0.05; // per 20 ms frame: the noise floor follows a quieter room at once, a louder one slowly
const SPEECH_ABOVE_FLOOR_DB = 12;
const SPEECH_MIN_DB = -55;

export class SpeechEnd {
  constructor() {
    this.floor = -60;
    this.lastSpeechT = null; // audio-clock time of the end of the last speech frame
    this.speaking = false;
  }

  // One capture frame's level (dBFS) and the audio-clock time of its end.
  frame(level, t) {
    if (level < this.floor) this.floor = level;
    else this.floor = Math.min(this.floor + FLOOR_RISE_DB, -20);
    this.speaking = level > Math.max(this.floor + SPEECH_ABOVE_FLOOR_DB, SPEECH_MIN_DB);
    if (this.speaking) this.lastSpeechT = t;
  }
}

// Per turn: when the person's speech ended (or they released push-to-talk, or sent a typed
// message), and when the reply's first sound played; the difference is the felt latency.
export class LatencyClock {
  constructor() {
    this.ends = new Map(); // turn key -> audio-clock seconds
    this.felt = new Map(); // turn key -> ms
  }

  // Fix the end of speech for a turn when its final arrives (later echoes must not move it).
  markEnd(turnKey, t) {
    if (t !== null && t !== undefined && !this.ends.has(turnKey)) this.ends.set(turnKey, t);
  }

  // The reply's first sound played at audio-clock time t (plus the device's output latency).
  firstSound(turnKey, t, outputLatencyS) {
    const end = this.ends.get(turnKey);
    if (end === undefined || this.felt.has(turnKey)) return null;
    const ms = Math.round((t + outputLatencyS - end) * 1000);
    this.felt.set(turnKey, ms);
    return ms;
  }
}
