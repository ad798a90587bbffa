// containerd's filter language, as List receives it (e.g. containerd 1.6 looks up a remote snapshot with
// `labels."containerd.io/snapshot.ref"==sha256:…,parent=="default/3/sha256:…"`): a filter is selectors
// joined by ",", all of which must match; a list of filters matches when any filter does; no filters match
// everything. A selector is a field path (fields joined by ".", each bare or quoted) optionally followed by
// an operator (==, !=, ~= for a regular expression) and a value (quoted with "…" or `…`, or bare up to the
// next ","). A selector without operator tests that the field is present. As in containerd, == needs the
// field present; name, parent and kind are always present (parent "" for none, so `parent==""` finds the
// snapshots without parent), labels.<key> when the label is set. Kinds read active, view, committed.
import { invalidArgument } from './errors.js';

export type FilterOperator = '==' | '!=' | '~=' | 'present';

export interface Selector {
  path: string[];
  operator: FilterOperator;
  value: string;
  regexp?: RegExp;
}

/** One filter: all selectors must match. */
export type Filter = Selector[];

/** Resolves a field path against an object; undefined when the field is not present. */
export type FieldLookup = (path: string[]) => string | undefined;

const BARE_FIELD = /^[A-Za-z_][A-Za-z0-9_\-/]*/;

class Scanner {
  pos = 0;
  constructor(readonly text: string) {}

  get done(): boolean {
    return this.pos >= this.text.length;
  }

  peek(n = 1): string {
    return this.text.slice(this.pos, this.pos + n);
  }

  skipSpace(): void {
    while (!this.done && /\s/.test(this.text[this.pos]!)) this.pos++;
  }

  fail(message: string): never {
    throw invalidArgument(`filter ${JSON.stringify(this.text)}: ${message} at offset ${this.pos}`);
  }

  quoted(): string {
    const quote = this.text[this.pos]!;
    this.pos++;
    let out = '';
    while (!this.done) {
      const c = this.text[this.pos++]!;
      if (c === quote) return out;
      if (c === '\\' && quote === '"') {
        if (this.done) break;
        const e = this.text[this.pos++]!;
        const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', '"': '"', '/': '/' };
        if (e in simple) out += simple[e];
        else this.fail(`unsupported escape \\${e}`);
        continue;
      }
      out += c;
    }
    return this.fail('unterminated quoted string');
  }

  field(): string {
    const c = this.peek();
    if (c === '"' || c === '`') return this.quoted();
    const m = BARE_FIELD.exec(this.text.slice(this.pos));
    if (!m) this.fail('expected a field name');
    this.pos += m[0].length;
    return m[0];
  }

  value(): string {
    const c = this.peek();
    if (c === '"' || c === '`') return this.quoted();
    const start = this.pos;
    while (!this.done && this.text[this.pos] !== ',') this.pos++;
    const v = this.text.slice(start, this.pos).trim();
    if (v === '') this.fail('expected a value');
    return v;
  }
}

/** Parses one filter expression; throws an INVALID_ARGUMENT SnapshotError when it does not parse. */
export function parseFilter(text: string): Filter {
  const s = new Scanner(text);
  const selectors: Filter = [];
  for (;;) {
    s.skipSpace();
    if (s.done) s.fail('expected a selector');
    const path = [s.field()];
    while (s.peek() === '.') {
      s.pos++;
      path.push(s.field());
    }
    s.skipSpace();
    const op = s.peek(2);
    let selector: Selector;
    if (op === '==' || op === '!=' || op === '~=') {
      s.pos += 2;
      s.skipSpace();
      const value = s.value();
      selector = { path, operator: op, value };
      if (op === '~=') {
        try {
          selector.regexp = new RegExp(value);
        } catch (err) {
          s.fail(`invalid regular expression ${JSON.stringify(value)}: ${(err as Error).message}`);
        }
      }
    } else {
      selector = { path, operator: 'present', value: '' };
    }
    selectors.push(selector);
    s.skipSpace();
    if (s.done) return selectors;
    if (s.peek() !== ',') s.fail(`unexpected ${JSON.stringify(s.peek())}`);
    s.pos++;
  }
}

export function parseFilters(texts: readonly string[]): Filter[] {
  return texts.filter((t) => t.trim() !== '').map(parseFilter);
}

function matchSelector(sel: Selector, lookup: FieldLookup): boolean {
  const value = lookup(sel.path);
  switch (sel.operator) {
    case 'present':
      return value !== undefined;
    case '==':
      return value !== undefined && value === sel.value;
    case '!=':
      return value !== sel.value;
    case '~=':
      return value !== undefined && sel.regexp!.test(value);
  }
}

/** Whether an object (seen through `lookup`) matches any of `filters`; no filters match everything. */
export function matchFilters(filters: readonly Filter[], lookup: FieldLookup): boolean {
  if (filters.length === 0) return true;
  return filters.some((f) => f.every((sel) => matchSelector(sel, lookup)));
}
