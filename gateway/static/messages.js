// What to tell the person for each error event code and close code the server can send.

const BY_CODE = {
  not_ready: 'The assistant is still starting up. Try again in a few seconds.',
  rate_limited: 'Too many requests from you right now.',
  limits_unavailable: 'The server cannot check its limits right now. Try again shortly.',
  missing_credentials: 'This server needs an API key or token: enter it in the key field.',
  invalid_credentials: 'The API key or token was not accepted. Check it and press Start again.',
  token_expired: 'Your token has expired. Get a new one and press Start again.',
  forbidden: 'Your key is not allowed to do that.',
  orchestrator_unavailable: 'The assistant restarted or is unreachable. Press Start to reconnect.',
  unsupported_language: 'The server has no language pack for that language. Pick another.',
  unsupported_codec: 'The server does not accept this audio format.',
  unsupported_sample_rate: 'The server does not accept this audio sample rate.',
  session_in_use: 'That session is already connected elsewhere.',
  start_timeout: 'The connection was too slow to start. Press Start again.',
  audio_too_long: 'That was a long turn: the assistant stopped listening and answers what it heard.',
  client_too_slow: 'This page could not keep up with the reply audio and was disconnected.',
  text_too_long: 'That message is too long.',
  empty_text: 'Type something first.',
  nothing_to_say: 'That message has nothing to say.',
  message_too_large: 'That message is too long.',
  webrtc_disabled: 'This server does not offer WebRTC; using the WebSocket instead.',
};

const BY_CLOSE = {
  connect: 'Could not connect to the assistant: the server refused the connection or is not running.',
  1003: 'The server does not support what this page asked for.',
  1006: 'The connection to the assistant was lost.',
  1008: 'The server refused the session (policy or credentials).',
  1011: 'The server hit an internal error. Press Start to try again.',
  1012: 'The assistant is restarting. Press Start again in a few seconds.',
  1013: 'The assistant is busy or not ready. Try again shortly.',
};

export function errorText(code, message, retryAfterS) {
  let text = BY_CODE[code] || message || `Error: ${code}`;
  if (code === 'rate_limited' && message && message.includes('quota')) {
    text = 'Your daily audio allowance is used up.';
  }
  if (Number.isFinite(retryAfterS) && retryAfterS > 0) text += ` Try again in ${retryAfterS} s.`;
  return text;
}

export function closeText(code, reason) {
  return BY_CLOSE[code] || `The connection closed (${code}${reason ? `: ${reason}` : ''}).`;
}

// Errors that the person can fix in the key field: show it even if /client-config said no auth.
export function isAuthError(code) {
  return code === 'missing_credentials' || code === 'invalid_credentials' || code === 'token_expired';
}

export const NO_SECURE_CONTEXT = 'Browsers allow the microphone only on https:// pages or on '
  + 'http://localhost. Open this page as https:// (see "inzwa certs" in the README) or from '
  + 'this machine as http://127.0.0.1 or http://localhost.';

export const NO_MEDIA_DEVICES = 'This browser offers no microphone access (navigator.mediaDevices '
  + 'is missing).';
