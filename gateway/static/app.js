// The Inzwa page: press Start, talk, hear the answer. Uses WebRTC when the server offers it
// (its echo canceller removes the reply from the microphone) and the WebSocket otherwise.
//
// window.inzwa exposes what the page measured (transcript, reply text, reply audio received
// and played, latency, errors) so browser tests assert from the page itself.

import { AudioEngine, Capture, PcmPlayer, StreamMeter, listMicrophones, micErrorMessage, openMicrophone } from './audio.js';
import { NO_MEDIA_DEVICES, NO_SECURE_CONTEXT, closeText, errorText, isAuthError } from './messages.js';
import { LatencyClock, SpeechEnd } from './speech.js';
import { Transcript } from './transcript.js';
import { RtcError, RtcTransport } from './transport-rtc.js';
import { WsTransport } from './transport-ws.js';
import * as ui from './ui.js';

const $ = ui.$;
const REPLY_TAIL_S = 0.3; // after the reply's last sound, room echo dies away before the mic opens
const RTC_PLAYOUT_S = 0.6; // WebRTC: the gateway's lead plus the browser's jitter buffer

function freshHooks(app) {
  return {
    state: 'idle', transport: null, session_id: null, config: null,
    transcript: '', partial: '', reply: '',
    reply_bytes_received: 0, reply_seconds_received: 0, reply_seconds_played: 0,
    last_latency_ms: null, turns: [], errors: [], notices: [], events: 0,
    replies_ended: 0, replies_cut: 0, cuts: [], sent: {}, speech_sent_s: 0,
    mic_muted: false, echo_cancels_all: false,
    start: () => app.start(), stop: () => app.stop(), say: (text) => app.sendText(text),
  };
}

class App {
  constructor() {
    this.engine = new AudioEngine();
    this.transcript = new Transcript($('transcript'));
    this.hooks = freshHooks(this);
    window.inzwa = this.hooks;
    this.resetSession();
  }

  resetSession() {
    this.transport = null;
    this.mic = null;
    this.capture = null;
    this.output = null; // PcmPlayer (WebSocket) or StreamMeter (WebRTC)
    this.speech = new SpeechEnd();
    this.latency = new LatencyClock();
    this.replyActive = false;
    this.replyEnded = false;
    this.pttHeld = false;
    this.pttReleaseT = null;
    this.typedEndT = null;
    this.finalEndT = null; // the end of speech of the last final, for the reply that answers it
    this.audioCancelled = false;
    this.stopping = false;
    this.turnCount = 0;
    this.rows = new Map();
  }

  async init() {
    this.bindControls();
    if (!window.isSecureContext) return this.fatal(NO_SECURE_CONTEXT);
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return this.fatal(NO_MEDIA_DEVICES);
    try {
      const response = await fetch('/client-config');
      this.config = await response.json();
    } catch (error) {
      return this.fatal(`Cannot reach the server (${error.message}). Is it running?`);
    }
    this.hooks.config = this.config;
    ui.fillLanguages(this.config.languages || [], this.config.default_language);
    $('token-field').hidden = !this.config.auth_required;
    if (!this.config.webrtc) $('transport').querySelector('[value=webrtc]').disabled = true;
    ui.fillMicrophones(await listMicrophones());
    this.updateEchoHint();
    $('start').disabled = false;
    ui.setStatus('Ready. Press Start and speak.');
    return null;
  }

  fatal(text) {
    ui.showAlert(text);
    ui.setStatus('Cannot start here.');
    this.hooks.errors.push({ code: 'page', message: text });
  }

  bindControls() {
    $('start').addEventListener('click', () => this.start());
    $('stop').addEventListener('click', () => this.stop());
    $('typed').addEventListener('submit', (event) => {
      event.preventDefault();
      this.sendText($('message').value);
    });
    $('options').addEventListener('submit', (event) => event.preventDefault());
    $('ptt').addEventListener('change', () => this.pushToTalkChanged());
    $('barge-in').addEventListener('change', () => this.applyMute());
    $('mic').addEventListener('change', () => this.switchMicrophone());
    $('transport').addEventListener('change', () => this.updateEchoHint());
    const hold = $('hold');
    hold.addEventListener('pointerdown', () => this.holdTalk(true));
    hold.addEventListener('pointerup', () => this.holdTalk(false));
    hold.addEventListener('pointerleave', () => { if (this.pttHeld) this.holdTalk(false); });
    const typing = (event) => event.target instanceof HTMLInputElement && event.target.type !== 'checkbox';
    window.addEventListener('keydown', (event) => {
      if (event.code === 'Space' && $('ptt').checked && !typing(event) && !event.repeat) {
        event.preventDefault();
        this.holdTalk(true);
      }
    });
    window.addEventListener('keyup', (event) => {
      if (event.code === 'Space' && $('ptt').checked && !typing(event)) this.holdTalk(false);
    });
    navigator.mediaDevices?.addEventListener?.('devicechange', async () => ui.fillMicrophones(await listMicrophones()));
  }

  chosenTransport() {
    const choice = $('transport').value;
    if (choice === 'auto') return this.config && this.config.webrtc ? 'webrtc' : 'websocket';
    return choice;
  }

  // Speaker echo: WebRTC's canceller removes the reply; over the WebSocket only a browser that
  // cancels all of its own playout does. Otherwise interrupting is off unless the person says
  // they wear headphones, and the microphone sends silence while the reply plays.
  updateEchoHint() {
    const ws = this.chosenTransport() === 'websocket';
    const safe = !ws || this.hooks.echo_cancels_all;
    if (!this.bargeInTouched) $('barge-in').checked = safe;
    const hint = $('echo-hint');
    hint.hidden = safe;
    hint.textContent = 'Over the WebSocket this browser cannot remove the reply from your microphone: '
      + 'the microphone is muted while Inzwa speaks. Wearing headphones? Tick "Let me interrupt".';
  }

  pushToTalkChanged() {
    const on = $('ptt').checked;
    $('hold').hidden = !on;
    $('ptt-help').hidden = !on;
    this.applyMute();
  }

  holdTalk(down) {
    if (!$('ptt').checked || down === this.pttHeld) return;
    this.pttHeld = down;
    $('hold').classList.toggle('held', down);
    this.applyMute();
    if (!down && this.transport) {
      this.pttReleaseT = this.engine.now();
      this.send({ type: 'end_turn' });
    }
  }

  muted() {
    if ($('ptt').checked) return !this.pttHeld;
    return this.replyActive && !$('barge-in').checked;
  }

  applyMute() {
    const muted = this.muted();
    this.hooks.mic_muted = muted;
    if (this.mic && this.transport && this.transport.kind === 'webrtc') this.mic.track.enabled = !muted;
  }

  async start() {
    if (this.transport) return;
    ui.showAlert('');
    ui.setLive(true);
    this.resetSession();
    this.hooks.state = 'starting';
    try {
      await this.engine.open();
      ui.setStatus('Opening the microphone…');
      this.mic = await openMicrophone($('mic').value);
    } catch (error) {
      this.hooks.errors.push({ code: 'mic', message: micErrorMessage(error) });
      this.abort(micErrorMessage(error));
      return;
    }
    this.hooks.echo_cancels_all = this.mic.cancelsAllPlayout;
    this.updateEchoHint();
    ui.fillMicrophones(await listMicrophones()); // labels are readable once permission is given
    this.capture = new Capture(this.engine, this.mic.stream, (frame) => this.onMicFrame(frame));
    await this.connect(this.chosenTransport());
  }

  async connect(kind) {
    ui.setStatus(`Connecting (${kind === 'webrtc' ? 'WebRTC' : 'WebSocket'})…`);
    this.hooks.transport = kind;
    const options = { language: $('language').value, token: $('token').value.trim(), handlers: this.handlers() };
    if (kind === 'websocket') {
      this.output = new PcmPlayer(this.engine, 16000, (report) => this.onPlayback(report));
      this.transport = new WsTransport(options);
      this.transport.start();
      return;
    }
    this.transport = new RtcTransport({ ...options, micTrack: this.mic.track, iceServers: this.config.ice_servers });
    try {
      await this.transport.start();
    } catch (error) {
      await this.rtcFailed(error);
    }
  }

  // WebRTC refused or unreachable: fall back to the WebSocket unless the refusal is about the
  // caller (credentials, limits, not ready), which the WebSocket would refuse the same way.
  async rtcFailed(error) {
    const code = error instanceof RtcError ? error.code : 'webrtc_failed';
    const message = error instanceof RtcError ? errorText(code, error.message, error.retryAfterS) : String(error.message || error);
    this.hooks.errors.push({ code, message });
    const callerProblem = error instanceof RtcError && [401, 403, 429, 503].includes(error.status);
    this.transport.dispose();
    this.transport = null;
    if (callerProblem || $('transport').value === 'webrtc') {
      if (isAuthError(code)) $('token-field').hidden = false;
      this.abort(message);
      return;
    }
    this.hooks.notices.push(`WebRTC failed (${message}); using the WebSocket`);
    ui.showAlert(`WebRTC is not available (${message}); using the WebSocket instead.`);
    await this.connect('websocket');
  }

  handlers() {
    return {
      onOpen: (started) => this.onOpen(started),
      onEvent: (event) => this.onEvent(event),
      onAudio: (data) => this.onAudio(data),
      onClose: (info) => this.onClose(info),
      onRemoteStream: (stream) => this.onRemoteStream(stream),
    };
  }

  onOpen(started) {
    this.hooks.state = 'live';
    this.hooks.session_id = started.session_id || null;
    const out = started.audio_out;
    if (out && out.sample_rate && this.output instanceof PcmPlayer) this.output.setRate(out.sample_rate);
    this.outRate = (out && out.sample_rate) || 16000;
    ui.setStatus(`Listening (${this.hooks.transport}). Speak now.`);
    this.applyMute();
    this.statsTimer = setInterval(() => this.refreshFigures(), 250);
  }

  onRemoteStream(stream) {
    const audio = $('remote-audio');
    audio.srcObject = stream;
    audio.play().catch(() => {}); // autoplay is allowed after the Start click
    if (this.output) this.output.close();
    this.output = new StreamMeter(this.engine, stream, (report) => this.onPlayback(report));
  }

  onMicFrame(frame) {
    ui.showLevel(frame.level);
    const muted = this.muted();
    if (!muted) this.speech.frame(frame.level, frame.t);
    if (!muted && this.speech.speaking && this.hooks.state === 'live') this.hooks.speech_sent_s += 0.02;
    if (!this.transport || this.hooks.state !== 'live' || this.transport.kind !== 'websocket') return;
    // Muted frames still go out, as silence: the server's audio clock keeps running true.
    this.transport.sendAudio(muted ? new Int16Array(frame.pcm.byteLength / 2).buffer : frame.pcm);
  }

  onAudio(data) {
    if (this.audioCancelled) return; // a cancelled reply's audio still in flight is never played
    this.hooks.reply_bytes_received += data.byteLength;
    this.hooks.reply_seconds_received = this.hooks.reply_bytes_received / 2 / (this.outRate || 16000);
    if (this.output instanceof PcmPlayer) this.output.push(data);
  }

  onPlayback(report) {
    if (report.type === 'stats') {
      this.hooks.reply_seconds_played = report.voiced_s;
    } else if (report.type === 'first') {
      const felt = this.latency.firstSound(String(report.id), report.t, this.engine.outputLatency());
      if (felt !== null) this.recordTurn(String(report.id), { felt_ms: felt });
    } else if (report.type === 'flushed') {
      this.recordCut(report);
    } else if (report.type === 'drained' && this.replyEnded) {
      this.replyFinished(REPLY_TAIL_S);
    }
  }

  // What a flush dropped, and (checked half a second later) that nothing more of it played.
  recordCut(report) {
    const cut = { dropped_ms: Math.round(report.dropped_ms), played_after_s: null };
    this.hooks.cuts.push(cut);
    setTimeout(() => {
      const stats = this.output ? this.output.stats : {};
      if (Number.isFinite(stats.voiced_s)) cut.played_after_s = stats.voiced_s - report.voiced_s;
    }, 500);
  }

  replyFinished(afterS) {
    clearTimeout(this.unmuteTimer);
    this.unmuteTimer = setTimeout(() => {
      this.replyActive = false;
      this.replyEnded = false;
      this.applyMute();
    }, afterS * 1000);
  }

  onEvent(event) {
    this.hooks.events += 1;
    const key = event.turn_id === undefined ? null : String(event.turn_id);
    // A turn's reply is the first one after its final (or its typed message): the reply's id is
    // the server's turn count, which early replies the speaker talked over have moved on, so
    // it need not be the final's. A reply that already has its end is an earlier turn's.
    const end = this.typedEndT ?? this.finalEndT;
    if (key !== null && end !== null && ['llm.partial', 'tts.start'].includes(event.type)
        && !this.latency.ends.has(key)) {
      this.latency.markEnd(key, end);
      this.typedEndT = null;
      this.finalEndT = null;
    }
    this.transcript.apply(event);
    const handler = EVENT_HANDLERS[event.type];
    if (handler) handler(this, event, key);
    this.hooks.transcript = this.transcript.userText();
    this.hooks.reply = this.transcript.replyText();
  }

  onFinal() {
    const end = $('ptt').checked && this.pttReleaseT !== null ? this.pttReleaseT : this.speech.lastSpeechT;
    this.finalEndT = end ?? null;
    this.pttReleaseT = null;
  }

  onReplyStart(key) {
    this.audioCancelled = false;
    this.replyActive = true;
    this.replyEnded = false;
    clearTimeout(this.unmuteTimer);
    this.applyMute();
    if (this.output) this.output.arm(key);
    this.recordTurn(key, {});
  }

  onReplyEnd(cancelled) {
    this.audioCancelled = cancelled;
    if (cancelled && this.output instanceof PcmPlayer) this.output.flush();
    this.replyEnded = true;
    if (cancelled) this.replyFinished(0);
    else if (this.transport && this.transport.kind === 'webrtc') this.replyFinished(RTC_PLAYOUT_S);
  }

  onError(event) {
    const text = errorText(event.code, event.message, event.retry_after_s);
    this.hooks.errors.push({ code: event.code, message: event.message, text });
    if (isAuthError(event.code)) $('token-field').hidden = false;
    ui.showAlert(text);
  }

  recordTurn(key, figures) {
    let row = this.rows.get(key);
    if (!row) {
      this.turnCount += 1;
      row = { turn_id: key, index: this.turnCount };
      this.rows.set(key, row);
      this.hooks.turns.push(row);
    }
    Object.assign(row, figures);
    if (Number.isFinite(figures.felt_ms)) {
      this.hooks.last_latency_ms = figures.felt_ms;
      ui.showLatency(figures.felt_ms);
    }
    ui.showTurn(row);
  }

  sendText(raw) {
    const text = (raw || '').trim();
    if (!text || !this.transport || this.hooks.state !== 'live') return false;
    this.transcript.typed(text);
    this.typedEndT = this.engine.now();
    this.send({ type: 'text', text });
    $('message').value = '';
    return true;
  }

  send(message) {
    this.transport.send(message);
    this.hooks.sent[message.type] = (this.hooks.sent[message.type] || 0) + 1;
  }

  async refreshFigures() {
    const stats = this.transport ? await this.transport.receivedStats() : null;
    if (stats) {
      this.hooks.reply_bytes_received = stats.bytes;
      this.hooks.reply_seconds_received = stats.seconds;
    }
    ui.showAudioFigures(this.hooks);
  }

  onClose(info) {
    const expected = this.stopping;
    const reason = info.error ? errorText(info.error.code, info.error.message, info.error.retry_after_s)
      : closeText(info.code, info.reason);
    if (!expected) {
      if (!info.error) this.hooks.errors.push({ code: `close_${info.code}`, message: reason });
      ui.showAlert(reason);
    }
    this.closing = this.teardown(expected ? 'Stopped.' : 'Disconnected.');
  }

  abort(message) {
    ui.showAlert(message);
    this.closing = this.teardown('Stopped.');
  }

  // Resolves once everything is released (the transport's close report runs the teardown).
  stop() {
    this.stopping = true;
    if (this.transport) this.transport.stop();
    else this.closing = this.teardown('Stopped.');
    return this.closing;
  }

  // Another microphone picked mid-session: a fresh session with it (the server's turn state is
  // per session, and a half-heard utterance from the old microphone is better dropped).
  async switchMicrophone() {
    if (!this.transport) return;
    await this.stop();
    await this.start();
  }

  // Release everything the session held; the figures stay readable in window.inzwa.
  async teardown(status) {
    clearInterval(this.statsTimer);
    clearTimeout(this.unmuteTimer);
    if (this.transport) await this.refreshFigures().catch(() => {});
    this.transport = null;
    if (this.capture) this.capture.close();
    if (this.output) this.output.close();
    if (this.mic) this.mic.stream.getTracks().forEach((track) => track.stop());
    $('remote-audio').srcObject = null;
    this.capture = null;
    this.output = null;
    this.mic = null;
    this.hooks.state = 'stopped';
    ui.setLive(false);
    ui.showLevel(-100);
    ui.setStatus(status);
  }
}

const EVENT_HANDLERS = {
  'asr.partial': (app, event) => { app.hooks.partial = event.text || ''; },
  'asr.final': (app, event, key) => {
    app.hooks.partial = '';
    if (app.typedEndT === null) app.onFinal();
  },
  'tts.start': (app, event, key) => app.onReplyStart(key),
  'tts.end': (app) => { app.hooks.replies_ended += 1; app.onReplyEnd(false); },
  'tts.cancel': (app) => { app.hooks.replies_cut += 1; app.onReplyEnd(true); },
  'turn.metrics': (app, event, key) => app.recordTurn(key, {
    asr_final_ms: event.asr_final_ms, first_token_ms: event.first_token_ms,
    first_audio_ms: event.first_audio_ms, interrupted: Boolean(event.interrupted),
  }),
  error: (app, event) => app.onError(event),
};

const app = new App();
$('barge-in').addEventListener('change', () => { app.bargeInTouched = true; });
app.init();
