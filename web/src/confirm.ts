// A modal confirmation (<dialog>): resolves true on "Confirm", false otherwise.
import { h } from "./dom";

export function confirmAction(title: string, detail: string, confirmLabel = "Confirm"): Promise<boolean> {
  return new Promise((resolve) => {
    const ok = h("button", { type: "button", class: "primary", value: "ok" }, confirmLabel);
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const dlg = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-detail" },
      h("h2", { id: "confirm-title" }, title),
      h("p", { id: "confirm-detail" }, detail),
      h("div", { class: "buttons" }, cancel, ok),
    );
    const done = (answer: boolean) => {
      dlg.close();
      dlg.remove();
      resolve(answer);
    };
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}
