// A small XML reader/writer for the strict AWS layer: enough for the answers of moto's query
// services (EC2, IAM, STS) and S3, which are elements, attributes and text, nothing else.
// Text is kept as written (entities unexpanded), so a tree written back is the input again.

export interface XmlElement {
  name: string;
  /** Raw attribute text, including its leading space ("" when none). */
  attrs: string;
  children: XmlNode[];
  selfClosing: boolean;
}
export type XmlNode = XmlElement | string;

export interface XmlDocument {
  /** Everything before the root element (XML declaration, whitespace). */
  prolog: string;
  root: XmlElement;
}

export function parseXml(text: string): XmlDocument {
  let i = 0;
  const start = text.indexOf("<", text.startsWith("<?xml") ? text.indexOf("?>") + 2 : 0);
  if (start < 0) throw new Error("no XML element");
  const prolog = text.slice(0, start);
  i = start;

  const parseElement = (): XmlElement => {
    // at "<name"
    const close = text.indexOf(">", i);
    if (close < 0) throw new Error(`unterminated tag at ${i}`);
    let head = text.slice(i + 1, close);
    const selfClosing = head.endsWith("/");
    if (selfClosing) head = head.slice(0, -1);
    const m = /^([^\s/>]+)([\s\S]*)$/.exec(head);
    if (!m) throw new Error(`bad tag at ${i}`);
    const el: XmlElement = { name: m[1]!, attrs: m[2]!, children: [], selfClosing };
    i = close + 1;
    if (selfClosing) return el;
    for (;;) {
      const lt = text.indexOf("<", i);
      if (lt < 0) throw new Error(`unterminated element ${el.name}`);
      if (lt > i) el.children.push(text.slice(i, lt));
      i = lt;
      if (text.startsWith("</", i)) {
        const end = text.indexOf(">", i);
        i = end + 1;
        return el;
      }
      if (text.startsWith("<!--", i)) {
        i = text.indexOf("-->", i) + 3;
        continue;
      }
      if (text.startsWith("<![CDATA[", i)) {
        const end = text.indexOf("]]>", i) + 3;
        el.children.push(text.slice(i, end));
        i = end;
        continue;
      }
      el.children.push(parseElement());
    }
  };
  const root = parseElement();
  return { prolog, root };
}

export function writeXml(doc: XmlDocument): string {
  const out: string[] = [doc.prolog];
  const write = (el: XmlElement): void => {
    if (el.selfClosing) {
      out.push(`<${el.name}${el.attrs}/>`);
      return;
    }
    out.push(`<${el.name}${el.attrs}>`);
    for (const c of el.children) {
      if (typeof c === "string") out.push(c);
      else write(c);
    }
    out.push(`</${el.name}>`);
  };
  write(doc.root);
  return out.join("");
}

/** Child elements, optionally only those with this name. */
export function elements(el: XmlElement | undefined, name?: string): XmlElement[] {
  if (!el) return [];
  return el.children.filter((c): c is XmlElement => typeof c !== "string" && (name === undefined || c.name === name));
}

export function element(el: XmlElement | undefined, ...path: string[]): XmlElement | undefined {
  let cur = el;
  for (const p of path) cur = elements(cur, p)[0];
  return cur;
}

/** The decoded text of an element (or of the element at the path below it). */
export function textOf(el: XmlElement | undefined, ...path: string[]): string | undefined {
  const target = element(el, ...path);
  if (!target) return undefined;
  return decodeXml(target.children.filter((c): c is string => typeof c === "string").join(""));
}

export function decodeXml(s: string): string {
  if (s.startsWith("<![CDATA[")) return s.slice(9, -3);
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (_m, e: string) => {
    if (e.startsWith("#x")) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith("#")) return String.fromCodePoint(parseInt(e.slice(1), 10));
    return { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" }[e] ?? "";
  });
}

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** Finds the first element with this name anywhere below el (depth first). */
export function findDeep(el: XmlElement, name: string): XmlElement | undefined {
  for (const c of elements(el)) {
    if (c.name === name) return c;
    const hit = findDeep(c, name);
    if (hit) return hit;
  }
  return undefined;
}
