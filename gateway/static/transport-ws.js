// The WebSocket transport (/ws/audio): JSON events and binary PCM16 both ways.
//
// Handlers: onEvent(event) for every JSON event, onAudio(ArrayBuffer) for reply audio,
// onOpen() once the server has started the session, onClose({code, reason, error}) once.

export class WsTransport {
  constructor({ language, token, handlers }) {
    this.kind = 'websocket';
    this.language = language;
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.lastError = null;
    this.closed = false;
    this.bytesSent = 0;
  }

  static url() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}/ws/audio`;
  }

  start() {
    this.ws = new WebSocket(WsTransport.url());
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => {
      const start = { type: 'start', codec: 'pcm16', sample_rate: 16000, language: this.language };
      if (this.token) start.auth_token = this.token;
      this.ws.send(JSON.stringify(start));
    };
    this.ws.onmessage = (message) => this.onMessage(message.data);
    this.ws.onclose = (event) => this.finish(event.code, event.reason);
    this.ws.onerror = () => {}; // onclose follows with the code that says why
  }

  onMessage(data) {
    if (data instanceof ArrayBuffer) {
      this.h.onAudio(data);
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch (_) {
      return; // the server only sends JSON; nothing sane to do with anything else
    }
    if (event.type === 'error') this.lastError = event;
    if (event.type === 'session.started') {
      this.started = true;
      this.h.onOpen(event);
    }
    this.h.onEvent(event);
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    // A socket refused before it opened (HTTP 403 at the edge, no server) reports only 1006.
    const refused = !this.started && code === 1006 && !this.lastError;
    this.h.onClose({ code: refused ? 'connect' : code, reason, error: this.lastError });
  }

  open() { return this.ws && this.ws.readyState === WebSocket.OPEN; }

  sendAudio(pcmBuffer) {
    if (!this.open()) return;
    this.ws.send(pcmBuffer);
    this.bytesSent += pcmBuffer.byteLength;
  }

  send(message) {
    if (this.open()) this.ws.send(JSON.stringify(message));
  }

  stop() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'stop');
    this.finish(1000, 'stopped');
  }

  // WebSocket playback goes through the page's own player; nothing to report from the network.
  async receivedStats() { return null; }
}
