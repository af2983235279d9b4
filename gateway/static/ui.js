// Small DOM helpers of the page: status line, alert, level meter, figures table, pickers.

export const $ = (id) => document.getElementById(id);

export function setStatus(text) { $('status').textContent = text; }

export function showAlert(text) {
  const el = $('alert');
  el.textContent = text || '';
  el.hidden = !text;
}

export function showLevel(db) {
  const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  $('level').style.width = `${pct}%`;
}

function ms(value) {
  return Number.isFinite(value) ? `${Math.round(value)} ms` : '—';
}

// One row per turn: the felt latency and the server's stage timings (turn.metrics).
export function showTurn(row) {
  const id = `turn-row-${row.turn_id}`;
  let tr = document.getElementById(id);
  if (!tr) {
    tr = document.createElement('tr');
    tr.id = id;
    $('turns').prepend(tr);
  }
  const cells = [row.index, ms(row.felt_ms), ms(row.asr_final_ms), ms(row.first_token_ms),
    ms(row.first_audio_ms), row.interrupted ? 'interrupted' : ''];
  tr.replaceChildren(...cells.map((value) => {
    const td = document.createElement('td');
    td.textContent = value === undefined ? '' : String(value);
    return td;
  }));
}

export function showLatency(value) { $('latency').textContent = ms(value); }

export function showAudioFigures(h) {
  $('audio-figures').textContent = `reply audio: ${(h.reply_bytes_received / 1024).toFixed(1)} KiB `
    + `received (${h.reply_seconds_received.toFixed(2)} s), ${h.reply_seconds_played.toFixed(2)} s `
    + `of sound played · transport: ${h.transport || '—'}`;
}

export function fillLanguages(codes, selected) {
  const select = $('language');
  select.replaceChildren(...['auto', ...codes].map((code) => {
    const option = new Option(code === 'auto' ? 'auto (detect)' : code, code);
    option.selected = code === selected;
    return option;
  }));
}

export function fillMicrophones(devices) {
  const select = $('mic');
  const chosen = select.value;
  select.replaceChildren(new Option('Default microphone', ''), ...devices
    .filter((d) => d.deviceId && d.deviceId !== 'default')
    .map((d, i) => new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : '';
}

export function setLive(live) {
  $('start').disabled = live;
  $('stop').disabled = !live;
  $('message').disabled = !live;
  $('send').disabled = !live;
}
