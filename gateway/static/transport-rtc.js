// The WebRTC transport (POST /rtc/session): the microphone as an Opus track, the reply as the
// remote track, and the JSON events on a data channel labelled "events".
//
// Non-trickle: the offer is sent once ICE gathering is complete (or after a cap), so one POST
// carries every candidate and the server needs no signalling channel.

const GATHER_CAP_MS = 2000;
const CONNECT_TIMEOUT_MS = 15000;

export class RtcError extends Error {
  constructor(code, message, status, retryAfterS) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfterS = retryAfterS;
  }
}

function iceServers(list) {
  // Settings may give bare URLs ("stun:host:3478") or RTCIceServer objects.
  return (list || []).map((s) => (typeof s === 'string' ? { urls: s } : s));
}

function gatheringComplete(pc, capMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, capMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    }
    function check() { if (pc.iceGatheringState === 'complete') done(); }
    pc.addEventListener('icegatheringstatechange', check);
  });
}

export class RtcTransport {
  constructor({ language, token, micTrack, iceServers: servers, handlers }) {
    this.kind = 'webrtc';
    this.language = language;
    this.token = token;
    this.micTrack = micTrack;
    this.iceServers = iceServers(servers);
    this.h = handlers;
    this.pc = null;
    this.channel = null;
    this.closed = false;
    this.opened = false;
    this.lastError = null;
  }

  // Resolves once the answer is applied; throws RtcError when the server refuses the offer.
  async start() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.channel = pc.createDataChannel('events', { ordered: true });
    this.channel.onopen = () => this.onChannelOpen();
    this.channel.onmessage = (message) => this.onMessage(message.data);
    this.channel.onclose = () => this.finish(1006, 'data channel closed');
    pc.addTransceiver(this.micTrack, { direction: 'sendrecv' });
    pc.ontrack = (event) => this.h.onRemoteStream(event.streams[0] || new MediaStream([event.track]));
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') this.finish(1006, 'WebRTC connection failed');
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc, GATHER_CAP_MS);
    const answer = await this.post(pc.localDescription.sdp);
    this.sessionId = answer.session_id;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this.connectTimer = setTimeout(() => {
      if (!this.opened) this.finish(1006, 'WebRTC did not connect (ICE): check the network or TURN');
    }, CONNECT_TIMEOUT_MS);
  }

  async post(sdp) {
    const headers = { 'Content-Type': 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const body = JSON.stringify({ sdp, type: 'offer', language: this.language });
    const response = await fetch('/rtc/session', { method: 'POST', headers, body });
    let payload = {};
    try {
      payload = await response.json();
    } catch (_) {
      // an error page that is not JSON: the status alone says what happened
    }
    if (!response.ok) {
      const retry = Number(response.headers.get('Retry-After'));
      const code = response.status === 404 ? 'webrtc_disabled' : payload.error || `http_${response.status}`;
      throw new RtcError(code, payload.message || response.statusText, response.status, retry);
    }
    return payload;
  }

  onChannelOpen() {
    this.opened = true;
    clearTimeout(this.connectTimer);
    this.h.onOpen({ session_id: this.sessionId });
  }

  onMessage(data) {
    if (typeof data !== 'string') return; // events are JSON text; audio travels on the track
    let event;
    try {
      event = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (event.type === 'error') this.lastError = event;
    this.h.onEvent(event);
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.connectTimer);
    if (this.pc) this.pc.close();
    this.h.onClose({ code, reason, error: this.lastError });
  }

  sendAudio() {} // the microphone track carries audio

  send(message) {
    if (this.channel && this.channel.readyState === 'open') this.channel.send(JSON.stringify(message));
  }

  stop() { this.finish(1000, 'stopped'); }

  // Give up quietly (the page falls back to another transport): no close report.
  dispose() {
    this.closed = true;
    clearTimeout(this.connectTimer);
    if (this.pc) this.pc.close();
  }

  // What the network delivered of the reply track (bytes and seconds), from the inbound RTP stats.
  async receivedStats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    let result = null;
    report.forEach((stat) => {
      if (stat.type === 'inbound-rtp' && stat.kind === 'audio') {
        result = { bytes: stat.bytesReceived || 0, seconds: stat.totalSamplesDuration || 0 };
      }
    });
    return result;
  }
}
