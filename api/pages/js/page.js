// What both pages do the same way: the notice (problems and news, in
// words, announced by screen readers) and the sign-in form.

import { $, h, replace } from "./dom.js";
import { setToken } from "./session.js";

/** Shows a message in the page's notice, with a button to dismiss it. */
export function notify(text) {
  const notice = $("#notice");
  notice.hidden = false;
  replace(notice, h("span", { text }), h("button", { type: "button", class: "link", text: "Dismiss", onclick: clearNotice }));
}

export function clearNotice() {
  const notice = $("#notice");
  notice.hidden = true;
  notice.replaceChildren();
}

/** Wires the sign-in form: a pasted token is kept, then `signedIn()` runs. */
export function onSignIn(signedIn) {
  $("#sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#token-input");
    if (!input.value.trim()) return;
    setToken(input.value);
    input.value = "";
    $("#sign-in").hidden = true;
    clearNotice();
    signedIn();
  });
}
