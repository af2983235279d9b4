// The live transcript: per turn, the person's words (partials growing, then the final) and the
// assistant's reply as it is spoken: tokens shown tentatively, phrases confirmed when their audio
// has gone out (tts.phrase), and what a barge-in cut shown struck through.

function words(text) {
  return (text || '').split(/\s+/).filter(Boolean);
}

class Turn {
  constructor(list, id) {
    this.id = id;
    this.userText = '';
    this.userFinal = false;
    this.tokens = '';
    this.spoken = []; // phrases whose audio has been sent
    this.state = 'listening'; // listening | replying | done | cut
    this.el = document.createElement('li');
    this.el.className = 'turn';
    this.user = this.el.appendChild(document.createElement('p'));
    this.user.className = 'user partial';
    this.user.hidden = true; // until there are words (a reply may come first, e.g. after a typed message)
    this.reply = this.el.appendChild(document.createElement('p'));
    this.reply.className = 'assistant';
    this.reply.hidden = true;
    list.appendChild(this.el);
  }

  setUser(text, final) {
    this.userText = text;
    this.userFinal = final;
    this.user.textContent = text;
    this.user.hidden = !text;
    this.user.className = final ? 'user' : 'user partial';
  }

  spokenText() { return this.spoken.join(' '); }

  // Words of the streamed tokens that no confirmed phrase covers yet.
  pendingText() {
    return words(this.tokens).slice(words(this.spokenText()).length).join(' ');
  }

  render() {
    this.reply.hidden = false;
    this.reply.replaceChildren();
    const spoken = this.reply.appendChild(document.createElement('span'));
    spoken.className = 'spoken';
    spoken.textContent = this.spokenText();
    const rest = this.pendingText();
    if (rest) {
      const pending = this.reply.appendChild(document.createElement('span'));
      pending.className = this.state === 'cut' ? 'cut' : 'tentative';
      pending.textContent = (spoken.textContent ? ' ' : '') + rest;
      if (this.state === 'cut') pending.title = 'not spoken: interrupted';
    }
    if (this.state === 'cut') {
      const mark = this.reply.appendChild(document.createElement('span'));
      mark.className = 'cut-mark';
      mark.textContent = ' (interrupted)';
    }
  }
}

export class Transcript {
  constructor(listEl) {
    this.list = listEl;
    this.rows = []; // every turn shown, in order
    this.turns = new Map(); // the server's reply turn id -> its row
    this.pendingTyped = null; // a typed message's row, until a reply claims it
  }

  clear() {
    this.list.replaceChildren();
    this.rows = [];
    this.turns.clear();
    this.pendingTyped = null;
  }

  newRow() {
    const turn = new Turn(this.list, null);
    this.rows.push(turn);
    this.list.scrollTop = this.list.scrollHeight;
    return turn;
  }

  // The row of a reply: the one its id already has, else the newest row whose words no reply
  // has claimed. Rows go by order, not by id: a reply's id is the server's turn count, which
  // typed turns and early replies the speaker talked over move past the ASR's own count that
  // asr.* events carry.
  replyTurn(id) {
    const key = id === undefined || id === null ? 'current' : String(id);
    let turn = this.turns.get(key);
    if (!turn) {
      turn = [...this.rows].reverse().find((t) => t.id === null && t.userText) || this.newRow();
      turn.id = key;
      this.turns.set(key, turn);
      if (turn === this.pendingTyped) this.pendingTyped = null;
    }
    return turn;
  }

  // The row the person's words go to: the last one while no reply has claimed it (several
  // finals of one turn add up), else a new one.
  userTurn() {
    const last = this.rows[this.rows.length - 1];
    if (last && last.id === null && !last.user.classList.contains('typed')) return last;
    return this.newRow();
  }

  typed(text) {
    this.pendingTyped = this.newRow();
    this.pendingTyped.setUser(text, true);
    this.pendingTyped.user.classList.add('typed');
  }

  // Apply one server event; returns the turn it touched (or null).
  apply(event) {
    switch (event.type) {
      case 'asr.partial': return this.userWords(event, false);
      case 'asr.final': return this.userWords(event, true);
      case 'llm.partial': return this.update(event, (t) => { t.tokens += event.token || ''; t.state = 'replying'; });
      case 'tts.phrase': return this.update(event, (t) => { if (event.text) t.spoken.push(event.text.trim()); });
      case 'tts.end': return this.update(event, (t) => this.ended(t, event));
      case 'tts.cancel': return this.update(event, (t) => { t.state = 'cut'; });
      default: return null;
    }
  }

  userWords(event, final) {
    const pending = this.pendingTyped;
    if (final && pending && (event.text || '').trim() === pending.userText) return pending; // its echo
    const turn = this.userTurn();
    if (!turn.user.classList.contains('typed')) {
      // Several finals in one turn (a long utterance) add up; a partial follows the finals so far.
      const text = [turn.finalsText || '', event.text].filter(Boolean).join(' ');
      if (final) turn.finalsText = text;
      turn.setUser(text, final);
    }
    return turn;
  }

  update(event, change) {
    const turn = this.replyTurn(event.turn_id);
    change(turn);
    turn.render();
    return turn;
  }

  ended(turn, event) {
    if (turn.state === 'cut') return;
    turn.state = 'done';
    // tts.end carries the whole reply as spoken: it is the confirmed text from now on.
    if (event.text) {
      turn.tokens = event.text;
      turn.spoken = [event.text.trim()];
    }
  }

  // For the test hooks: everything the person said, and everything the assistant said.
  userText() {
    return this.rows.map((t) => t.userText).filter(Boolean).join(' ');
  }

  replyText() {
    return this.rows.map((t) => t.spokenText() || t.tokens).filter(Boolean).join(' ');
  }
}
