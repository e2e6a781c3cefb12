// What the router needs from a page: its element (built once, kept while
// hidden, so a stream or a chart history survives navigation) and hooks.
export interface Page {
  title: string;
  el: HTMLElement;
  show(): void;
  hide(): void;
}
